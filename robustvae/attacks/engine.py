"""The attack engine: sweeps of latent attacks over models x k x points x restarts, as records.

Work is cut into units with stable ids (model, k, a slice of points). A unit attacks
all its points x restarts in one batch (sized to ``max_batch_mib``), scores the
attacked reconstructions with MS-SSIM, adds the baselines, and appends its rows to
``records.jsonl`` in one write. A run started again with the same settings skips the
finished units; ``shard=(i, N)`` runs every N-th unit so processes or machines can
share a sweep (their record files merge).

Under torchrun each process takes every W-th unit of the shard and appends to its own
part file (``.parts/`` in the output directory); when all are done, rank 0 merges the
parts into the shard's records file in unit order, so the result is the file a single
process would have written. Parts left by a killed run are merged at the next start.

Protocol (GUIDE section 5): the reconstruction with k layers takes the posterior mean
for the top k layers and prior samples at ``temperature`` for the rest, with the same
prior noise for the clean and the attacked image. Rows:

* ``kind="attack"``: one per (model, k, point, restart);
* ``kind="floor"``: clean vs clean under different prior noise (how much MS-SSIM moves
  without any attack);
* ``kind="noise"``: a uniformly random perturbation of the same budget (an attack
  must beat it).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from robustvae.attacks.base import random_start
from robustvae.attacks.objectives import LatentObjective
from robustvae.attacks.pgd import LatentPGD
from robustvae.attacks.pgdl2 import LatentPGDL2
from robustvae.attacks.sgd import LatentSGD
from robustvae.config import AttackConfig, parse_layers, to_dict
from robustvae.data import eval_images, load_dataset, stratified_order
from robustvae.distributed import DistContext, current
from robustvae.errors import RobustVAEError
from robustvae.evaluation import layer_diagnostics
from robustvae.metrics import ms_ssim, psnr
from robustvae.progress import make_progress
from robustvae.results import append_records, git_commit, read_records, safe_name, versions, write_json, write_records
from robustvae.seeding import derive_seed


@dataclass
class LoadedModel:
    label: str
    path: str
    sha256: str
    model: nn.Module


@dataclass(frozen=True)
class Unit:
    id: str
    model: int  # index into the models list
    k: int
    start: int  # slice of the attacked points
    stop: int


def make_attack(model: nn.Module, k: int, cfg: AttackConfig):
    """The attack object a config asks for (PGD L-inf / L2, or the authors' SGD)."""
    common = dict(k=k, eps=cfg.eps, steps=cfg.steps, objective=cfg.objective, straight_through=cfg.straight_through)
    if cfg.optimizer == "sgd":
        return LatentSGD(model, norm=cfg.norm, lr=cfg.step_size or 1.0, **common)
    cls = LatentPGD if cfg.norm == "linf" else LatentPGDL2
    return cls(model, step_size=cfg.step_size, **common)


def load_models(specs: list[str | nn.Module], device: torch.device) -> list[LoadedModel]:
    """Zoo names, checkpoint files or run directories (or ready models) -> labelled models."""
    from robustvae import zoo

    out: list[LoadedModel] = []
    seen: dict[str, int] = {}
    for spec in specs:
        if isinstance(spec, nn.Module):
            m = spec.to(device).eval()
            path, sha = getattr(m, "checkpoint_path", "<in memory>"), getattr(m, "checkpoint_sha256", "")
        else:
            m = zoo.load(spec, device=device)
            path, sha = m.checkpoint_path, m.checkpoint_sha256
        name = m.config.name if hasattr(m, "config") else type(m).__name__
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        out.append(LoadedModel(label, str(path), sha, m))
    return out


def bytes_per_sample(model: nn.Module, k: int, cfg: AttackConfig, device: torch.device) -> int:
    """Memory one attacked image needs for a forward + backward pass, measured from autograd's saved tensors."""
    c, s = model.cfg.image_channels, model.cfg.image_size
    objective = LatentObjective(model, k, "skl" if cfg.objective == "supervised" else cfg.objective, cfg.straight_through)
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
            objective(xr, ref).sum()
        sizes.append(total)
    return max(sizes[1] - sizes[0], 1)


def plan_units(models: list[LoadedModel], cfg: AttackConfig, device: torch.device) -> list[Unit]:
    """Every unit of the sweep, in a fixed order."""
    units = []
    for mi, lm in enumerate(models):
        ks = parse_layers(cfg.layers, lm.model.num_layers, lm.label)
        for k in ks:
            per = bytes_per_sample(lm.model, k, cfg, device)
            budget = cfg.max_batch_mib * 2**20
            n_points = max(1, min(cfg.points, budget // (3 * per * cfg.restarts)))
            for a in range(0, cfg.points, n_points):
                b = min(a + n_points, cfg.points)
                units.append(Unit(f"{lm.label}|k={k}|points={a}-{b - 1}", mi, k, a, b))
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


DIAGNOSTIC_IMAGES = 500


def _points(lm: LoadedModel, cfg: AttackConfig, data_dir: str | None):
    """A label-stratified, seeded selection from the split: the first ``points`` are attacked,
    and up to ``DIAGNOSTIC_IMAGES`` feed the per-layer KL / active-unit diagnostics."""
    import dataclasses

    mcfg = lm.model.config
    dcfg = dataclasses.replace(mcfg.data, data_dir=data_dir) if data_dir else mcfg.data
    ds = load_dataset(dcfg)
    split = ds.split(cfg.split)
    if cfg.points > len(split):
        raise RobustVAEError(f"--points {cfg.points} is more than the {len(split)} images of the {cfg.split} split")
    order = stratified_order(split.labels, cfg.seed)[: max(cfg.points, min(DIAGNOSTIC_IMAGES, len(split)))]
    images = eval_images(ds, cfg.split, mcfg.model.binary)[order]
    return ds.name, images, split.labels[order], order


def _prior_noise(model: nn.Module, seeds: list[int]) -> list[torch.Tensor]:
    """Per-layer prior noise, one independent seeded draw per image."""
    draws = [model.make_noise(1, torch.Generator().manual_seed(s)) for s in seeds]
    return [torch.cat(parts) for parts in zip(*draws)]


def _repeat(noise: list[torch.Tensor], r: int) -> list[torch.Tensor]:
    return [t.repeat_interleave(r, 0) for t in noise]


def _norms(delta: torch.Tensor) -> tuple[list[float], list[float]]:
    flat = delta.flatten(1).double()
    return flat.abs().max(1).values.tolist(), flat.norm(dim=1).tolist()


def run_unit(
    lm: LoadedModel, unit: Unit, images, labels, indices, dataset: str, cfg: AttackConfig
) -> tuple[list[dict], dict[str, torch.Tensor] | None]:
    """Attack one unit's points x restarts in one batch.

    Returns its rows (attack, floor, noise) and the gallery arrays of its first points
    (None when none of its points is among ``cfg.gallery_points``).
    """
    model, k, R = lm.model, unit.k, cfg.restarts
    dev = next(model.parameters()).device
    pts = list(range(unit.start, unit.stop))
    x = images[unit.start : unit.stop].to(dev)
    n = x.shape[0]
    noise = _prior_noise(model, [derive_seed(cfg.seed, "prior", p) for p in pts])
    base = {"unit": unit.id, "model": lm.label, "checkpoint_sha256": lm.sha256, "dataset": dataset, "layers": k,
            "objective": cfg.objective, "optimizer": cfg.optimizer, "norm": cfg.norm, "eps": cfg.eps,
            "steps": cfg.steps, "seed": cfg.seed, "temperature": cfg.temperature}

    def point_fields(i: int) -> dict:
        return {"point": pts[i], "test_index": int(indices[pts[i]]), "label": int(labels[pts[i]])}

    with torch.no_grad():
        clean = model.reconstruct(x, k, cfg.temperature, noise)
    rows: list[dict] = []

    # the attack: every point x restart in one batch, each restart with its own seeded start
    X = x.repeat_interleave(R, 0)
    seeds = [derive_seed(cfg.seed, "start", k, p, r) for p in pts for r in range(R)]
    attack = make_attack(model, k, cfg)
    target = None
    if cfg.objective == "supervised":
        # pull towards the next attacked point (a fixed, different image)
        tidx = [(p + 1) % cfg.points for p in pts]
        target = images[tidx].to(dev).repeat_interleave(R, 0)
    adv = attack(X, target=target, seeds=seeds)
    with torch.no_grad():
        rec = model.reconstruct(adv, k, cfg.temperature, _repeat(noise, R))
        score = ms_ssim(rec, clean.repeat_interleave(R, 0))
        score_in = ms_ssim(adv, X)
        ps = psnr(rec, clean.repeat_interleave(R, 0))
        scorer = LatentObjective(model, k, "skl")
        skl = scorer.per_layer(adv, scorer.reference(X))
    linf, l2 = _norms(adv - X)
    gallery = [i for i in range(n) if pts[i] < cfg.gallery_points]
    rows_gallery = None
    if gallery:
        worst = [i * R + int(score[i * R : (i + 1) * R].nan_to_num(2.0).argmin()) for i in gallery]
        rows_gallery = {
            "points": torch.tensor([pts[i] for i in gallery]), "restarts": torch.tensor([j % R for j in worst]),
            "x": X[worst].cpu(), "x_adv": adv[worst].cpu(), "rec": clean[gallery].cpu(), "rec_adv": rec[worst].cpu(),
            "msssim": score[worst].cpu(),
        }
    # one device-to-host copy per column, not one wait per value
    rec_finite = torch.isfinite(rec).flatten(1).all(1).tolist()
    bad, score_l, score_in_l, ps_l, skl_l, loss_l = (
        t.tolist() for t in (attack.nonfinite, score, score_in, ps, skl, attack.best_loss))
    for j in range(n * R):
        i, r = divmod(j, R)
        nonfinite = bool(bad[j]) or not math.isfinite(score_l[j]) or not rec_finite[j]
        rows.append({**base, "kind": "attack", **point_fields(i), "restart": r, "msssim": score_l[j],
                     "msssim_input": score_in_l[j], "psnr": ps_l[j], "skl": skl_l[j],
                     "delta_linf": linf[j], "delta_l2": l2[j], "final_loss": loss_l[j],
                     "nonfinite": nonfinite, **({"target_point": (pts[i] + 1) % cfg.points} if target is not None else {})})

    # floor: the same image under different prior noise
    with torch.no_grad():
        for d in range(cfg.floor_draws):
            other = _prior_noise(model, [derive_seed(cfg.seed, "floor", p, d) for p in pts])
            s = ms_ssim(model.reconstruct(x, k, cfg.temperature, other), clean).tolist()
            for i in range(n):
                rows.append({**base, "kind": "floor", **point_fields(i), "restart": d, "msssim": s[i],
                             "msssim_input": 1.0, "delta_linf": 0.0, "delta_l2": 0.0,
                             "nonfinite": not math.isfinite(s[i])})
        # noise: a random perturbation of the same budget
        ref_x = scorer.reference(x) if cfg.noise_draws else None
        for d in range(cfg.noise_draws):
            xn = x + random_start(x, cfg.eps, cfg.norm, [derive_seed(cfg.seed, "noise", p, d) for p in pts])
            rec_n = model.reconstruct(xn, k, cfg.temperature, noise)
            s = ms_ssim(rec_n, clean).tolist()
            s_in = ms_ssim(xn, x).tolist()
            kl_n = scorer.per_layer(xn, ref_x).tolist()
            nl, n2 = _norms(xn - x)
            for i in range(n):
                rows.append({**base, "kind": "noise", **point_fields(i), "restart": d, "msssim": s[i],
                             "msssim_input": s_in[i], "skl": kl_n[i], "delta_linf": nl[i],
                             "delta_l2": n2[i], "nonfinite": not math.isfinite(s[i])})
    return rows, rows_gallery


def save_gallery(path: Path, arrays: dict[str, torch.Tensor], unit: Unit) -> None:
    """Worst-restart examples of a unit's first points (x, x + delta, both reconstructions) as a .npz.

    Read with ``numpy.load(path)`` (no pickles): arrays ``points``, ``restarts``, ``x``,
    ``x_adv``, ``rec``, ``rec_adv``, ``msssim`` and the strings ``unit`` / ``model`` / ``layers``.
    """
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, unit=np.array(unit.id), model=np.array(unit.id.split("|")[0]), layers=np.array(unit.k),
                        **{k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in arrays.items()})
    os.replace(tmp, path)


def _expected_rows(unit: Unit, cfg: AttackConfig) -> int:
    return (unit.stop - unit.start) * (cfg.restarts + cfg.floor_draws + cfg.noise_draws)


def _file_names(shard: tuple[int, int]) -> tuple[str, str]:
    i, n = shard
    return ("records.jsonl", "run.json") if n == 1 else (f"records-shard-{i}-of-{n}.jsonl", f"run-shard-{i}-of-{n}.json")


def _part_path(out_dir: Path, rec_name: str, rank: int) -> Path:
    return out_dir / ".parts" / f"{rec_name[: -len('.jsonl')]}.rank-{rank}.jsonl"


def merge_records(out_dir: Path, rec_name: str, units: list[Unit], cfg: AttackConfig) -> list[dict]:
    """Fold the part files of ``rec_name`` into it: complete units only, in ``units`` order.

    A unit cut short by a crash (fewer rows than expected) is dropped and runs again; a
    unit found complete in several files is kept once. The records file is replaced
    atomically before the parts are deleted, so a crash in between loses nothing.
    """
    parts = sorted((out_dir / ".parts").glob(f"{rec_name[: -len('.jsonl')]}.rank-*.jsonl"))
    expected = {u.id: _expected_rows(u, cfg) for u in units}
    complete: dict[str, list[dict]] = {}
    old = read_records(out_dir / rec_name, repair=True)  # a torn last line is cut before anything is appended
    for rows in [old] + [read_records(p) for p in parts]:
        grouped: dict[str, list[dict]] = {}
        for r in rows:
            grouped.setdefault(r["unit"], []).append(r)
        for uid, rs in grouped.items():
            if uid not in complete and len(rs) == expected.get(uid):
                complete[uid] = rs
    merged = [r for u in units if u.id in complete for r in complete[u.id]]
    if parts or merged != old:
        write_records(out_dir / rec_name, merged)
    for p in parts:
        p.unlink()
    if parts and not any((out_dir / ".parts").iterdir()):
        (out_dir / ".parts").rmdir()
    return merged


def run_attack(
    models: list[str | nn.Module],
    config: AttackConfig | None = None,
    out: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "auto",
    shard: tuple[int, int] = (1, 1),
    data_dir: str | None = None,
    quiet: bool = True,
    command: list[str] | None = None,
    dist: DistContext | None = None,
) -> pd.DataFrame:
    """Run (or resume) a sweep and return all of this shard's records as a DataFrame.

    With ``out`` the records and ``run.json`` are written there; a later call with the
    same settings skips the units already done. Under torchrun (``dist``, by default
    the running command's context) the shard is split over the processes and rank 0
    returns the merged records (the other ranks their own).
    """
    from robustvae.device import resolve_device

    cfg = config or AttackConfig()
    dd = dist or current()
    dev = resolve_device(device)
    if dd.enabled and out is None:
        raise RobustVAEError("an attack under torchrun needs --out: the processes merge their records there")
    if not models:
        raise RobustVAEError("no model given: name a zoo checkpoint, a checkpoint file or a run directory")
    loaded = load_models(list(models), dev)
    units = plan_units(loaded, cfg, dev)
    i, n = shard
    shard_units = [u for j, u in enumerate(units) if j % n == i - 1]
    mine = shard_units[dd.rank :: dd.world_size]
    settings = {"attack": to_dict(cfg), "models": [{"label": m.label, "sha256": m.sha256} for m in loaded],
                "shard": f"{i}/{n}", "units": [u.id for u in units]}
    rec_name, run_name = _file_names(shard)
    rows: list[dict] = []
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        if dd.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        dd.barrier()
        run_path = out_dir / run_name
        if run_path.exists():
            try:
                old = json.loads(run_path.read_text())["settings"]
            except (ValueError, KeyError):
                raise RobustVAEError(f"{run_path} is unreadable; move it away or use another --out") from None
            if old != json.loads(json.dumps(settings)):
                diff = _first_difference(old, json.loads(json.dumps(settings)))
                raise RobustVAEError(
                    f"{out_dir} holds a run with other settings ({diff}); use another --out or the same settings"
                )
        if dd.is_main:  # complete units of earlier runs (and their killed processes' parts), in order
            merge_records(out_dir, rec_name, shard_units, cfg)
        dd.barrier()
        rows = read_records(out_dir / rec_name)
    finished = {r["unit"] for r in rows}
    rows = [r for r in rows if r["unit"] in {u.id for u in mine}]
    done = {u.id for u in mine if u.id in finished}
    todo = [u for u in mine if u.id not in done]
    write_path = None
    if out_dir is not None:
        write_path = _part_path(out_dir, rec_name, dd.rank) if dd.enabled else out_dir / rec_name
        write_path.parent.mkdir(exist_ok=True)

    info = {"command": command or sys.argv, "settings": settings, "versions": versions(), "git_commit": git_commit(),
            "device": str(dev), "torch_threads": torch.get_num_threads(), "processes": dd.world_size,
            "status": "running", "units_total": len(shard_units), "units_done": len(finished), "wall_time_s": 0.0,
            "models": [{"label": m.label, "path": m.path, "sha256": m.sha256, "config": to_dict(m.model.config),
                        "num_layers": m.model.num_layers} for m in loaded]}
    data = {}
    for mi, lm in enumerate(loaded):
        data[mi] = _points(lm, cfg, data_dir)
    for mi, lm in enumerate(loaded):
        _, images, _, _ = data[mi]
        if dd.is_main:
            info["models"][mi]["layer_diagnostics"] = layer_diagnostics(lm.model, images, 100, dev, cfg.seed)
    if out_dir is not None and dd.is_main:
        prev = out_dir / run_name
        if prev.exists():
            info["wall_time_s"] = json.loads(prev.read_text()).get("wall_time_s", 0.0)
        write_json(out_dir / run_name, info)
    t0 = time.perf_counter() - info["wall_time_s"]
    label = f"attack (rank 0 of {dd.world_size})" if dd.enabled else "attack"
    with make_progress(quiet or not dd.is_main) as progress:
        task = progress.add_task(label, total=len(mine), completed=len(done), info="")
        for unit in todo:
            lm = loaded[unit.model]
            dataset, images, labels, indices = data[unit.model]
            ts = time.perf_counter()
            new, gallery = run_unit(lm, unit, images, labels, indices, dataset, cfg)
            rows.extend(new)
            if out_dir is not None:
                if gallery is not None:
                    save_gallery(out_dir / "gallery" / f"{safe_name(unit.id)}.npz", gallery, unit)
                append_records(write_path, new)
                if dd.is_main:
                    info.update(units_done=info["units_done"] + 1, wall_time_s=time.perf_counter() - t0)
                    write_json(out_dir / run_name, info)
            rate = (unit.stop - unit.start) * cfg.restarts * cfg.steps / max(time.perf_counter() - ts, 1e-9)
            progress.update(task, advance=1, info=f"{unit.id} | {rate:.0f} attack steps/s")
    if out_dir is not None and dd.enabled:
        dd.barrier()  # every process has finished its units
        if dd.is_main:
            rows = merge_records(out_dir, rec_name, shard_units, cfg)
    info.update(status="complete", wall_time_s=time.perf_counter() - t0, units_done=len(shard_units))
    if out_dir is not None and dd.is_main:
        write_json(out_dir / run_name, info)
    return pd.DataFrame(rows)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
    return f"{path}: {a!r} there, {b!r} now"
