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

``ENSEMBLES`` maps a versioned ensemble (``auto-v1``, ``auto-v2``) to its members; ``auto`` (the
name a config uses, ``--attack auto``) is the current version (:data:`AUTO_VERSION`, ``auto-v2``; ``auto-v1``
stays selectable so that old runs compare), and with a
targeted objective (``--objective target``) the current targeted version
(:data:`AUTO_TARGETED_VERSION`, ``auto-target-v1``), whose members are targeted and whose
per point best is the highest ``msssim_target`` (:func:`robustvae.records.selection`). An
ensemble runs each member on the same points and restarts with the same eps and norm
and is scored per point by the worst case over members and restarts. Its budget is the
config's ``steps`` per restart, split between the members that apply (a member of a
quantised context layer applies only where the attacked layers include one), so an
ensemble spends as many model passes per point as one attack of ``steps`` steps:
:func:`ensemble_plan`. Settings of an ensemble are fixed, never tuned per model. auto-v2
adds to auto-v1's members the context member (:mod:`robustvae.attacks.context`): the
optimal context attack's MILP and a level-flip search seed APGD on the reconstruction;
its solver seconds are counted apart from the model passes. ``auto`` is what runs
when no attack is named (``AttackConfig.optimizer``'s default); the paper's PGD, which
overstates robustness, is ``pgd``, and the Figure 10 suites under ``attacks/`` pin it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robustvae.attacks.apgd import LatentAPGD
from robustvae.attacks.base import LatentAttack
from robustvae.attacks.context import LatentContextSearch
from robustvae.attacks.objectives import OBJECTIVES
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
    return dict(
        eps=cfg.eps,
        steps=cfg.steps,
        objective=cfg.objective,
        straight_through=cfg.straight_through,
        temperature=temperature,
        per_unit=getattr(cfg, "per_unit", False),
    )


def _pgd(model, k: int, cfg) -> LatentAttack:
    cls = LatentPGD if cfg.norm == "linf" else LatentPGDL2
    return cls(model, k=k, step_size=cfg.step_size, **_common(cfg))


def _sgd(model, k: int, cfg) -> LatentAttack:
    return LatentSGD(model, k=k, norm=cfg.norm, lr=cfg.step_size or 1.0, **_common(cfg))


def _apgd(model, k: int, cfg) -> LatentAttack:
    return LatentAPGD(
        model,
        k=k,
        norm=cfg.norm,
        step_size=cfg.step_size,
        momentum=getattr(cfg, "momentum", 0.75),
        rho=getattr(cfg, "rho", 0.75),
        **_common(cfg),
    )


def _context(model, k: int, cfg) -> LatentAttack:
    return LatentContextSearch(
        model,
        k=k,
        norm=cfg.norm,
        step_size=cfg.step_size,
        momentum=getattr(cfg, "momentum", 0.75),
        rho=getattr(cfg, "rho", 0.75),
        **_common(cfg),
    )


def _square(model, k: int, cfg) -> LatentAttack:
    return LatentSquare(model, k=k, norm=cfg.norm, p_init=getattr(cfg, "p_init", 0.8), **_common(cfg))


ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec("pgd", _pgd, "PGD with random start: sign steps (L-inf) or normalised steps (L2)"),
        AttackSpec("sgd", _sgd, "the DCT-VAE authors' optimiser: SGD, lr 1.0, reduce-on-plateau"),
        AttackSpec(
            "apgd", _apgd, "APGD (Croce & Hein): per-image step size halved when progress stalls, momentum 0.75"
        ),
        AttackSpec(
            "square", _square, "Square Attack (Andriushchenko et al.): gradient-free random search over squares"
        ),
        AttackSpec(
            "context",
            _context,
            "quantised context: the optimal context attack (MILP, 2 s per point) and a "
            "level-flip search seed APGD (initial step eps / 4); plain APGD where the model has no context codec",
        ),
    )
}


@dataclass(frozen=True)
class Member:
    """One member of an ensemble: an attack on an objective with a share of the step budget."""

    name: str  # written to the records' ``member`` field
    optimizer: str  # an entry of ATTACKS
    objective: str  # an entry of robustvae.attacks.objectives.OBJECTIVES
    share: float  # of the steps per restart (renormalised over the members that apply)
    context_only: bool = False  # applies only when the attacked layers include a quantised context layer


@dataclass(frozen=True)
class EnsembleSpec:
    """A fixed, versioned attack ensemble (``targeted``: its members' objectives pull towards a target image)."""

    version: str
    members: tuple[Member, ...]
    description: str
    targeted: bool = False


ENSEMBLES: dict[str, EnsembleSpec] = {
    spec.version: spec
    for spec in (
        EnsembleSpec(
            "auto-v1",
            (
                Member("apgd-skl", "apgd", "skl", 0.3),
                Member("apgd-recon", "apgd", "recon", 0.3),
                Member("apgd-boundary", "apgd", "boundary", 0.2, context_only=True),
                Member("square-recon", "square", "recon", 0.2),
            ),
            "APGD on skl, APGD on recon, APGD on the context boundary (context layers only), Square on recon",
        ),
        EnsembleSpec(
            "auto-v2",
            (
                Member("apgd-skl", "apgd", "skl", 0.3),
                Member("apgd-recon", "apgd", "recon", 0.3),
                Member("apgd-boundary", "apgd", "boundary", 0.2, context_only=True),
                Member("square-recon", "square", "recon", 0.2),
                Member("context-levels", "context", "recon", 0.2, context_only=True),
            ),
            "auto-v1's members, and for a quantised context among the attacked layers a member on its levels: the "
            "optimal context attack (MILP) and a level-flip search seed APGD on recon (the context member runs last, "
            "warm-started from the earlier members' best iterate)",
        ),
        EnsembleSpec(
            "auto-target-v1",
            (
                Member("apgd-target", "apgd", "target", 0.3),
                Member("apgd-target-recon", "apgd", "target_recon", 0.2),
                Member("apgd-target-recon-l2", "apgd", "target_recon_l2", 0.3),
                Member("square-target-recon", "square", "target_recon", 0.2),
            ),
            "targeted: APGD on the target's posteriors (context: its levels), APGD on the target's reconstruction "
            "(MS-SSIM, and L2, whose gradient does not vanish where MS-SSIM is clipped at 0), Square on it (MS-SSIM)",
            targeted=True,
        ),
    )
}
AUTO = "auto"  # the name configs use; it means the current version
AUTO_VERSION = "auto-v2"
AUTO_TARGETED_VERSION = "auto-target-v1"  # what ``auto`` means with a targeted objective


def ensemble_version(name: str, objective: str | None = None) -> str | None:
    """The ensemble version a config's ``optimizer`` names (``auto`` -> the current one, the current targeted one
    when ``objective`` is targeted), None for a single attack."""
    if name == AUTO:
        spec = OBJECTIVES.get(objective or "")
        name = AUTO_TARGETED_VERSION if spec is not None and spec.needs_target else AUTO_VERSION
    return name if name in ENSEMBLES else None


def ensemble_plan(model, k: int, version: str, steps: int) -> list[tuple[Member, int]]:
    """(member, steps) of each member that applies to the top ``k`` layers of ``model``; the steps add up to
    ``steps`` (each member at least one), so the ensemble's passes per restart equal one ``steps``-step attack's."""
    has_context = any(info.deterministic for info in model.layers[:k])
    members = [m for m in ENSEMBLES[version].members if has_context or not m.context_only]
    total = sum(m.share for m in members)
    counts = [max(1, int(round(steps * m.share / total))) for m in members]
    counts[0] += steps - sum(counts) if sum(counts) < steps else 0
    while sum(counts) > steps and max(counts) > 1:
        counts[counts.index(max(counts))] -= 1
    return list(zip(members, counts))


def make_attack(model, k: int, cfg) -> LatentAttack:
    """The attack ``cfg`` (an :class:`~robustvae.config.AttackConfig`) asks for, on the top ``k`` layers of ``model``."""
    try:
        spec = ATTACKS[cfg.optimizer]
    except KeyError:
        raise ValueError(f"unknown attack {cfg.optimizer!r} (known: {', '.join(ATTACKS)})") from None
    return spec.build(model, k, cfg)
