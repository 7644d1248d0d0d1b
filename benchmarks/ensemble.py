"""The old default attack against the ensemble, side by side in one run: worst-case MS-SSIM per k and passes used.

    python -m benchmarks.ensemble RUN [RUN ...] [--layers 1,2,4,8] [--points 20] [--restarts 3] [--steps 50]
                                  [--eps 0.1] [--data mnist-offline] [--out ensemble.json]

For each trained model (run directories or checkpoints: vdvae-mnist and dctvae-mnist
trained on mnist-offline), runs the sweep twice with the same points, restarts, steps,
eps and norm: the old default (PGD on skl) and ``--attack auto`` (the ensemble, whose
members share the steps), and prints per model and k the mean over points of each
point's worst case (over restarts, and members), the lowest point, and the model passes
per point each used (forward and backward; Square's proposals are forward passes only).
Also registered in ``python -m benchmarks --only ensemble``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import robustvae
from robustvae.attacks import ensemble_plan, ensemble_version
from robustvae.config import AttackConfig
from robustvae.reporting.aggregate import per_point

ATTACKS = ("pgd", "auto")  # the old default, then the ensemble


def passes_per_point(model, k: int, cfg: AttackConfig) -> dict[str, int]:
    """Forward and backward passes one point costs under ``cfg`` (all restarts; the scoring pass of each
    restart's last iterate included), from the attacks' definitions."""
    version = ensemble_version(cfg.optimizer)
    plan = (
        [(cfg.optimizer, cfg.steps)]
        if version is None
        else [(m.optimizer, n) for m, n in ensemble_plan(model, k, version, cfg.steps)]
    )
    forward = sum(n + 1 for _, n in plan) * cfg.restarts
    backward = sum(0 if opt == "square" else n for opt, n in plan) * cfg.restarts
    return {"forward": forward, "backward": backward}


def measure_ensemble(models: list, base: AttackConfig, device: str = "cpu", data: str | None = None) -> list[dict]:
    """One row per (attack, model, k): mean and lowest of the points' worst cases, passes per point, seconds."""
    rows = []
    for name in ATTACKS:
        cfg = AttackConfig(**{**vars(base), "optimizer": name, "objective": "skl"})
        t = time.perf_counter()
        res = robustvae.attack(models, cfg, device=device, data=data)
        seconds = time.perf_counter() - t
        pp = per_point(res.records)
        for (model, k), g in pp.groupby(["model", "k"]):
            rows.append(
                {
                    "attack": name,
                    "model": model,
                    "k": int(k),
                    "worst_mean": float(g.worst.mean()),
                    "worst_min": float(g.worst.min()),
                    "points": int(len(g)),
                    "seconds": seconds,
                }
            )
    return rows


def table(rows: list[dict], passes: dict[tuple[str, str, int], dict[str, int]]) -> str:
    """Markdown: per model and k, the two attacks side by side."""
    by = {(r["model"], r["k"], r["attack"]): r for r in rows}
    lines = [
        "| model | k | "
        + " | ".join(f"{a}: mean of worst | {a}: lowest | {a}: passes (fwd/bwd)" for a in ATTACKS)
        + " |",
        "|" + " --- |" * (2 + 3 * len(ATTACKS)),
    ]
    for model, k in sorted({(r["model"], r["k"]) for r in rows}):
        cells = [model, str(k)]
        for a in ATTACKS:
            r, p = by.get((model, k, a)), passes.get((a, model, k), {})
            cells += (
                [f"{r['worst_mean']:.4f}", f"{r['worst_min']:.4f}", f"{p.get('forward')}/{p.get('backward')}"]
                if r
                else ["-", "-", "-"]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(models: list, base: AttackConfig, device: str = "cpu", data: str | None = None) -> dict:
    """Measure both attacks; the rows, the passes per point and the table."""
    from robustvae.config import parse_layers
    from robustvae.experiments.models import load_models
    from robustvae.device import resolve_device

    rows = measure_ensemble(models, base, device, data)
    passes = {}
    for lm in load_models(models, resolve_device(device), data):
        for k in parse_layers(base.layers, lm.model.num_layers, lm.label):
            for a in ATTACKS:
                passes[(a, lm.label, k)] = passes_per_point(lm.model, k, AttackConfig(**{**vars(base), "optimizer": a}))
    return {
        "settings": vars(base),
        "rows": rows,
        "table": table(rows, passes),
        "passes": [{"attack": a, "model": m, "k": k, **p} for (a, m, k), p in passes.items()],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories or checkpoints of trained models")
    ap.add_argument("--layers", default="1,2,4,8")
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--norm", default="linf")
    ap.add_argument("--data", default=None, help="dataset of the points (default: each run's own)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    base = AttackConfig(
        layers=args.layers,
        points=args.points,
        restarts=args.restarts,
        steps=args.steps,
        eps=args.eps,
        norm=args.norm,
        floor_draws=0,
        noise_draws=0,
        unrelated_draws=0,
        gallery_points=0,
    )
    res = run(list(args.runs), base, args.device, args.data)
    print(
        f"worst-case MS-SSIM per point (over restarts, and the ensemble's members), {args.norm} eps {args.eps}, "
        f"{args.points} points x {args.restarts} restarts x {args.steps} steps"
    )
    print(res["table"])
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
