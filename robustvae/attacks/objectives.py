"""Attack objectives: how far the attacked posteriors of the top k layers move (GUIDE section 5).

The unsupervised objectives are maximised: the sum over the attacked layers of a
divergence between q(z_l | x + d, ...) and q(z_l | x, ...), each summed over the
layer's units (``skl`` is the authors' default). ``supervised`` is maximised too, as
minus the symmetric KL towards the posteriors of a target image.

A DCT-VAE context layer (a point-mass posterior exposing ``pre_quant``) is scored by
the squared L2 distance between the normalised coefficients before quantisation
(quantisation has zero gradient); with ``straight_through`` the distance is taken
between the quantised values, with the gradient of the coefficients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustvae.metrics import divergence

OBJECTIVES = ("skl", "kl_forward", "kl_reverse", "means", "supervised")


def _context_value(q, straight_through: bool) -> Tensor:
    pre = q.pre_quant
    return pre + (q.mean - pre).detach() if straight_through else pre


def layer_divergence(attacked, reference, kind: str, straight_through: bool = False) -> Tensor:
    """Per-image divergence of one layer; context layers use squared L2 of their coefficients."""
    if hasattr(attacked, "pre_quant"):
        a = _context_value(attacked, straight_through)
        r = _context_value(reference, straight_through)
        return (a - r).pow(2).flatten(1).sum(1)
    return divergence(attacked, reference, kind)


class LatentObjective:
    """Objective over the top ``k`` layers of ``model``; ``__call__`` returns a (B,) tensor to maximise."""

    def __init__(self, model, k: int, kind: str = "skl", straight_through: bool = False):
        if kind not in OBJECTIVES:
            raise ValueError(f"unknown objective {kind!r} (known: {', '.join(OBJECTIVES)})")
        self.model, self.k, self.kind, self.straight_through = model, k, kind, straight_through

    def reference(self, images: Tensor) -> list:
        """Detached posteriors of the clean (or, for ``supervised``, the target) images."""
        with torch.no_grad():
            return [q.detach() for q in self.model.encode(images, self.k)]

    def per_layer(self, images: Tensor, reference: list) -> Tensor:
        """(B, k) divergences between the posteriors of ``images`` and ``reference``."""
        kind = "skl" if self.kind == "supervised" else self.kind
        qs = self.model.encode(images, self.k)
        return torch.stack([layer_divergence(q, r, kind, self.straight_through) for q, r in zip(qs, reference)], 1)

    def __call__(self, images: Tensor, reference: list) -> Tensor:
        total = self.per_layer(images, reference).sum(1)
        return -total if self.kind == "supervised" else total
