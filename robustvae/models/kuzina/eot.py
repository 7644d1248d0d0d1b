"""Expectation over the context's dither (EOT): a posterior computed under n fixed dither draws at once.

With the dither on (``model.context_dither``), the authors' encoder is random: the
quantised context, hence every Gaussian layer below it, depends on the draw. A
:class:`DrawAverage` holds the posterior of all n draws batched draw-major, (n * B, ...),
and offers the contract's posterior API with the draws averaged: ``compare`` is the mean
over draws of the per-draw comparison with the reference's same draw (common random
numbers: the draws are fixed, so attacks stay deterministic), ``mean`` the mean over draws.
"""

from __future__ import annotations

import torch
from torch import Tensor

EOT_SEED = 0  # the fixed dither draws come from this seed, the same for every call and every image


def dither_draws(draws: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """(draws, 1, *shape) U[0, 1) dither patterns shared by every image and every call."""
    g = torch.Generator().manual_seed(EOT_SEED)
    return torch.rand((draws, 1, *shape), generator=g).to(device)


class DrawAverage:
    """A layer's posterior under n dither draws, batched draw-major; the draws averaged for consumers."""

    def __init__(self, inner, draws: int):
        self.inner, self.draws = inner, draws

    def _avg(self, t: Tensor) -> Tensor:
        return t.view(self.draws, -1, *t.shape[1:]).mean(0)

    @property
    def mean(self) -> Tensor:
        return self._avg(self.inner.mean)

    @property
    def shape(self) -> torch.Size:
        return self.mean.shape

    @property
    def pre_quant(self) -> Tensor:
        """The context's coefficients before quantisation (the same under every draw)."""
        return self.inner.pre_quant.view(self.draws, -1, *self.inner.pre_quant.shape[1:])[0]

    def sample(self, noise: Tensor | None = None, temperature: float = 1.0) -> Tensor:  # noqa: ARG002
        return self.mean

    def compare(self, reference: DrawAverage, divergence: str = "skl", straight_through: bool = False) -> Tensor:
        """Per image: the mean over draws of each draw's comparison with the reference's same draw."""
        return self.inner.compare(reference.inner, divergence, straight_through).view(self.draws, -1).mean(0)

    def detach(self) -> DrawAverage:
        return DrawAverage(self.inner.detach(), self.draws)

    def __repr__(self) -> str:
        return f"DrawAverage({self.inner!r}, draws={self.draws})"
