"""The model contract: what every hierarchical VAE in robustvae offers, and how its layers describe themselves.

Consumers (attacks, evaluation, the experiments, the report) use only what is named
here. They never test for a particular architecture: a question such as "is this
layer deterministic?", "how many quantiser levels does it use?" or "how are two
posteriors of this layer compared?" is answered by the layer's :class:`LayerInfo` or
by its posterior object (:class:`~robustvae.models.distributions.DiagGaussian`,
:class:`~robustvae.models.distributions.PointMass`, both with ``mean``, ``sample``,
``detach`` and ``compare``).

Conventions: images are (B, C, H, W) floats in [0, 1]; layer 1 is the top latent;
``k`` counts top layers (``k = 0``: none from the posterior, everything from the prior).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import Tensor

if TYPE_CHECKING:
    import torch

    from robustvae.config import ModelConfig

LAYER_KINDS = ("gaussian", "context")


@dataclass(frozen=True)
class LayerInfo:
    """One stochastic layer: ``index`` 1 is the top (coarsest) latent.

    ``kind`` is ``"gaussian"`` (a diagonal-Gaussian latent) or ``"context"`` (a
    deterministic, quantised code of the image, whose posterior is a point mass on one
    of ``levels`` values per unit).
    """

    index: int
    resolution: int
    shape: tuple[int, int, int]  # (channels, height, width)
    kind: str = "gaussian"
    levels: int | None = None  # quantiser levels of a context layer

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r} (known: {', '.join(LAYER_KINDS)})")
        if (self.kind == "context") != (self.levels is not None):
            raise ValueError("a context layer, and only it, has quantiser levels")

    @property
    def dims(self) -> int:
        """Units of the layer."""
        return math.prod(self.shape)

    @property
    def deterministic(self) -> bool:
        """A point-mass posterior: it cannot collapse, so active units do not apply (levels used do)."""
        return self.kind == "context"

    @property
    def raw_bits(self) -> float:
        """Bits to store the layer's code as it is (units x log2 levels); 0 for a Gaussian layer."""
        return self.dims * math.log2(self.levels) if self.levels else 0.0


@dataclass
class ELBOResult:
    """Per-image terms of the negative ELBO, all in nats except ``bpd``."""

    kl: Tensor  # (B, L): KL per stochastic layer, top first (for a context layer: its prior's bound on -log p)
    recon: Tensor  # (B,): -log p(x | z)
    nelbo: Tensor  # (B,): recon + sum of KLs
    bpd: Tensor  # (B,): nelbo in bits per dimension


@dataclass
class LatentJoint:
    """Per-image terms of log p(x, z) with the top Gaussian layers fixed (``latent_log_joint``), in nats.

    ``log_prior`` is log p(z_1 .. z_m) of the fixed layers (each given the ones above, and the
    context of x where there is one); ``log_likelihood`` is log p(x | z) with the layers below
    drawn from the prior at the given temperature and noise; ``mean`` is that decoder's mean image.
    """

    log_prior: Tensor  # (B,)
    log_likelihood: Tensor  # (B,)
    mean: Tensor  # (B, C, H, W)

    @property
    def log_joint(self) -> Tensor:
        """log p(x | z) + log p(z): the unnormalised log posterior of the fixed layers."""
        return self.log_prior + self.log_likelihood


@runtime_checkable
class SupportsLatentJoint(Protocol):
    """A model whose top Gaussian layers can be fixed and scored (what an MCMC defence needs)."""

    def latent_log_joint(
        self, x: Tensor, zs: list[Tensor], temperature: float = 0.1, noise: list[Tensor] | None = None
    ) -> LatentJoint:
        """log p(z) and log p(x | z) with the top ``len(zs)`` Gaussian layers at ``zs``, the prior below."""


@runtime_checkable
class HierarchicalVAE(Protocol):
    """What every model offers (VDVAE, DCT-VAE and any family added later)."""

    arch: str
    cfg: ModelConfig
    layers: list[LayerInfo]  # every stochastic layer, top first
    iw_shared_noise: int  # how many leading tensors of iw_noise are per image, not per importance sample

    @property
    def num_layers(self) -> int:
        """L, the number of stochastic layers."""

    @property
    def num_pixels(self) -> int:
        """C x H x W of the images the model takes."""

    def encode(self, x: Tensor, k: int | None = None, sample: bool = False, noise: list[Tensor] | None = None) -> list:
        """Posteriors of the top k layers, top first; each conditioned on the posterior means above it."""

    def reconstruct(
        self,
        x: Tensor,
        k: int | None = None,
        temperature: float = 0.1,
        noise: list[Tensor] | None = None,
        posterior_sample: bool = False,
    ) -> Tensor:
        """Mean image: posterior means (or samples) of the top k layers, the prior at ``temperature`` below,
        driven by ``noise``."""

    def elbo(self, x: Tensor) -> ELBOResult:
        """Negative-ELBO terms with one posterior sample per layer."""

    def log_importance_weights(
        self, x: Tensor, num_samples: int, chunk: int | None = None, noise: list[Tensor] | None = None
    ) -> Tensor:
        """log p(x, z) - log q(z | x) at ``num_samples`` joint posterior samples: (K, B), driven by ``noise`` if given."""

    def iw_noise(self, num_samples: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """The noise of ``num_samples`` importance samples of one image (stack images on dim 1 for ``noise``).

        The first ``iw_shared_noise`` tensors belong to the image (shared by all its samples);
        each later one has the samples on dim 0.
        """

    def nll_iwae(self, x: Tensor, num_samples: int, chunk: int | None = None) -> Tensor:
        """Per-image importance-sampled upper bound on -log p(x), in nats."""

    def make_noise(self, batch: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Noise for every layer, to share between calls of ``reconstruct`` (or ``sample``)."""

    def sample(self, n: int, temperature: float = 1.0, noise: list[Tensor] | None = None) -> Tensor:
        """``n`` ancestral samples (mean images)."""

    def fit_data(self, train_images: Tensor) -> None:
        """Data-dependent set-up from the training split before training (a no-op for most models)."""

    def use_channels_last(self, enabled: bool = True) -> HierarchicalVAE:
        """Memory layout of weights and activations."""
