"""The registry of latent attacks: the one place that lists them and builds them from a config.

``ATTACKS`` maps the name used in configs, suites and records (``AttackConfig.optimizer``,
``--optimizer``) to an :class:`AttackSpec`; :func:`make_attack` builds the attack a
config asks for. Objectives have their own registry,
:data:`robustvae.attacks.objectives.OBJECTIVES`. Adding an attack: write its class in
a file of its own (a :class:`~robustvae.attacks.base.LatentAttack` subclass) and add
one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robustvae.attacks.base import LatentAttack
from robustvae.attacks.pgd import LatentPGD
from robustvae.attacks.pgdl2 import LatentPGDL2
from robustvae.attacks.sgd import LatentSGD


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: how to build it for a model, k and config, and what it is."""

    name: str
    build: Callable[[Any, int, Any], LatentAttack]  # (model, k, AttackConfig) -> attack
    description: str


def _pgd(model, k: int, cfg) -> LatentAttack:
    cls = LatentPGD if cfg.norm == "linf" else LatentPGDL2
    return cls(model, k=k, eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size, objective=cfg.objective,
               straight_through=cfg.straight_through)


def _sgd(model, k: int, cfg) -> LatentAttack:
    return LatentSGD(model, k=k, eps=cfg.eps, norm=cfg.norm, steps=cfg.steps, lr=cfg.step_size or 1.0,
                     objective=cfg.objective, straight_through=cfg.straight_through)


ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec("pgd", _pgd, "PGD with random start: sign steps (L-inf) or normalised steps (L2)"),
        AttackSpec("sgd", _sgd, "the DCT-VAE authors' optimiser: SGD, lr 1.0, reduce-on-plateau"),
    )
}


def make_attack(model, k: int, cfg) -> LatentAttack:
    """The attack ``cfg`` (an :class:`~robustvae.config.AttackConfig`) asks for, on the top ``k`` layers of ``model``."""
    try:
        spec = ATTACKS[cfg.optimizer]
    except KeyError:
        raise ValueError(f"unknown attack {cfg.optimizer!r} (known: {', '.join(ATTACKS)})") from None
    return spec.build(model, k, cfg)
