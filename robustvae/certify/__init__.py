"""Exact analysis of DCT-VAE's quantised context layer: ranges, certificates and the optimal attack.

The context is c(x) = Q(clamp((A x + b) / s, -1, 1)), an affine map followed by a
2^bits-level quantiser (:mod:`robustvae.models.context`). Over a perturbation ball
intersected with [0, 1]^n every coefficient ranges over an interval computable
exactly, which gives certificates (no image in the ball changes the context) and,
with a mixed-integer program, the strongest possible change of the context.
See docs/certify.md.

* :func:`coefficient_ranges` -> :class:`Ranges`: per-coefficient exact ranges, reachable levels, certified mask.
* :func:`certified_radius`: the smallest eps at which a level may change (per point or per coefficient).
* :func:`certified_fraction`: fraction of points certified at each eps.
* :func:`optimal_context_attack` -> :class:`ContextAttackResult`: the MILP attack, verified in float32.
* :func:`context_ranges`, :func:`context_radius`: the same analysis by model (``model.codec``).

The codec itself exposes ``scale`` (coefficient units per normalised unit) and
``boundaries`` (the quantiser's cell edges in normalised units), so any result can be
checked by hand.
"""

from robustvae.certify.api import context_radius, context_ranges
from robustvae.certify.affine import AffineContext, affine_context, float32_margin
from robustvae.certify.attack import ContextAttackResult, optimal_context_attack
from robustvae.certify.ranges import Ranges, certified_fraction, certified_radius, coefficient_ranges

__all__ = [
    "AffineContext",
    "ContextAttackResult",
    "Ranges",
    "affine_context",
    "certified_fraction",
    "certified_radius",
    "coefficient_ranges",
    "context_radius",
    "context_ranges",
    "float32_margin",
    "optimal_context_attack",
]
