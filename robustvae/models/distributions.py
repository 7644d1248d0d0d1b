"""Distribution objects that carry their parameters (the NVAE habit).

* :class:`DiagGaussian` — per-layer priors and posteriors (``mean``, ``logvar``,
  ``kl``, ``log_prob``, ``sample``).
* :class:`Bernoulli` and :class:`DiscretizedLogisticMixture` — the two image
  likelihoods. Both take images in [0, 1] and return per-image log-likelihoods in
  nats, and both expose ``mean``: the decoder's mean image in [0, 1].

Every method returns elementwise values unless it says otherwise;
:func:`sum_except_batch` reduces them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def sum_except_batch(t: Tensor) -> Tensor:
    return t.flatten(1).sum(1)


def soft_clamp(x: Tensor, limit: float) -> Tensor:
    """Smoothly keep ``x`` inside (-limit, limit); identity near 0, gradients everywhere."""
    return limit * torch.tanh(x / limit)


class DiagGaussian:
    """Diagonal Gaussian N(mean, exp(logvar))."""

    def __init__(self, mean: Tensor, logvar: Tensor):
        self.mean = mean
        self.logvar = logvar

    @property
    def var(self) -> Tensor:
        return self.logvar.exp()

    @property
    def std(self) -> Tensor:
        return (0.5 * self.logvar).exp()

    @property
    def shape(self) -> torch.Size:
        return self.mean.shape

    def sample(self, noise: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """Reparameterised sample ``mean + temperature * std * noise`` (noise ~ N(0, I) if None)."""
        if noise is None:
            noise = torch.randn_like(self.mean)
        return self.mean + temperature * self.std * noise

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mean) ** 2 / self.var)

    def kl(self, other: DiagGaussian) -> Tensor:
        """Analytic KL(self || other), elementwise, in nats."""
        return 0.5 * (
            other.logvar
            - self.logvar
            + (self.var + (self.mean - other.mean) ** 2) / other.var
            - 1.0
        )

    def detach(self) -> DiagGaussian:
        return DiagGaussian(self.mean.detach(), self.logvar.detach())

    def __repr__(self) -> str:
        return f"DiagGaussian(shape={tuple(self.mean.shape)})"


class Bernoulli:
    """Bernoulli likelihood over binary pixels, parameterised by logits."""

    def __init__(self, logits: Tensor):
        self.logits = logits

    @property
    def mean(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def log_prob(self, x: Tensor) -> Tensor:
        """Per-image log p(x) in nats for x in {0, 1} (continuous x gives the cross-entropy)."""
        return -sum_except_batch(F.binary_cross_entropy_with_logits(self.logits, x, reduction="none"))

    def sample(self) -> Tensor:
        return torch.bernoulli(self.mean)


def _log_sigmoid_diff(a: Tensor, b: Tensor) -> Tensor:
    """Stable log(sigmoid(a) - sigmoid(b)) for a > b."""
    return a + torch.log(-torch.expm1(b - a)) - F.softplus(a) - F.softplus(b)


class DiscretizedLogisticMixture:
    """Discretised mixture of logistics (PixelCNN++ / VDVAE) over ``2**bits`` levels.

    Parameters come from a decoder output of ``K * (1 + 2C + C(C-1)/2)`` channels:
    mixture logits, per-channel locations and log-scales, and the linear
    coefficients that make channel c depend on channels < c. The extreme levels
    take the whole tails, so the probabilities over all levels sum to 1 exactly.
    Images are given in [0, 1] and modelled on [-1, 1] internally.
    """

    def __init__(self, params: Tensor, channels: int, num_mixtures: int, bits: int = 8, min_log_scale: float = -7.0):
        B, _, H, W = params.shape
        K, C = num_mixtures, channels
        self.C, self.K, self.bits = C, K, bits
        self.levels = 2**bits
        self.logit_probs = params[:, :K]  # B,K,H,W
        rest = params[:, K:].reshape(B, -1, K, H, W)
        self.locs = rest[:, :C]  # B,C,K,H,W
        self.log_scales = rest[:, C : 2 * C].clamp(min=min_log_scale)
        self.coeffs = torch.tanh(rest[:, 2 * C :])  # B,C(C-1)/2,K,H,W

    @staticmethod
    def num_params(channels: int, num_mixtures: int) -> int:
        return num_mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)

    def _means(self, x: Tensor) -> Tensor:
        """Per-channel component locations, channel c shifted by coeffs * x_{<c}."""
        means = [self.locs[:, 0]]
        j = 0
        for c in range(1, self.C):
            m = self.locs[:, c]
            for d in range(c):
                m = m + self.coeffs[:, j] * x[:, d]
                j += 1
            means.append(m)
        return torch.stack(means, 1)

    def quantise(self, x01: Tensor) -> Tensor:
        """[0, 1] images -> the level centres on [-1, 1] that the likelihood scores."""
        n = self.levels - 1
        return torch.round(x01.clamp(0, 1) * n) / n * 2 - 1

    def log_prob(self, x01: Tensor) -> Tensor:
        """Per-image log p(x) in nats; x in [0, 1] is quantised to ``2**bits`` levels."""
        x = self.quantise(x01)  # B,C,H,W
        xk = x.unsqueeze(2)  # B,C,1,H,W
        means = self._means(xk)
        half = 1.0 / (self.levels - 1)  # half bin width on [-1, 1]
        inv_s = torch.exp(-self.log_scales)
        centred = xk - means
        plus = inv_s * (centred + half)
        minus = inv_s * (centred - half)
        lp_mid = _log_sigmoid_diff(plus, minus)
        lp_low = F.logsigmoid(plus)  # the lowest level takes (-inf, edge]
        lp_high = -F.softplus(minus)  # the highest level takes [edge, inf)
        lp = torch.where(xk < -1 + half / 2, lp_low, torch.where(xk > 1 - half / 2, lp_high, lp_mid))
        lp = lp.sum(1) + F.log_softmax(self.logit_probs, dim=1)  # B,K,H,W
        return sum_except_batch(torch.logsumexp(lp, dim=1))

    @property
    def mean(self) -> Tensor:
        """Expected image in [0, 1]: mixture-weighted component means (clamped)."""
        comp = self._means_of_means()
        w = torch.softmax(self.logit_probs, dim=1).unsqueeze(1)
        return ((comp * w).sum(2).clamp(-1, 1) + 1) / 2

    def _means_of_means(self) -> Tensor:
        ms: list[Tensor] = []
        j = 0
        for c in range(self.C):
            m = self.locs[:, c]
            for d in range(c):
                m = m + self.coeffs[:, j] * ms[d]
                j += 1
            ms.append(m)
        return torch.stack(ms, 1)

    def sample(self) -> Tensor:
        """Draw images in [0, 1] (one mixture component per pixel, channels in order)."""
        B, K, H, W = self.logit_probs.shape
        k = torch.distributions.Categorical(logits=self.logit_probs.permute(0, 2, 3, 1)).sample()  # B,H,W
        onehot = F.one_hot(k, K).permute(0, 3, 1, 2).unsqueeze(1).to(self.locs.dtype)  # B,1,K,H,W
        locs = (self.locs * onehot).sum(2)
        log_s = (self.log_scales * onehot).sum(2)
        coeffs = (self.coeffs * onehot).sum(2)
        u = torch.rand_like(locs).clamp(1e-5, 1 - 1e-5)
        xs: list[Tensor] = []
        j = 0
        for c in range(self.C):
            m = locs[:, c]
            for d in range(c):
                m = m + coeffs[:, j] * xs[d]
                j += 1
            xc = (m + log_s[:, c].exp() * (torch.log(u[:, c]) - torch.log1p(-u[:, c]))).clamp(-1, 1)
            xs.append(self.quantise((xc + 1) / 2))
        return (torch.stack(xs, 1) + 1) / 2
