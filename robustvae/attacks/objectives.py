"""Attack objectives: how far the attacked posteriors of the top k layers move.

An objective is maximised. It sums, over the attacked layers, the comparison each
layer's posterior defines (:meth:`DiagGaussian.compare` / :meth:`PointMass.compare`):
a divergence between q(z_l | x + d, ...) and q(z_l | x, ...) summed over the layer's
units for Gaussian layers, and the squared L2 distance of the coefficients before
quantisation (or, ``straight_through``, of the quantised values with the coefficients'
gradient) for a deterministic context layer.

:data:`OBJECTIVES` is the registry: the one place that lists them. ``skl`` (the
symmetric KL) is the default; ``supervised`` pulls the posteriors towards a target
image's (maximising minus the symmetric KL).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: which divergence it sums over the layers, and in which direction."""

    name: str
    divergence: str  # passed to each layer posterior's ``compare``
    description: str
    sign: float = 1.0  # -1: minimise the divergence (towards a target)
    needs_target: bool = False


OBJECTIVES: dict[str, ObjectiveSpec] = {
    spec.name: spec
    for spec in (
        ObjectiveSpec("skl", "skl", "symmetric KL between attacked and clean posteriors (default)"),
        ObjectiveSpec("kl_forward", "kl_forward", "KL(clean || attacked)"),
        ObjectiveSpec("kl_reverse", "kl_reverse", "KL(attacked || clean)"),
        ObjectiveSpec("means", "means", "squared L2 distance between posterior means"),
        ObjectiveSpec("supervised", "skl", "pull the posteriors towards a target image's (minus the symmetric KL)",
                      sign=-1.0, needs_target=True),
    )
}


def get_objective(name: str) -> ObjectiveSpec:
    """The registered objective ``name``; a ValueError listing the known ones otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r} (known: {', '.join(OBJECTIVES)})") from None


class LatentObjective:
    """Objective over the top ``k`` layers of ``model``; ``__call__`` returns a (B,) tensor to maximise."""

    def __init__(self, model, k: int, kind: str = "skl", straight_through: bool = False):
        self.spec = get_objective(kind)
        self.model, self.k, self.kind, self.straight_through = model, k, kind, straight_through

    def reference(self, images: Tensor) -> list:
        """Detached posteriors of the clean (or, for a targeted objective, the target) images."""
        with torch.no_grad():
            return [q.detach() for q in self.model.encode(images, self.k)]

    def per_layer(self, images: Tensor, reference: list) -> Tensor:
        """(B, k) comparisons (the objective's divergence) between the posteriors of ``images`` and ``reference``."""
        qs = self.model.encode(images, self.k)
        return torch.stack([q.compare(r, self.spec.divergence, self.straight_through) for q, r in zip(qs, reference)], 1)

    def __call__(self, images: Tensor, reference: list) -> Tensor:
        return self.spec.sign * self.per_layer(images, reference).sum(1)
