"""The registry of latent attacks: the one place that lists them and builds them from a config.

``ATTACKS`` maps the name used in configs, suites and records (``AttackConfig.optimizer``,
``--optimizer``) to an :class:`AttackSpec`; :func:`make_attack` builds the attack a
config asks for. Objectives have their own registry,
:data:`robustvae.attacks.objectives.OBJECTIVES`. Adding an attack: write its class in
a file of its own (a :class:`~robustvae.attacks.base.LatentAttack` subclass) and add
one entry here.

Every builder reads ``eps``, ``norm``, ``steps``, ``step_size``, ``objective``,
``straight_through`` and ``temperature`` from the config, and the optional settings
below where the config has them (their defaults otherwise): ``per_unit`` (all attacks;
False), ``momentum`` and ``rho`` (apgd; 0.75, 0.75), ``p_init`` (square; 0.8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robustvae.attacks.apgd import LatentAPGD
from robustvae.attacks.base import LatentAttack
from robustvae.attacks.pgd import LatentPGD
from robustvae.attacks.pgdl2 import LatentPGDL2
from robustvae.attacks.sgd import LatentSGD
from robustvae.attacks.square import LatentSquare


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: how to build it for a model, k and config, and what it is."""

    name: str
    build: Callable[[Any, int, Any], LatentAttack]  # (model, k, AttackConfig) -> attack
    description: str


def _common(cfg) -> dict[str, Any]:
    """The settings every attack takes from a config (``per_unit`` only where the config has it).

    The temperature a reconstruction objective uses is the factor on the prior's standard
    deviation, so a config that scales the variance (``convention == "var"``) is converted.
    """
    temperature = cfg.temperature
    if getattr(cfg, "convention", "std") == "var":
        temperature = temperature**0.5
    return dict(eps=cfg.eps, steps=cfg.steps, objective=cfg.objective, straight_through=cfg.straight_through,
                temperature=temperature, per_unit=getattr(cfg, "per_unit", False))


def _pgd(model, k: int, cfg) -> LatentAttack:
    cls = LatentPGD if cfg.norm == "linf" else LatentPGDL2
    return cls(model, k=k, step_size=cfg.step_size, **_common(cfg))


def _sgd(model, k: int, cfg) -> LatentAttack:
    return LatentSGD(model, k=k, norm=cfg.norm, lr=cfg.step_size or 1.0, **_common(cfg))


def _apgd(model, k: int, cfg) -> LatentAttack:
    return LatentAPGD(model, k=k, norm=cfg.norm, step_size=cfg.step_size, momentum=getattr(cfg, "momentum", 0.75),
                      rho=getattr(cfg, "rho", 0.75), **_common(cfg))


def _square(model, k: int, cfg) -> LatentAttack:
    return LatentSquare(model, k=k, norm=cfg.norm, p_init=getattr(cfg, "p_init", 0.8), **_common(cfg))


ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec("pgd", _pgd, "PGD with random start: sign steps (L-inf) or normalised steps (L2)"),
        AttackSpec("sgd", _sgd, "the DCT-VAE authors' optimiser: SGD, lr 1.0, reduce-on-plateau"),
        AttackSpec("apgd", _apgd, "APGD (Croce & Hein): per-image step size halved when progress stalls, momentum 0.75"),
        AttackSpec("square", _square, "Square Attack (Andriushchenko et al.): gradient-free random search over squares"),
    )
}


def make_attack(model, k: int, cfg) -> LatentAttack:
    """The attack ``cfg`` (an :class:`~robustvae.config.AttackConfig`) asks for, on the top ``k`` layers of ``model``."""
    try:
        spec = ATTACKS[cfg.optimizer]
    except KeyError:
        raise ValueError(f"unknown attack {cfg.optimizer!r} (known: {', '.join(ATTACKS)})") from None
    return spec.build(model, k, cfg)
