"""The attack sweep: latent attacks over models x k x points x restarts, written as records.

Work is cut into units with stable ids (model, k, a slice of points). A unit attacks
all its points x restarts in one batch (sized to ``max_batch_mib``; when one point's
restarts alone exceed it, in passes of as many images as fit: ``Unit.rows``), scores the
attacked reconstructions with MS-SSIM, adds the baselines, and appends its rows to
``records.jsonl`` in one write. A run started again with the same settings skips the
finished units; ``shard=(i, N)`` runs every N-th unit so processes or machines can
share a sweep (their record files merge). Under torchrun each process takes every
W-th unit of the shard and appends to its own part file; rank 0 merges the parts
into the shard's records file in unit order (:class:`~robustvae.experiments.rundir.RunDir`).

Protocol: the reconstruction with k layers follows the run's rule
(:mod:`robustvae.protocol`): by default the posterior mean for the top k layers and
prior samples at ``temperature`` for the rest, with the same prior noise for the clean
and the attacked image. Rows (:class:`~robustvae.records.AttackRecord`):

* ``kind="attack"``: one per (model, k, point, restart);
* ``kind="no_attack"``: paired with each attack row, the same score with delta = 0
  under the same rule and noise (exactly 1 under the default rule's shared noise);
* ``kind="floor"``: clean vs clean under different prior noise (how much MS-SSIM moves
  without any attack);
* ``kind="noise"``: a uniformly random perturbation of the same budget (an attack
  must beat it).

A targeted objective (``target``, ``target_recon``, ``supervised``) gives each point a
target image (:func:`choose_targets`; for ``target``: another image of the seeded
selection with a different label, drawn from the seed per point, so every k, eps,
restart and ensemble member of the point shares it). Its attack rows also carry
``target_point``, ``msssim_target`` (the attacked reconstruction against the target's
under the same prior noise) and ``msssim_target_before`` (the clean reconstruction
against the target's), and a point's strongest row is the one with the highest
``msssim_target`` (:func:`robustvae.records.selection`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import contextlib
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robustvae.attacks import OBJECTIVES, LatentObjective, ensemble_plan, ensemble_version, make_attack, random_start
from robustvae.attacks.base import CURVE_STEPS
from robustvae.attacks import context as context_member
from robustvae.config import AttackConfig, eps_problem, parse_layers, to_dict
from robustvae.data import eval_images, fixed_prepare, load_dataset, stratified_order
from robustvae.defences.sweep import DefenceRun
from robustvae.distributed import DistContext, current
from robustvae.errors import RobustVAEError
from robustvae.evaluation import layer_diagnostics
from robustvae.experiments.models import Labelled, source_settings
from robustvae.experiments.rundir import RunDir, provenance
from robustvae import io
from robustvae.io import atomic_file, safe_name
from robustvae.metrics import ms_ssim, psnr
from robustvae.progress import LOG_NAME, make_progress
from robustvae.protocol import RECON_RULES, ReconRule, std_temperature
from robustvae.records import AttackRecord, read_attack_records, selection
from robustvae.seeding import derive_seed

DIAGNOSTIC_IMAGES = 500  # images behind the per-layer KL / active-unit diagnostics in run.json
GRADIENT_CHECK_MEMBER = "apgd-boundary"  # the ensemble member also run with the other gradient (straight-through/plain)
GRADIENT_CHECK_POINTS = 4  # ... on the sweep's first points, first restart
GRADIENT_CHECK_LIMIT = 0.02  # MS-SSIM between the two ways above which run.json flags a disagreement


@dataclass(frozen=True)
class Unit:
    """A slice of the sweep that runs as one batch and lands in the records as one write."""

    id: str
    model: int  # index into the models list
    k: int
    start: int  # slice of the attacked points
    stop: int
    eps: float | None = None  # the unit's budget in an eps sweep (None: the config's eps)
    rows: int | None = None  # attacked images (points x restarts) per pass; None: all in one


@dataclass(frozen=True)
class Points:
    """The attacked points of one model's dataset (the first ``cfg.points``) and the diagnostic images after them."""

    dataset: str
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor  # positions in the split


# --------------------------------------------------------------------------- planning


def bytes_per_sample(model, k: int, cfg: AttackConfig, device: torch.device) -> int:
    """Memory one attacked image needs for a forward + backward pass, measured from autograd's saved tensors."""
    c, s = model.cfg.image_channels, model.cfg.image_size
    version = ensemble_version(cfg.optimizer, cfg.objective)
    kind = "recon" if version else "skl" if cfg.objective == "supervised" else cfg.objective
    objective = LatentObjective(model, k, kind, cfg.straight_through)
    sizes = []
    for b in (1, 2):
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        x = torch.rand(b, c, s, s, device=device)
        ref = objective.reference(x)
        xr = x.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = objective(xr, ref).sum()
        # the backward releases the saved tensors: a pack hook that returns a tensor itself closes a reference cycle
        # (a node that saves its own output) that Python's collector cannot see, and the graph would otherwise stay
        # (1.5 GB per probe of a model defended by an HMC chain)
        leaves = [xr, *(p for p in model.parameters() if p.requires_grad)]  # every branch, so every node lets go
        torch.autograd.grad(loss, leaves, allow_unused=True)
        del loss
        sizes.append(total)
    return max(sizes[1] - sizes[0], 1)


def plan_units(
    models: list[Labelled], cfg: AttackConfig, device: torch.device, defence: DefenceRun | None = None
) -> list[Unit]:
    """Every unit of the sweep, in a fixed order (batches sized for the model the attack differentiates)."""
    units = []
    sweep = cfg.eps_list if cfg.eps_sweep else [None]  # a single-eps run keeps its unit ids
    for mi, lm in enumerate(models):
        for k in parse_layers(cfg.layers, lm.model.num_layers, lm.label):
            attacked = (
                lm.model
                if defence is None
                else defence.attack_model(
                    lm.model, std_temperature(cfg.temperature, cfg.convention), None, [], k, cfg.seed
                )
            )
            per = bytes_per_sample(attacked, k, cfg, device)
            budget = cfg.max_batch_mib * 2**20
            if 3 * per > budget:
                warnings.warn(
                    f"one image of {lm.label} at k={k} needs about {3 * per / 2**20:,.0f} MiB (3 x the "
                    f"{per / 2**20:,.0f} MiB its pass saves for the gradient), more than --max-batch-mib "
                    f"{cfg.max_batch_mib}: it runs one image per pass, over the budget",
                    stacklevel=2,
                )
            n_points = max(1, min(cfg.points, budget // (3 * per * cfg.restarts)))
            rows = max(1, budget // (3 * per))  # one point's restarts may not fit: then they run in passes
            for eps in sweep:
                tag = "" if eps is None else f"|eps={eps:g}"
                for a in range(0, cfg.points, n_points):
                    b = min(a + n_points, cfg.points)
                    units.append(
                        Unit(
                            f"{lm.label}|k={k}{tag}|points={a}-{b - 1}",
                            mi,
                            k,
                            a,
                            b,
                            eps,
                            rows if rows < (b - a) * cfg.restarts else None,
                        )
                    )
    return units


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 1 <= i <= N."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise RobustVAEError(f"--shard expects i/N such as 1/2, got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise RobustVAEError(f"--shard {text}: i must be between 1 and N (got i={i}, N={n})")
    return i, n


def select_points(lm: Labelled, cfg: AttackConfig, data_dir: str | None) -> Points:
    """A label-stratified, seeded selection from the split: the first ``points`` are attacked,
    and up to :data:`DIAGNOSTIC_IMAGES` feed the per-layer KL / active-unit diagnostics.

    On a user's own images (``lm.images``, no labels): the first ``points`` images in file order, and the
    diagnostic images after them in file order."""
    if lm.images is not None:
        return image_points(lm, cfg.points)
    dcfg = lm.data
    if data_dir:
        dcfg = dataclasses.replace(dcfg, data_dir=data_dir)
    ds = load_dataset(dcfg)
    split = ds.split(cfg.split)
    if cfg.points > len(split):
        raise RobustVAEError(f"--points {cfg.points} is more than the {len(split)} images of the {cfg.split} split")
    order = stratified_order(split.labels, cfg.seed)[: max(cfg.points, min(DIAGNOSTIC_IMAGES, len(split)))]
    images = eval_images(ds, cfg.split, lm.model.cfg.binary)[order]
    return Points(ds.name, images, split.labels[order], order)


def image_points(lm: Labelled, points: int) -> Points:
    """The first ``points`` of a user's image set (file order; label -1: the set has none) and the diagnostic
    images after them, binarised (for a binary-data model) exactly as ``robustvae eval`` binarises the set."""
    n = len(lm.images)
    if points > n:
        raise RobustVAEError(f"--points {points} is more than the {n} images of {lm.images.path}; lower --points")
    count = max(points, min(DIAGNOSTIC_IMAGES, n))
    images = fixed_prepare(lm.images.images, lm.model.cfg.binary)[:count]
    return Points(lm.images.name, images, torch.full((count,), -1, dtype=torch.long), torch.arange(count))


def diagnostic_images_info(lm: Labelled, cfg: AttackConfig, count: int) -> dict[str, Any]:
    """run.json's note on the images behind a model's layer diagnostics (not eval's: reports say which is which)."""
    if lm.images is not None:
        return {
            "split": lm.images.name,
            "images": count,
            "selection": f"the first {count} images of {lm.images.path} in file order (no labels), the attacked "
            f"points first",
        }
    return {
        "split": cfg.split,
        "images": count,
        "selection": f"label-stratified with the attack's seed {cfg.seed}, the attacked points first",
    }


def choose_targets(points: Points, pts: list[int], cfg: AttackConfig) -> list[int]:
    """Each attacked point's target, as a position in the seeded selection (``points``), as the objective says.

    ``other-label``: an image of the selection (the attacked points and the images after them) whose label
    differs from the point's, drawn uniformly from a generator seeded by (seed, point): the same target at every
    k, eps and restart, whatever the unit or shard. ``next-point`` (``supervised``): the next attacked point.
    """
    choice = OBJECTIVES[cfg.objective].target_choice
    if choice == "next-point":
        return [(p + 1) % cfg.points for p in pts]
    labels, out = points.labels, []
    if bool((labels < 0).all()):
        raise RobustVAEError(
            "a targeted objective draws each point's target from another label, and a user's image "
            "set has no labels; use an untargeted objective with --images, or a dataset (--data)"
        )
    for p in pts:
        others = (labels != labels[p]).nonzero().flatten()
        if len(others) == 0:
            raise RobustVAEError(
                f"no image of the {cfg.split} selection has a label other than {int(labels[p])}: "
                f"a targeted attack needs one (use an untargeted objective, or more --points)"
            )
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "target", p))
        out.append(int(others[int(torch.randint(len(others), (1,), generator=g))]))
    return out


# --------------------------------------------------------------------------- one unit


def prior_noise(model, seeds: list[int]) -> list[torch.Tensor]:
    """Per-layer prior noise, one independent seeded draw per image."""
    draws = [model.make_noise(1, torch.Generator().manual_seed(s)) for s in seeds]
    return [torch.cat(parts) for parts in zip(*draws)]


def _repeat(noise: list[torch.Tensor], r: int) -> list[torch.Tensor]:
    return [t.repeat_interleave(r, 0) for t in noise]


def _norms(delta: torch.Tensor) -> tuple[list[float], list[float]]:
    flat = delta.flatten(1).double()
    return flat.abs().max(1).values.tolist(), flat.norm(dim=1).tolist()


@dataclass
class _UnitContext:
    """What every row of one unit shares, and how to make its rows and reconstructions."""

    lm: Labelled
    unit: Unit
    points: Points
    cfg: AttackConfig
    pts: list[int]
    targets: list[int] | None = None  # targeted objectives: each point's target (a position in ``points``)
    defence: DefenceRun | None = None

    @property
    def targeted(self) -> bool:
        return self.targets is not None

    def target_images(self, R: int) -> torch.Tensor:
        """The targets of the unit's points, each repeated for its ``R`` restarts."""
        return self.points.images[self.targets].repeat_interleave(R, 0)

    @property
    def rule(self) -> ReconRule:
        return RECON_RULES[self.cfg.recon]

    @property
    def temperature(self) -> float:
        return std_temperature(self.cfg.temperature, self.cfg.convention)

    @functools.cached_property
    def scorer(self) -> torch.nn.Module:
        """The model that reconstructs every scored pass: the defended model in a defended sweep."""
        return self.lm.model if self.defence is None else self.defence.scorer(self.lm.model, self.temperature)

    def model_noise(self, noise: list[torch.Tensor]) -> list[torch.Tensor]:
        """The model's own part of a noise list (a defended model's noise ends with its chain seeds)."""
        return noise if self.defence is None else noise[:-1]

    def reconstruct(self, x: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
        """The reconstruction with k layers under the run's rule and temperature convention (defended, if so)."""
        return self.scorer.reconstruct(
            x, self.unit.k, self.temperature, noise, posterior_sample=self.rule.posterior_sample
        )

    def reconstruct_clean(self, x: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
        """The reference: the undefended model's reconstruction of the clean image."""
        return self.lm.model.reconstruct(
            x, self.unit.k, self.temperature, self.model_noise(noise), posterior_sample=self.rule.posterior_sample
        )

    def defence_stats(self, n: int) -> list[dict[str, float] | None]:
        """Per image of the latest scored pass, the defence's statistics (None without a defence or where it idled)."""
        last = getattr(self.scorer, "last", None) if self.defence is not None else None
        return last.rows() if last is not None else [None] * n

    def pass_noise(self, what: str, R: int, clean: list[torch.Tensor]) -> list[torch.Tensor]:
        """Noise of the passes that are compared with the clean one: the clean noise itself (shared-noise rule),
        else an independent seeded draw per point and draw r."""
        if self.rule.shared_noise:
            return _repeat(clean, R)
        return prior_noise(
            self.scorer, [derive_seed(self.cfg.seed, what, self.unit.k, p, r) for p in self.pts for r in range(R)]
        )

    def record(self, i: int, kind: str, restart: int, **scores: Any) -> AttackRecord:
        p, cfg = self.pts[i], self.cfg
        if kind == "attack" and self.targeted:
            t = self.targets[i]
            scores.update(target_point=t, target_test_index=int(self.points.indices[t]))
        if self.defence is not None:
            scores = {**self.defence.record_fields(), **scores}
        return AttackRecord(
            unit=self.unit.id,
            model=self.lm.label,
            checkpoint_sha256=self.lm.sha256,
            dataset=self.points.dataset,
            k=self.unit.k,
            objective=cfg.objective,
            optimizer=cfg.optimizer,
            norm=cfg.norm,
            eps=cfg.eps,
            steps=cfg.steps,
            seed=cfg.seed,
            temperature=cfg.temperature,
            recon=cfg.recon,
            temperature_convention=cfg.convention,
            kind=kind,
            point=p,
            test_index=int(self.points.indices[p]),
            label=int(self.points.labels[p]),
            restart=restart,
            **scores,
        )


def _gallery(
    ctx: _UnitContext, X, adv, clean, rec, score, R: int, target: dict | None = None
) -> dict[str, torch.Tensor] | None:
    """Strongest-of-``R`` arrays (restarts, and members of an ensemble) of the unit's ``gallery_points`` points with
    the strongest attacks: the lowest MS-SSIM, or for a targeted attack (``target``: its ``rec`` and ``msssim``
    per row) the highest MS-SSIM to the target's reconstruction (:func:`robustvae.records.selection`)."""
    sel = selection(target is not None)
    rank = (sel.sign * (target["msssim"] if target is not None else score)).nan_to_num(2.0, 2.0, 2.0)
    per_point = rank.view(len(ctx.pts), R).min(1).values  # a non-finite score is no example
    chosen = sorted(per_point.argsort(stable=True)[: ctx.cfg.gallery_points].tolist())
    if not chosen:
        return None
    worst = [i * R + int(rank[i * R : (i + 1) * R].argmin()) for i in chosen]
    out = {
        "points": torch.tensor([ctx.pts[i] for i in chosen]),
        "restarts": torch.tensor([j % R for j in worst]),
        "x": X[worst].cpu(),
        "x_adv": adv[worst].cpu(),
        "rec": clean[chosen].cpu(),
        "rec_adv": rec[worst].cpu(),
        "msssim": score[worst].cpu(),
    }
    if target is not None:
        out.update(rec_target=target["rec"][worst].cpu(), msssim_target=target["msssim"][worst].cpu())
    return out


def members(ctx: _UnitContext) -> list[tuple[str | None, AttackConfig]]:
    """(member name, its config) of the unit's attack: one unnamed entry for a single attack, the members of an
    ensemble (``--attack auto``) that apply to its top k layers, each with its share of the steps."""
    cfg = ctx.cfg
    version = ensemble_version(cfg.optimizer, cfg.objective)
    if version is None:
        return [(None, cfg)]
    return [
        (m.name, dataclasses.replace(cfg, optimizer=m.optimizer, objective=m.objective, steps=n, step_size=None))
        for m, n in ensemble_plan(ctx.lm.model, ctx.unit.k, version, cfg.steps)
    ]


def curve_steps(steps: int) -> tuple[int, ...]:
    """Steps at which the best-so-far damage is scored: :data:`CURVE_STEPS` up to ``steps``, half of it and itself."""
    return tuple(sorted({s for s in CURVE_STEPS if s <= steps} | {max(steps // 2, 1), steps}))


@dataclass
class AttackOutcome:
    """What the sweep keeps of an attack on a unit's images: per image, its best objective, last iterate, whether
    it met a non-finite value and its start gradient norm (None for a gradient-free attack); the best iterate
    at each curve step."""

    best_loss: torch.Tensor
    last_delta: torch.Tensor
    nonfinite: torch.Tensor
    start_grad_norm: torch.Tensor | None
    snapshots: dict[int, torch.Tensor]
    passes: dict[str, int]  # the attack's model passes (forward, backward): each image's, every pass the same
    solver_s: torch.Tensor | None = None  # per image: seconds of solver work outside the model passes (context member)

    @classmethod
    def of(cls, attack) -> AttackOutcome:
        return cls(
            attack.best_loss,
            attack.last_delta,
            attack.nonfinite,
            attack.start_grad_norm,
            attack.snapshots,
            dict(attack.passes),
            getattr(attack, "solver_seconds", None),
        )

    @classmethod
    def cat(cls, parts: list[AttackOutcome]) -> AttackOutcome:
        """The outcomes of passes over consecutive images, as one."""
        if len(parts) == 1:
            return parts[0]
        grads, solver = [p.start_grad_norm for p in parts], [p.solver_s for p in parts]
        return cls(
            torch.cat([p.best_loss for p in parts]),
            torch.cat([p.last_delta for p in parts]),
            torch.cat([p.nonfinite for p in parts]),
            None if grads[0] is None else torch.cat(grads),
            {s: torch.cat([p.snapshots[s] for p in parts]) for s in parts[0].snapshots},
            parts[0].passes,
            None if solver[0] is None else torch.cat(solver),
        )


def _attack(
    ctx: _UnitContext,
    X: torch.Tensor,
    noise: list[torch.Tensor],
    cfg: AttackConfig,
    member: str | None,
    warm: torch.Tensor | None = None,
    clean: torch.Tensor | None = None,
):
    """The attack of every point x restart (each restart its own seeded start), in one batch or in passes of
    ``unit.rows`` images (each image's attack is its own, so the passes give the batch's results); the outcome
    and the scored iterate.

    An ensemble's members start from the same seeds as the attack alone would, so each member's rows are those
    of its attack run by itself (``member`` only names them); an attack that takes a ``warm`` start (auto-v2's
    context member) also gets the earlier members' best delta per row. An adaptive attack on a defence also runs the
    non-adaptive attack (:func:`_transfer`): an attack that takes a start begins from its delta, and with ``clean``
    (the rows' undefended clean reconstructions) each row keeps the better of the two by the attacker's own estimate
    (:func:`_attackers_choice`; not for a targeted attack or the authors' last-iterate rule)."""
    k, R = ctx.unit.k, ctx.cfg.restarts
    seeds = [derive_seed(cfg.seed, "start", k, p, r) for p in ctx.pts for r in range(R)]
    target = ctx.target_images(R).to(X.device) if OBJECTIVES[cfg.objective].needs_target else None
    noise_r = _repeat(ctx.model_noise(noise), R)  # noise: for reconstruction objectives
    ids = [(p, r) for p in ctx.pts for r in range(R)]
    step = ctx.unit.rows or X.shape[0]
    parts, advs, attacked = [], [], None
    for a in range(0, X.shape[0], step):
        rows = slice(a, a + step)
        part_noise = [t[rows] for t in noise_r]
        model = (
            ctx.lm.model
            if ctx.defence is None
            else ctx.defence.attack_model(ctx.lm.model, ctx.temperature, part_noise, ids[rows], k, cfg.seed)
        )
        if attacked is None:  # the first pass's attacked model (its passes per row are every pass's)
            attacked = model
        attack = make_attack(model, k, cfg)
        attack.curve_steps = curve_steps(cfg.steps)
        part_target = target[rows] if target is not None else None
        part_warm = warm[rows] if warm is not None else None
        if part_warm is not None and hasattr(attack, "warm"):
            attack.warm = part_warm
        transfer = None
        if ctx.defence is not None and ctx.defence.adaptive:  # begin where transfer ends
            transfer, passes = _transfer(ctx, X[rows], cfg, seeds[rows], part_noise, part_target, part_warm)
            model.forward_passes += passes
            if attack.takes_start:
                attack.start = transfer
        adv = attack(X[rows], target=part_target, seeds=seeds[rows], noise=part_noise)
        parts.append(AttackOutcome.of(attack))
        if ctx.rule.iterate == "last":
            adv = (X[rows] + attack.last_delta).detach()
        elif transfer is not None and clean is not None and part_target is None:
            adv = _attackers_choice(model, k, ctx.temperature, part_noise, adv, X[rows] + transfer, clean[rows])
        advs.append(adv)
    return AttackOutcome.cat(parts), torch.cat(advs), attacked


def _transfer(ctx: _UnitContext, X, cfg: AttackConfig, seeds, noise, target, warm) -> tuple[torch.Tensor, int]:
    """An adaptive attack's transferred candidate: the delta of the same attack on the undefended model (the
    non-adaptive attack: the same seeds, noise, warm start and rule); (the deltas, that attack's model passes per
    row, each forward with its backward where it took a gradient)."""
    attack = make_attack(ctx.lm.model, ctx.unit.k, cfg)
    if warm is not None and hasattr(attack, "warm"):
        attack.warm = warm
    adv = attack(X, target=target, seeds=seeds, noise=noise)
    delta = attack.last_delta if ctx.rule.iterate == "last" else adv - X
    return delta.detach(), attack.passes["forward"]


@torch.no_grad()
def _attackers_choice(view, k: int, temperature: float, noise, adaptive, transferred, clean) -> torch.Tensor:
    """Per row the adaptive attack's result or the transferred one, whichever the attacker's own estimate scores lower:
    MS-SSIM of the view's reconstruction (its chain draws, not the defender's) against the undefended clean
    reconstruction (what the score compares with). An attack's objective through the chain is not that score, so its
    best iterate can score worse than where it started."""
    worse = ms_ssim(view.reconstruct(transferred, k, temperature, noise), clean) < ms_ssim(
        view.reconstruct(adaptive, k, temperature, noise), clean
    )
    return torch.where(worse.view(-1, *([1] * (adaptive.dim() - 1))), transferred, adaptive).detach()


@torch.no_grad()
def _curves(ctx: _UnitContext, attack, X, passes, clean_r) -> list[dict[str, float]]:
    """Per row: MS-SSIM of the best iterate after each step of the attack's ``curve_steps`` (recorded, not re-run)."""
    cols = {s: ms_ssim(ctx.reconstruct(X + d, passes), clean_r).tolist() for s, d in sorted(attack.snapshots.items())}
    return [{str(s): v[j] for s, v in cols.items()} for j in range(X.shape[0])]


def _member_rows(
    ctx: _UnitContext,
    X,
    clean_r,
    passes,
    noise,
    member: str | None,
    mcfg: AttackConfig,
    target: dict | None = None,
    warm: torch.Tensor | None = None,
):
    """The attack rows of one attack (or ensemble member) over every point x restart, and its tensors for the gallery
    (``target``: a targeted attack's target reconstructions ``rec`` and clean scores ``before``, per row; ``warm``:
    the earlier members' best delta per row)."""
    model, k, R = ctx.lm.model, ctx.unit.k, ctx.cfg.restarts
    t0 = time.perf_counter()
    attack, adv, attacked = _attack(ctx, X, noise, mcfg, member, warm, clean_r)
    cost = ctx.defence.attack_cost(attack, attacked, time.perf_counter() - t0, X.shape[0]) if ctx.defence else None
    with torch.no_grad():
        rec = ctx.reconstruct(adv, passes)
        stats = ctx.defence_stats(X.shape[0])
        score = ms_ssim(rec, clean_r)
        to_target = ms_ssim(rec, target["rec"]) if target is not None else None
        score_in = ms_ssim(adv, X)
        ps = psnr(rec, clean_r)
        scorer = LatentObjective(model, k, "skl")
        skl = scorer.per_layer(adv, scorer.reference(X))
    curves = _curves(ctx, attack, X, passes, clean_r)
    grad = attack.start_grad_norm.tolist() if attack.start_grad_norm is not None else [None] * X.shape[0]
    linf, l2 = _norms(adv - X)
    rec_finite = torch.isfinite(rec).flatten(1).all(1).tolist()
    # one device-to-host copy per column, not one wait per value
    bad, score_l, score_in_l, ps_l, skl_l, loss_l = (
        t.tolist() for t in (attack.nonfinite, score, score_in, ps, skl, attack.best_loss)
    )
    targeted = {} if target is None else {"msssim_target": to_target.tolist(), "msssim_target_before": target["before"]}
    solver = [None] * X.shape[0] if attack.solver_s is None else attack.solver_s.tolist()
    columns = {"msssim": score_l, "msssim_input": score_in_l, "psnr": ps_l, "skl": skl_l, "delta_linf": linf,
               "delta_l2": l2, "final_loss": loss_l, "curve": curves, "grad_norm": grad, "defence_stats": stats,
               "solver_s": solver, **targeted}  # fmt: skip
    steps = None if member is None else mcfg.steps
    rows = [
        ctx.record(
            j // R,
            "attack",
            j % R,
            member=member,
            member_steps=steps,
            attack_cost=cost,
            nonfinite=bool(bad[j]) or not math.isfinite(score_l[j]) or not rec_finite[j],
            **{name: v[j] for name, v in columns.items()},
        )
        for j in range(len(ctx.pts) * R)
    ]
    return rows, adv, rec, score, to_target


def _attack_rows(ctx: _UnitContext, x, clean, noise) -> tuple[list[AttackRecord], dict | None]:
    """Attack rows (per member of an ensemble) and their paired no-attack rows (delta = 0 under the same noise),
    one per point x restart; the gallery of each point's worst case over restarts and members."""
    R = ctx.cfg.restarts
    X = x.repeat_interleave(R, 0)
    with torch.no_grad():
        passes = ctx.pass_noise("attacked pass", R, noise)
        clean_r = clean.repeat_interleave(R, 0)
        unattacked = ctx.reconstruct(X, passes)
        base = ms_ssim(unattacked, clean_r).tolist()
        base_stats = ctx.defence_stats(X.shape[0])
        target = _target_scores(ctx, X, passes, unattacked) if ctx.targeted else None
    rows, advs, recs, scores, to_targets = [], [], [], [], []
    for member, mcfg in members(ctx):
        new, adv, rec, score, to_target = _member_rows(
            ctx, X, clean_r, passes, noise, member, mcfg, target, _warm(X, advs, scores, to_targets, target is not None)
        )
        if member == GRADIENT_CHECK_MEMBER:
            new = _gradient_check(ctx, new, X, clean_r, passes, noise, mcfg)
        rows += new
        advs.append(adv), recs.append(rec), scores.append(score), to_targets.append(to_target)
    M = len(advs)

    def by_point(ts):  # (M, n R, ...) -> (n R M, ...): each point's restarts and members together
        t = torch.stack(ts, 1)
        return t.reshape(-1, *t.shape[2:])

    paired = [
        ctx.record(
            j // R,
            "no_attack",
            j % R,
            msssim=base[j],
            msssim_input=1.0,
            delta_linf=0.0,
            delta_l2=0.0,
            nonfinite=not math.isfinite(base[j]),
            defence_stats=base_stats[j],
        )
        for j in range(len(ctx.pts) * R)
    ]
    shown = None if target is None else {"rec": target["rec"].repeat_interleave(M, 0), "msssim": by_point(to_targets)}
    gallery = _gallery(
        ctx, X.repeat_interleave(M, 0), by_point(advs), clean, by_point(recs), by_point(scores), R * M, shown
    )
    return rows + paired, gallery


def _gradient_check(
    ctx: _UnitContext, rows: list[AttackRecord], X, clean_r, passes, noise, mcfg: AttackConfig
) -> list[AttackRecord]:
    """The boundary member's rows, those of restart 0 of the sweep's first :data:`GRADIENT_CHECK_POINTS` points with
    ``gradient_check``: its MS-SSIM with straight-through and with plain quantiser gradients (the same start, the
    member run again the other way). Not in a defended sweep (its scoring pass is the defence's)."""
    R = ctx.cfg.restarts
    idx = [i * R for i, p in enumerate(ctx.pts) if p < GRADIENT_CHECK_POINTS]
    if not idx or ctx.defence is not None:
        return rows
    other = dataclasses.replace(mcfg, straight_through=not mcfg.straight_through)
    attack = make_attack(ctx.lm.model, ctx.unit.k, other)
    adv = attack(
        X[idx],
        seeds=[derive_seed(other.seed, "start", ctx.unit.k, ctx.pts[j // R], 0) for j in idx],
        noise=[t[idx] for t in _repeat(ctx.model_noise(noise), R)],
    )
    if ctx.rule.iterate == "last":
        adv = (X[idx] + attack.last_delta).detach()
    with torch.no_grad():
        score = ms_ssim(ctx.reconstruct(adv, [t[idx] for t in passes]), clean_r[idx]).tolist()
    rows = list(rows)
    for j, s in zip(idx, score):
        both = (rows[j].msssim, s) if mcfg.straight_through else (s, rows[j].msssim)
        rows[j] = dataclasses.replace(rows[j], gradient_check={"straight_through": both[0], "plain": both[1]})
    return rows


def gradient_checks(info: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """run.json: per ensemble plan with rows that carry ``gradient_check``, the mean MS-SSIM over those points of the
    boundary member with straight-through and with plain gradients, and ``flagged`` when they differ by more than
    :data:`GRADIENT_CHECK_LIMIT` (one way's gradient is weaker: masked, or biased by the straight-through estimate)."""
    plans = (info.get("ensemble") or {}).get("plans", {})
    both: dict[str, list] = {}
    for r in rows:
        key = f"{r['model']}|k={r['k']}"
        if r.get("kind") == "attack" and r.get("gradient_check") and key in plans:
            both.setdefault(key, []).append(r["gradient_check"])
    for key, checks in both.items():
        st, plain = (float(np.mean([c[w] for c in checks])) for w in ("straight_through", "plain"))
        plans[key]["gradient_check"] = {
            "points": len(checks),
            "msssim_straight_through": st,
            "msssim_plain": plain,
            "difference": abs(st - plain),
            "limit": GRADIENT_CHECK_LIMIT,
            "flagged": abs(st - plain) > GRADIENT_CHECK_LIMIT,
        }


def _warm(X, advs: list, scores: list, to_targets: list, targeted: bool) -> torch.Tensor | None:
    """Per row the delta of the strongest member so far (lowest MS-SSIM; targeted: highest to the target)."""
    if not advs:
        return None
    rank = torch.stack([selection(targeted).sign * (t if targeted else s) for s, t in zip(scores, to_targets)])
    best = rank.nan_to_num(2.0, 2.0, 2.0).argmin(0)
    return torch.stack(advs)[best, torch.arange(X.shape[0])] - X


def _target_scores(ctx: _UnitContext, X, passes, unattacked) -> dict[str, Any]:
    """A targeted unit's target reconstructions under each row's prior noise (``rec``, the noise of the attacked
    pass, so only the image differs) and each row's clean score against them (``before``, a list)."""
    rec = ctx.reconstruct(ctx.target_images(ctx.cfg.restarts).to(X.device), passes)
    return {"rec": rec, "before": ms_ssim(unattacked, rec).tolist()}


@torch.no_grad()
def _baseline_rows(ctx: _UnitContext, x, clean, noise) -> list[AttackRecord]:
    """Floor rows (the same image under other prior noise) and noise rows (a random perturbation of the budget)."""
    model, k, cfg, pts = ctx.lm.model, ctx.unit.k, ctx.cfg, ctx.pts
    rows = []
    for d in range(cfg.floor_draws):
        other = prior_noise(ctx.scorer, [derive_seed(cfg.seed, "floor", p, d) for p in pts])
        s = ms_ssim(ctx.reconstruct(x, other), clean).tolist()
        rows += [
            ctx.record(
                i,
                "floor",
                d,
                msssim=s[i],
                msssim_input=1.0,
                delta_linf=0.0,
                delta_l2=0.0,
                nonfinite=not math.isfinite(s[i]),
            )
            for i in range(len(pts))
        ]
    scorer = LatentObjective(model, k, "skl")
    ref_x = scorer.reference(x) if cfg.noise_draws else None
    for d in range(cfg.noise_draws):
        xn = x + random_start(x, cfg.eps, cfg.norm, [derive_seed(cfg.seed, "noise", p, d) for p in pts])
        passes = (
            noise
            if ctx.rule.shared_noise
            else prior_noise(ctx.scorer, [derive_seed(cfg.seed, "noise pass", k, p, d) for p in pts])
        )
        s = ms_ssim(ctx.reconstruct(xn, passes), clean).tolist()
        s_in = ms_ssim(xn, x).tolist()
        kl_n = scorer.per_layer(xn, ref_x).tolist()
        nl, n2 = _norms(xn - x)
        rows += [
            ctx.record(
                i,
                "noise",
                d,
                msssim=s[i],
                msssim_input=s_in[i],
                skl=kl_n[i],
                delta_linf=nl[i],
                delta_l2=n2[i],
                nonfinite=not math.isfinite(s[i]),
            )
            for i in range(len(pts))
        ]
    return rows + _unrelated_rows(ctx, clean, noise)


@torch.no_grad()
def _unrelated_rows(ctx: _UnitContext, clean, noise) -> list[AttackRecord]:
    """Per point and draw: MS-SSIM between its clean reconstruction and that of an unrelated test image (one of
    the images after the attacked points, else another attacked point) under the same noise and rule."""
    imgs, n, rows = ctx.points.images, ctx.cfg.points, []
    for d in range(ctx.cfg.unrelated_draws):
        spare = len(imgs) - n
        other = [n + (p + d * n) % spare if spare else (p + 1 + d) % n for p in ctx.pts]
        s = ms_ssim(ctx.reconstruct(imgs[other].to(clean.device), noise), clean).tolist()
        rows += [
            ctx.record(
                i,
                "unrelated",
                d,
                msssim=s[i],
                msssim_input=math.nan,
                delta_linf=math.nan,
                delta_l2=math.nan,
                nonfinite=not math.isfinite(s[i]),
            )
            for i in range(len(ctx.pts))
        ]
    return rows


def run_unit(
    lm: Labelled, unit: Unit, points: Points, cfg: AttackConfig, defence: DefenceRun | None = None
) -> tuple[list[AttackRecord], dict | None]:
    """Attack one unit's points x restarts in one batch; its rows (attack, no_attack, floor, noise) and gallery.

    With ``defence`` every scored pass goes through the defended model and the attack runs on the model or, adaptive,
    through the defence (:mod:`robustvae.defences.sweep`); the reference stays the undefended clean reconstruction."""
    dev = next(lm.model.parameters()).device
    if unit.eps is not None:
        cfg = dataclasses.replace(cfg, eps=unit.eps)
    pts = list(range(unit.start, unit.stop))
    targets = choose_targets(points, pts, cfg) if OBJECTIVES[cfg.objective].needs_target else None
    ctx = _UnitContext(lm, unit, points, cfg, pts, targets, defence)
    x = points.images[unit.start : unit.stop].to(dev)
    noise = prior_noise(ctx.scorer, [derive_seed(cfg.seed, "prior", p) for p in ctx.pts])
    with torch.no_grad():
        clean = ctx.reconstruct_clean(x, noise)
    rows, gallery = _attack_rows(ctx, x, clean, noise)
    return rows + _baseline_rows(ctx, x, clean, noise), gallery


def save_gallery(
    path: Path, arrays: dict[str, torch.Tensor], unit: Unit, model_label: str, root: Path | None = None
) -> None:
    """Worst-restart examples of a unit's most damaged points (x, x + delta, both reconstructions) as a .npz.

    Read with ``numpy.load(path)`` (no pickles): arrays ``points``, ``restarts``, ``x``,
    ``x_adv``, ``rec``, ``rec_adv``, ``msssim`` and ``unit`` / ``model`` (strings), ``k``; a targeted
    run's also ``rec_target`` and ``msssim_target`` (its points closest to their targets). ``root``: the run's
    output folder (no link below it is written through).
    """
    with atomic_file(path, root=root) as f:
        np.savez_compressed(
            f,
            unit=np.array(unit.id),
            model=np.array(model_label),
            k=np.array(unit.k),
            **{k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in arrays.items()},
        )


# --------------------------------------------------------------------------- the sweep


def expected_rows(unit: Unit, cfg: AttackConfig, model=None) -> int:
    """Rows of a complete unit (an ensemble's members as ``model``'s top k layers admit them)."""
    version = ensemble_version(cfg.optimizer, cfg.objective)
    m = 1 if version is None else len(ensemble_plan(model, unit.k, version, cfg.steps))
    return (unit.stop - unit.start) * ((m + 1) * cfg.restarts + cfg.floor_draws + cfg.noise_draws + cfg.unrelated_draws)


def file_names(shard: tuple[int, int]) -> tuple[str, str]:
    """(records file, run file) of a shard."""
    i, n = shard
    return (
        ("records.jsonl", "run.json") if n == 1 else (f"records-shard-{i}-of-{n}.jsonl", f"run-shard-{i}-of-{n}.json")
    )


@dataclass
class _Sweep:
    """One call of :func:`run_sweep`: the plan, this process's share, and where it writes."""

    models: list[Labelled]
    cfg: AttackConfig
    shard: tuple[int, int]
    dist: DistContext
    units: list[Unit]  # the whole sweep
    out: RunDir | None
    defence: DefenceRun | None = None

    @property
    def shard_units(self) -> list[Unit]:
        i, n = self.shard
        return [u for j, u in enumerate(self.units) if j % n == i - 1]

    @property
    def mine(self) -> list[Unit]:
        return self.shard_units[self.dist.rank :: self.dist.world_size]

    @property
    def names(self) -> tuple[str, str]:
        return file_names(self.shard)

    def settings(self) -> dict[str, Any]:
        settings = {
            "attack": to_dict(self.cfg),
            "models": [{"label": m.label, "sha256": m.sha256} for m in self.models],
            "shard": f"{self.shard[0]}/{self.shard[1]}",
            "units": [u.id for u in self.units],
            **source_settings(self.models),
        }
        if self.defence is not None:  # a run of another defence (or none) in the same directory is refused
            settings["defence"] = self.defence.record_fields()
        return settings

    def expected(self) -> dict[str, int]:
        return {u.id: expected_rows(u, self.cfg, self.models[u.model].model) for u in self.shard_units}

    def done_rows(self) -> list[dict[str, Any]]:
        """Rows of the units already finished (earlier runs, killed processes' parts merged first)."""
        if self.out is None:
            return []
        if self.dist.is_main:
            io.make_dirs(self.out.path)
        self.dist.barrier()
        self.out.check_resumable(self.names[1], self.settings())
        if self.dist.is_main:
            self.out.merge(self.names[0], self.expected(), read_attack_records)
        self.dist.barrier()
        return read_attack_records(self.out / self.names[0])

    def write_path(self) -> Path | None:
        if self.out is None:
            return None
        return self.out.part(self.names[0], self.dist.rank) if self.dist.enabled else self.out / self.names[0]


def ensemble_info(cfg: AttackConfig, models: list[Labelled]) -> dict[str, Any] | None:
    """run.json's record of an ensemble run: its version, and per model and k the members with their steps, the
    passes per point (members' steps x restarts; Square's are forward passes only) and, where a member solves
    (auto-v2's context member), its time limit per point; the solver's seconds per point are added as the rows come
    (:func:`solver_seconds`). None for a single attack."""
    version = ensemble_version(cfg.optimizer, cfg.objective)
    if version is None:
        return None
    plans = {}
    for lm in models:
        for k in parse_layers(cfg.layers, lm.model.num_layers, lm.label):
            plan = ensemble_plan(lm.model, k, version, cfg.steps)
            plans[f"{lm.label}|k={k}"] = {
                "members": {m.name: n for m, n in plan},
                "passes_per_point": sum(n for _, n in plan) * cfg.restarts,
            }
            if any(m.optimizer == "context" for m, _ in plan):
                plans[f"{lm.label}|k={k}"].update(
                    solver_time_limit_s=context_member.CONTEXT_TIME_LIMIT, solver_s_per_point=None
                )
    return {"version": version, "plans": plans}


def solver_seconds(info: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Fill run.json's ``solver_s_per_point`` of each ensemble plan with a solver: the seconds its rows spent outside
    the model passes (``solver_s``), summed over restarts, averaged over the points and budgets done so far."""
    plans = (info.get("ensemble") or {}).get("plans", {})
    total: dict[str, float] = {}
    points: dict[str, set] = {}
    for r in rows:
        key = f"{r['model']}|k={r['k']}"
        if r.get("kind") == "attack" and key in plans and "solver_s_per_point" in plans[key]:
            total[key] = total.get(key, 0.0) + (r.get("solver_s") or 0.0)
            points.setdefault(key, set()).add((r["point"], r["eps"]))
    for key, seconds in total.items():
        plans[key]["solver_s_per_point"] = seconds / len(points[key])


def _dither(lm: Labelled) -> str | None:
    """How the attack met a dithered context (the authors' kuzina-ladder DCT-VAE); None for other models."""
    mc = getattr(lm.config, "model", None)
    if mc is None or getattr(mc, "arch", None) != "kuzina-ladder" or mc.context == "none":
        return None
    return f"on, averaged over {mc.context_eot_draws} fixed draws (EOT)" if mc.context_dither else "off"


def _run_info(sw: _Sweep, dev: torch.device, command: list[str] | None, done: int, points: dict) -> dict[str, Any]:
    """run.json: command, settings, provenance, progress, and per model its config and layer diagnostics."""
    info = {
        "command": command or sys.argv,
        "settings": sw.settings(),
        **provenance(),
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "processes": sw.dist.world_size,
        "status": "running",
        "units_total": len(sw.shard_units),
        "units_done": done,
        "wall_time_s": 0.0,
        "ensemble": ensemble_info(sw.cfg, sw.models),
        "context_dither": {m.label: _dither(m) for m in sw.models},
        "defence": None
        if sw.defence is None
        else sw.defence.info(
            [(m.label, m.model) for m in sw.models],
            {m.label: parse_layers(sw.cfg.layers, m.model.num_layers, m.label) for m in sw.models},
        ),
        "models": [
            {
                "label": m.label,
                "path": m.path,
                "sha256": m.sha256,
                "sha256_of": m.loaded.sha256_of,
                "arch": m.model.arch,
                "config": to_dict(m.config),
                "num_layers": m.model.num_layers,
                **m.source_info(),
            }
            for m in sw.models
        ],
    }
    if sw.dist.is_main:
        for mi, lm in enumerate(sw.models):
            info["models"][mi]["layer_diagnostics"] = layer_diagnostics(
                lm.model, points[mi].images, 100, dev, sw.cfg.seed
            )
            info["models"][mi]["layer_diagnostics_images"] = diagnostic_images_info(lm, sw.cfg, len(points[mi].images))
    if sw.out is not None and sw.dist.is_main:
        prev = sw.out.read_json(sw.names[1])
        info["wall_time_s"] = (prev.get("wall_time_s") or 0.0) if prev else 0.0
        sw.out.write_json(sw.names[1], info)
    return info


def _run_units(sw: _Sweep, todo: list[Unit], points: dict, info: dict, quiet: bool) -> list[dict[str, Any]]:
    """Run the units left, appending each unit's rows (and gallery) as it finishes; the new rows."""
    dd, write_path, rows = sw.dist, sw.write_path(), []
    t0 = time.perf_counter() - info["wall_time_s"]
    label = f"attack (rank 0 of {dd.world_size})" if dd.enabled else "attack"
    log = sw.out / LOG_NAME if sw.out is not None and dd.is_main else None
    with make_progress(quiet or not dd.is_main, log) as progress:
        task = progress.add_task(label, total=len(sw.mine), completed=len(sw.mine) - len(todo), info="")
        for unit in todo:
            lm, ts = sw.models[unit.model], time.perf_counter()
            records, gallery = run_unit(lm, unit, points[unit.model], sw.cfg, sw.defence)
            new = [r.to_row() for r in records]
            rows.extend(new)
            if sw.out is not None:
                if gallery is not None:
                    save_gallery(sw.out / "gallery" / f"{safe_name(unit.id)}.npz", gallery, unit, lm.label, sw.out.path)
                sw.out.append(write_path, new)
                if dd.is_main:
                    info.update(units_done=info["units_done"] + 1, wall_time_s=time.perf_counter() - t0)
                    sw.out.write_json(sw.names[1], info)
            rate = (unit.stop - unit.start) * sw.cfg.restarts * sw.cfg.steps / max(time.perf_counter() - ts, 1e-9)
            progress.update(task, advance=1, info=f"{unit.id} | {rate:.0f} attack steps/s")
    info["wall_time_s"] = time.perf_counter() - t0
    return rows


def check_budgets(models: list[Labelled], norm: str, eps: list[float] | tuple[float, ...]) -> None:
    """Refuse a budget that covers the whole box of a model's images (L2: eps at or above sqrt(C x H x W))."""
    for lm in models:
        for e in eps:
            found = eps_problem(norm, e, lm.model.num_pixels)
            if found:
                raise RobustVAEError(f"{lm.label}: {found}")


def run_sweep(
    models: list[Labelled],
    config: AttackConfig,
    out: str | os.PathLike | None = None,
    *,
    device: torch.device,
    shard: tuple[int, int] = (1, 1),
    data_dir: str | None = None,
    quiet: bool = True,
    command: list[str] | None = None,
    dist: DistContext | None = None,
    defence: DefenceRun | None = None,
) -> pd.DataFrame:
    """Run (or resume) a sweep over labelled models and return this shard's records as a DataFrame.

    With ``out`` the records and ``run.json`` are written there; a later call with the
    same settings skips the units already done. Under torchrun (``dist``, by default
    the running command's context) the shard is split over the processes and rank 0
    returns the merged records (the other ranks their own). ``defence``: evaluate the
    models defended (:mod:`robustvae.defences.sweep`); their curves are named with the
    defence's suffix.
    """
    dd = dist or current()
    check_budgets(models, config.norm, config.eps_list)
    if dd.enabled and out is None:
        raise RobustVAEError("an attack under torchrun needs --out: the processes merge their records there")
    if defence is not None:
        for lm in models:  # a model the defence cannot wrap is refused before anything is written
            defence.scorer(lm.model, config.temperature)
        models = [dataclasses.replace(lm, label=defence.label(lm.label)) for lm in models]
    sw = _Sweep(
        models,
        config,
        shard,
        dd,
        plan_units(models, config, device, defence),
        RunDir(out) if out is not None else None,
        defence,
    )
    with sw.out.locked(dd.is_main) if sw.out is not None else contextlib.nullcontext():
        return _sweep_locked(sw, device, data_dir, quiet, command)


def _sweep_locked(
    sw: _Sweep, device: torch.device, data_dir: str | None, quiet: bool, command: list[str] | None
) -> pd.DataFrame:
    """:func:`run_sweep` with the output directory's lock held (rank 0)."""
    models, config, dd = sw.models, sw.cfg, sw.dist
    previous = sw.done_rows()
    finished = {r["unit"] for r in previous}
    mine = {u.id for u in sw.mine}
    rows = [r for r in previous if r["unit"] in mine]
    todo = [u for u in sw.mine if u.id not in finished]
    points = {mi: select_points(lm, config, data_dir) for mi, lm in enumerate(models)}
    info = _run_info(sw, device, command, len(finished), points)
    rows += _run_units(sw, todo, points, info, quiet)
    if sw.out is not None and dd.enabled:
        dd.barrier()  # every process has finished its units
        if dd.is_main:
            rows = sw.out.merge(sw.names[0], sw.expected(), read_attack_records)
    info.update(status="complete", units_done=len(sw.shard_units))
    solver_seconds(info, rows)
    gradient_checks(info, rows)
    if sw.out is not None and dd.is_main:
        sw.out.write_json(sw.names[1], info)
    return pd.DataFrame(rows)
