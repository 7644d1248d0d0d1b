"""The per-model names of the analysis: ``context_ranges``, ``context_radius`` (and ``optimal_context_attack``).

Thin wrappers over :func:`~robustvae.certify.coefficient_ranges` and
:func:`~robustvae.certify.certified_radius` that take a model with a quantised context
(a DCT-VAE of either family: ``model.codec``) and refuse one whose context is dithered
in attack-facing calls (the analysis is of the deterministic quantiser).
:func:`~robustvae.certify.optimal_context_attack` already takes a model.
"""

from __future__ import annotations

from torch import Tensor

from robustvae.certify.affine import codec_of
from robustvae.certify.ranges import Ranges, certified_radius, coefficient_ranges


def _deterministic(model):
    if getattr(model, "dither", False):
        raise ValueError(
            "the model's context is dithered (context_dither); the analysis is of the deterministic "
            "quantiser: set model.dither = False"
        )
    return codec_of(model)


def context_ranges(model, x: Tensor, eps: float, norm: str = "linf") -> Ranges:
    """Per-coefficient lower and upper normalised values (``.lo``, ``.hi``, (B, C, c, c)) of the model's context
    over {x + d : ||d||_norm <= eps, 0 <= x + d <= 1}, with the reachable levels and the certified mask.

    Compare ``.lo`` / ``.hi`` with ``model.codec.boundaries`` to see which levels are reachable.
    """
    return coefficient_ranges(_deterministic(model), x, eps, norm)


def context_radius(model, x: Tensor, norm: str = "linf") -> Tensor:
    """(B,) certified radius per point: every budget strictly below it leaves the model's whole context unchanged."""
    return certified_radius(_deterministic(model), x, norm)
