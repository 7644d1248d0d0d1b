"""The authors' likelihoods as variants of robustvae's (SPEC section 3.2 and their logistic-mixture layout).

* Bernoulli: :class:`~robustvae.models.distributions.Bernoulli` with ``clamp=1e-7``;
* the mixture of discretised logistics (SVHN, CIFAR-10): K mixture logits, then per
  channel K means and K raw scales (``K (2C + 1)`` channels), log-scale =
  log softplus_0.4(max(raw, -20)), no coupling between channels. It is
  :class:`~robustvae.models.distributions.DiscretizedLogisticMixture` with zero
  coupling coefficients; the two differ only where a bin's probability is under 1e-10
  (theirs floors it there). No fixture covers this path (docs/kuzina.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robustvae.models.distributions import Bernoulli, DiscretizedLogisticMixture

BERNOULLI_CLAMP = 1e-7


def num_params(likelihood: str, channels: int, num_mixtures: int) -> int:
    """Output channels of the decoder's last convolution."""
    return channels if likelihood == "bernoulli" else num_mixtures * (2 * channels + 1)


class KuzinaLogisticMixture(DiscretizedLogisticMixture):
    """Mixture of discretised logistics in the authors' parametrisation (8-bit data)."""

    def __init__(self, params: Tensor, channels: int, num_mixtures: int):
        B, _, H, W = params.shape
        K, C = num_mixtures, channels
        self.C, self.K, self.bits, self.levels = C, K, 8, 256
        self.logit_probs = params[:, :K]
        self.locs, raw = params[:, K:].reshape(B, C, 2 * K, H, W).chunk(2, 2)
        self.log_scales = torch.log(F.softplus(raw.clamp(min=-20.0), beta=0.4))
        self.coeffs = params.new_zeros(B, C * (C - 1) // 2, K, H, W)


def likelihood(logits: Tensor, kind: str, channels: int, num_mixtures: int) -> Bernoulli | KuzinaLogisticMixture:
    """The decoder's distribution over images from its output ``logits``."""
    if kind == "bernoulli":
        return Bernoulli(logits, clamp=BERNOULLI_CLAMP)
    return KuzinaLogisticMixture(logits, channels, num_mixtures)
