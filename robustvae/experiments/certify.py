"""The certification sweep: the exact analysis of the quantised context over models x points x eps, as records.

For every model with a quantised context (DCT-VAE's top layer, :mod:`robustvae.certify`)
and every selected point, one work unit computes the point's certified radius, and for
every eps the exact reachable levels (is the point certified?), and, unless
``optimal=False``, the optimal context attack twice: once for the largest change of the
decoded context (whose k = 1 reconstruction is scored with MS-SSIM under the default
protocol rule, exactly as the attack sweep scores it), once for the most levels that can
change jointly. Each unit's rows (:class:`~robustvae.records.CertifyRecord`, one per
eps) are appended to ``records.jsonl`` in one write, so a run started again with the
same settings skips the finished points; ``shard=(i, N)`` runs every N-th unit.

The points are the attack sweep's (:func:`~robustvae.experiments.attack.select_points`
with the same ``points``, ``seed`` and ``split``), and the prior noise of point p is the
attack sweep's too, so the numbers line up with an attack run of the same model.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import Any

import pandas as pd
import torch

from robustvae import io
from robustvae.certify import certified_radius, coefficient_ranges, optimal_context_attack
from robustvae.config import AttackConfig, CertifyConfig, to_dict
from robustvae.errors import RobustVAEError
from robustvae.distributed import SINGLE
from robustvae.experiments.attack import (
    Points,
    Unit,
    _repeat,
    _Sweep,
    _UnitContext,
    check_budgets,
    prior_noise,
    select_points,
)
from robustvae.experiments.models import Labelled, source_settings
from robustvae.experiments.rundir import RunDir, provenance
from robustvae.metrics import ms_ssim
from robustvae.models.context import ContextCodec
from robustvae.progress import LOG_NAME, make_progress
from robustvae.records import CERTIFY_RUN_KIND, CertifyRecord, read_certify_rows
from robustvae.seeding import derive_seed

OUTPUTS = ("records.jsonl", "run.json")  # what --force removes (and its shard variants)


def context_codec(lm: Labelled) -> ContextCodec:
    """The model's quantised context codec, or a one-line error for a model without one."""
    try:
        codec = getattr(lm.model, "codec", None)
    except (AttributeError, IndexError, TypeError):
        codec = None
    if not isinstance(codec, ContextCodec):
        raise RobustVAEError(
            f"{lm.label} ({type(lm.model).__name__}) has no quantised context layer; certify analyses DCT-VAE's "
            f"context: pass a DCT-VAE checkpoint (e.g. trained with --preset dctvae-mnist-tiny)"
        )
    if getattr(lm.model, "dither", False):
        raise RobustVAEError(
            f"{lm.label} quantises its context with a random dither (context_dither); certify analyses the "
            f"deterministic quantiser: load it with --set model.context_dither=false"
        )
    return codec


def plan(models: list[Labelled], cfg: CertifyConfig) -> list[Unit]:
    """One unit per (model, point), in a fixed order."""
    return [Unit(f"{lm.label}|point={p}", mi, 1, p, p + 1) for mi, lm in enumerate(models) for p in range(cfg.points)]


def _ctx(lm: Labelled, unit: Unit, points: Points, cfg: CertifyConfig, eps: float) -> _UnitContext:
    """The attack sweep's unit context at k = 1 under the default rule: its reconstruction is the scoring."""
    acfg = AttackConfig(
        layers="1",
        eps=eps,
        norm=cfg.norm,
        points=cfg.points,
        seed=cfg.seed,
        split=cfg.split,
        temperature=cfg.temperature,
    )
    return _UnitContext(lm, unit, points, acfg, [unit.start])


def _optimal(lm: Labelled, ctx: _UnitContext, x, clean, noise, eps: float, cfg: CertifyConfig) -> dict[str, Any]:
    """The optimal attack's fields of one (point, eps): decoded change, its k = 1 MS-SSIM, and the joint count.

    The solver's verified candidates (its rounds and, with time left, the next assignments in objective order)
    are scored by the real k = 1 MS-SSIM and the lowest is kept; the decoded change, bound and proof stay those
    of the MILP objective."""

    def k1_msssim(xa: torch.Tensor, _b: int) -> torch.Tensor:
        with torch.no_grad():
            n = xa.shape[0]
            return ms_ssim(ctx.reconstruct(xa, _repeat(noise, n)), clean.expand(n, *clean.shape[1:]))

    best = optimal_context_attack(
        lm.model, x, eps, cfg.norm, "decoded_l2", cfg.time_limit, cfg.interior, score=k1_msssim
    )
    joint = optimal_context_attack(lm.model, x, eps, cfg.norm, "count", cfg.time_limit, cfg.interior)
    with torch.no_grad():
        rec = ctx.reconstruct(best.x_adv, noise)
        score = float(ms_ssim(rec, clean)[0])
    value, bound = float(best.value[0]), float(best.bound[0])
    d = best.delta[0].flatten()
    return dict(
        max_joint_changes=max(int(joint.changed[0]), int(best.changed[0])),  # both attacks are verified
        max_joint_bound=float(joint.bound[0]),
        max_joint_proven=bool(joint.proven_optimal[0]),
        optimal_decoded_l2=value,
        optimal_bound=bound if math.isfinite(bound) else None,
        optimal_proven=bool(best.proven_optimal[0]),
        optimal_changed=int(best.changed[0]),
        msssim_k1=score,
        k1_identical=bool(torch.equal(rec, clean)),
        delta_linf=float(d.abs().max()),
        delta_l2=float(d.norm()),
        solve_time_s=float(best.solve_time[0] + joint.solve_time[0]),
        status=str(best.status[0]),
        gap=(bound - value) / bound if math.isfinite(bound) and bound > 0 else 0.0,
    )


def run_unit(lm: Labelled, unit: Unit, points: Points, cfg: CertifyConfig) -> list[CertifyRecord]:
    """Radius, certificate and (optionally) the optimal attack of one point at every eps."""
    dev = next(lm.model.parameters()).device
    codec, p = context_codec(lm), unit.start
    x = points.images[p : p + 1].to(dev)
    radius = float(certified_radius(lm.model, x, cfg.norm)[0])
    noise = prior_noise(lm.model, [derive_seed(cfg.seed, "prior", p)])
    rows = []
    for eps in cfg.eps:
        ctx = _ctx(lm, unit, points, cfg, eps)
        rng = coefficient_ranges(lm.model, x, eps, cfg.norm)
        extra = {}
        if cfg.optimal:
            with torch.no_grad():
                clean = ctx.reconstruct(x, noise)
            extra = _optimal(lm, ctx, x, clean, noise, eps, cfg)
        rows.append(
            CertifyRecord(
                unit=unit.id,
                model=lm.label,
                checkpoint_sha256=lm.sha256,
                dataset=points.dataset,
                context=type(codec).__name__,
                norm=cfg.norm,
                eps=eps,
                seed=cfg.seed,
                temperature=cfg.temperature,
                point=p,
                test_index=int(points.indices[p]),
                label=int(points.labels[p]),
                coefficients=int(rng.certified.numel()),
                certified=bool(rng.point_certified[0]),
                changeable=int((~rng.certified).sum()),
                reachable_levels=int((rng.reach_hi - rng.reach_lo + 1).sum()),
                radius=radius if math.isfinite(radius) else None,
                **extra,
            )
        )
    return rows


class _Run(_Sweep):
    """One call of :func:`run_certify`: the attack sweep's plan and shard bookkeeping, with certify's settings."""

    def settings(self) -> dict[str, Any]:
        return {
            "certify": to_dict(self.cfg),
            "models": [{"label": m.label, "sha256": m.sha256} for m in self.models],
            "shard": f"{self.shard[0]}/{self.shard[1]}",
            "points": self.cfg.points,
            **source_settings(self.models),
        }

    def expected(self) -> dict[str, int]:
        return {u.id: len(self.cfg.eps) for u in self.shard_units}

    def done_rows(self, force: bool = False) -> list[dict[str, Any]]:  # type: ignore[override]
        """Rows of the units already finished (a torn or partial unit is dropped and runs again)."""
        if self.out is None:
            return []
        if self.out.path.exists() and not self.out.path.is_dir():
            raise RobustVAEError(f"--out {self.out.path} is a file; pass a directory")
        info = self.out.read_json(self.names[1]) if self.out.path.is_dir() else None
        if info is not None and info.get("kind") != CERTIFY_RUN_KIND:  # never clear or append to another experiment
            raise RobustVAEError(f"{self.out.path} holds a {info.get('kind', 'attack')} run; use another --out")
        if force:
            self.out.clear(self.names)
        io.make_dirs(self.out.path)
        self.out.check_resumable(self.names[1], self.settings())
        return self.out.merge(self.names[0], self.expected(), read_certify_rows)


def _info(run: _Run, dev: torch.device, command: list[str] | None, done: int) -> dict[str, Any]:
    info = {
        "kind": CERTIFY_RUN_KIND,
        "command": command or sys.argv,
        "settings": run.settings(),
        **provenance(),
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "status": "running",
        "units_total": len(run.mine),
        "units_done": done,
        "wall_time_s": 0.0,
        "models": [
            {
                "label": m.label,
                "path": m.path,
                "sha256": m.sha256,
                "sha256_of": m.loaded.sha256_of,
                "arch": m.model.arch,
                "config": to_dict(m.config),
                "context": type(context_codec(m)).__name__,
                **m.source_info(),
            }
            for m in run.models
        ],
    }
    if run.out is not None:
        prev = run.out.read_json(run.names[1])
        info["wall_time_s"] = (prev.get("wall_time_s") or 0.0) if prev else 0.0
        run.out.write_json(run.names[1], info)
    return info


def run_certify(
    models: list[Labelled],
    cfg: CertifyConfig,
    out: str | os.PathLike | None = None,
    *,
    device: torch.device,
    shard: tuple[int, int] = (1, 1),
    data_dir: str | None = None,
    force: bool = False,
    quiet: bool = True,
    command: list[str] | None = None,
) -> pd.DataFrame:
    """Run (or resume) a certification sweep and return this shard's records as a DataFrame.

    With ``out`` the records and ``run.json`` are written there; a later call with the
    same settings skips the points already done (``force`` starts over instead).
    """
    for lm in models:
        context_codec(lm)
    check_budgets(models, cfg.norm, cfg.eps)
    run = _Run(models, cfg, shard, SINGLE, plan(models, cfg), RunDir(out) if out is not None else None)
    with run.out.locked() if run.out is not None else contextlib.nullcontext():
        return _certify_locked(run, cfg, device, data_dir, force, quiet, command)


def _certify_locked(
    run: _Run,
    cfg: CertifyConfig,
    device: torch.device,
    data_dir: str | None,
    force: bool,
    quiet: bool,
    command: list[str] | None,
) -> pd.DataFrame:
    """:func:`run_certify` with the output directory's lock held."""
    models = run.models
    rows = run.done_rows(force)
    finished = {r["unit"] for r in rows}
    todo = [u for u in run.mine if u.id not in finished]
    points = {mi: select_points(lm, cfg, data_dir) for mi, lm in enumerate(models)}
    info = _info(run, device, command, len(finished))
    t0 = time.perf_counter() - info["wall_time_s"]
    with make_progress(quiet, run.out / LOG_NAME if run.out is not None else None) as progress:
        task = progress.add_task("certify", total=len(run.mine), completed=len(run.mine) - len(todo), info="")
        for unit in todo:
            new = [r.to_row() for r in run_unit(models[unit.model], unit, points[unit.model], cfg)]
            rows.extend(new)
            if run.out is not None:
                run.out.append(run.out / run.names[0], new)
                info.update(units_done=info["units_done"] + 1, wall_time_s=time.perf_counter() - t0)
                run.out.write_json(run.names[1], info)
            progress.update(task, advance=1, info=f"{unit.id} | radius {new[0].get('radius') or math.inf:.3g}")
    info.update(status="complete", units_done=len(run.mine), wall_time_s=time.perf_counter() - t0)
    if run.out is not None:
        run.out.write_json(run.names[1], info)
    return pd.DataFrame(rows)
