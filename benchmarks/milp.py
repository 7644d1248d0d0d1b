"""The optimal context attack's MILP before and after issue 22's changes, side by side in one run.

    python -m benchmarks.milp [--model RUN] [--points 20] [--eps 0.1] [--time-limits 5 10] [--rev 04b3195]
                              [--out milp.json]

The old :mod:`robustvae.certify.attack` is read from git at ``--rev`` (default: the commit
before the changes) and loaded next to the working tree's, so both solve the same L-inf
problems (objective ``decoded_l2``) on the same points, alternating which goes first per
point so that load on a shared machine hits both. Per time limit it prints the fraction
of points proven optimal, the process (CPU) seconds per point (the limit itself is
HiGHS' wall clock), the mean relative gap (bound - value) / bound, the mean decoded
change reached, and the ratios after / before. Where both prove optimality their optima
must agree (checked: a changed formulation must not change the answer). ``--warm`` adds a
third run per point: the working tree warm-started (``start=``, ``start_cutoff=True``)
from a short PGD on the decoded change, the start's seconds counted.

The model is ``--model`` (a DCT-VAE run directory or checkpoint; its points are the
certify / attack sweep's, label-stratified by ``--seed``) or, without it, the
dctvae-mnist-tiny codec with its scale fitted on mnist-offline (seconds to build; the
codec has no weights) on the first test digits. Run with OMP_NUM_THREADS=1.
Also registered in ``python -m benchmarks --only milp``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from benchmarks.before_after import old_module
from robustvae.certify import optimal_context_attack

BEFORE = "04b3195"  # main before issue 22's MILP work


def problems(model: str | None, points: int, seed: int = 0) -> tuple[object, torch.Tensor, str]:
    """(model or codec, images (points, C, H, W), a label saying which)."""
    if model:
        from robustvae.config import CertifyConfig
        from robustvae.experiments.attack import select_points
        from robustvae.experiments.models import load_models

        lm = load_models([model], torch.device("cpu"))[0]
        pts = select_points(lm, CertifyConfig(points=points, seed=seed), None)
        return lm.model, pts.images[:points], f"{model} ({points} label-stratified test points, seed {seed})"
    from robustvae.config import DataConfig
    from robustvae.data import eval_images, load_dataset
    from robustvae.registry import build_model, get_preset

    ds = load_dataset(DataConfig("mnist-offline"))
    torch.manual_seed(0)
    m = build_model(get_preset("dctvae-mnist-tiny").model).eval()
    m.fit_data(ds.train.images)
    return (
        m,
        eval_images(ds, "test", True)[:points],
        f"dctvae-mnist-tiny codec fitted on mnist-offline ({points} test digits)",
    )


def pgd_start(model, x: torch.Tensor, eps: float, steps: int = 30, restarts: int = 4, seed: int = 0) -> torch.Tensor:
    """A warm start as a gradient attack would give it: sign-gradient ascent (L-inf) of the pre-quantisation
    decoded change sum_i w_i (v_i - v0_i)^2 from random starts in the ball; the perturbation whose codec levels
    change the decoded context most (float32, verified by the codec)."""
    from robustvae.certify.affine import affine_context, codec_level, codec_of

    codec = codec_of(model)
    ac = affine_context(codec)
    w = ac.decoded_weights().reshape(1, -1).float()
    gen = torch.Generator().manual_seed(seed)
    x = x.float()
    with torch.no_grad():
        v0 = (codec.coefficients(x) / codec.scale).reshape(1, -1)
        clean = codec_level(codec, x).reshape(1, -1)
    d = (torch.rand((restarts, *x.shape[1:]), generator=gen) * 2 - 1) * eps
    best, best_val = torch.zeros_like(x), 0.0
    for t in range(steps + 1):
        xa = (x + d).clamp(0, 1)
        with torch.no_grad():
            steps_ = (codec_level(codec, xa).reshape(restarts, -1) - clean).float()
            val = (steps_.pow(2) * w).sum(1)
        if float(val.max()) > best_val:
            best_val, best = float(val.max()), (xa[int(val.argmax())] - x[0])[None]
        if t == steps:
            break
        d.requires_grad_(True)
        v = (codec.coefficients((x + d).clamp(0, 1)) / codec.scale).reshape(restarts, -1)
        (g,) = torch.autograd.grad(((v - v0).pow(2) * w).sum(), d)
        d = (d.detach() + 2.5 * eps / steps * g.sign()).clamp(-eps, eps)
    return best.double()


def warm(model, x, eps, norm, objective, time_limit):
    """The working tree's MILP warm-started from :func:`pgd_start` with the cutoff row (its seconds counted; without
    the row the solve is the plain one's)."""
    return optimal_context_attack(
        model, x, eps, norm, objective, time_limit, start=pgd_start(model, x, eps), start_cutoff=True
    )


def solve(fn, model, x: torch.Tensor, eps: float, time_limit: float) -> dict:
    """One point: process seconds, wall seconds, proven, value, bound, relative gap."""
    c0, w0 = time.process_time(), time.perf_counter()
    r = fn(model, x, eps, "linf", "decoded_l2", time_limit)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    value, bound = float(r.decoded_l2[0]), float(r.bound[0])
    gap = (bound - value) / bound if math.isfinite(bound) and bound > 0 else (0.0 if bound == 0 else math.nan)
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "proven": bool(r.proven_optimal[0]),
        "value": value,
        "bound": bound,
        "gap": gap,
    }


def measure(
    model,
    x: torch.Tensor,
    eps: float,
    time_limits: list[float],
    old_fn,
    new_fn=optimal_context_attack,
    echo: bool = True,
    with_warm: bool = False,
) -> list[dict]:
    """Rows per (time limit, point, version); the versions alternate who goes first."""
    rows = []
    for tl in time_limits:
        for p in range(x.shape[0]):
            order = [("before", old_fn), ("after", new_fn)] + ([("warm", warm)] if with_warm else [])
            for version, fn in order if p % 2 == 0 else order[::-1]:
                r = {"time_limit": tl, "point": p, "version": version, **solve(fn, model, x[p : p + 1], eps, tl)}
                rows.append(r)
                if echo:
                    print(
                        f"  limit {tl:g} s point {p:2d} {version:6s} cpu {r['cpu_s']:6.2f} s  "
                        f"{'optimal   ' if r['proven'] else 'NOT proven'}  value {r['value']:.4f} bound {r['bound']:.4f}",
                        flush=True,
                    )
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per time limit: proven fraction, CPU and wall seconds per point, mean gap and value, before and after."""
    out = []
    for tl in sorted({r["time_limit"] for r in rows}):
        s = {"time_limit": tl}
        for v in ("before", "after", "warm"):
            g = [r for r in rows if r["time_limit"] == tl and r["version"] == v]
            if not g:
                continue
            n = len(g)
            s[v] = {
                "points": n,
                "proven": sum(r["proven"] for r in g),
                "cpu_s_per_point": sum(r["cpu_s"] for r in g) / n,
                "wall_s_per_point": sum(r["wall_s"] for r in g) / n,
                "mean_gap": sum(r["gap"] for r in g) / n,
                "mean_value": sum(r["value"] for r in g) / n,
            }
        b, a = s["before"], s["after"]
        s["cpu_ratio_after_over_before"] = a["cpu_s_per_point"] / b["cpu_s_per_point"]
        if "warm" in s:
            s["cpu_ratio_warm_over_before"] = s["warm"]["cpu_s_per_point"] / b["cpu_s_per_point"]
        both = [
            (r, q)
            for r in rows
            for q in rows
            if r["time_limit"] == q["time_limit"] == tl
            and r["point"] == q["point"]
            and r["version"] == "before"
            and q["version"] == "after"
            and r["proven"]
            and q["proven"]
        ]
        s["both_proven"] = len(both)
        s["max_optimum_difference"] = max((abs(r["value"] - q["value"]) for r, q in both), default=0.0)
        out.append(s)
    return out


def cpu_to_proof(rows: list[dict], cpu_limits: list[float]) -> list[dict]:
    """Load-independent reading of runs under one generous wall limit: per version, how many points were proven
    optimal within each CPU budget (process seconds to the proof), and the mean CPU seconds of the proven ones."""
    out = []
    for v in ("before", "after", "warm"):
        g = [r for r in rows if r["version"] == v]
        if not g:
            continue
        proven = [r["cpu_s"] for r in g if r["proven"]]
        out.append(
            {
                "version": v,
                "points": len(g),
                "wall_limit": g[0]["time_limit"],
                "proven_within": {f"{c:g}": sum(t <= c for t in proven) for c in cpu_limits},
                "proven_at_wall_limit": len(proven),
                "mean_cpu_s_of_proven": sum(proven) / len(proven) if proven else None,
            }
        )
    return out


def check_agreement(summ: list[dict]) -> None:
    """Where before and after both prove a point optimal, their optima must be the same (an AssertionError)."""
    bad = [s for s in summ if s["max_optimum_difference"] > 1e-6 * max(1.0, s["after"]["mean_value"])]
    if bad:
        raise AssertionError(f"before and after prove different optima: {bad}")


def table(summ: list[dict]) -> str:
    """Markdown: per time limit, before and after side by side (and the warm-started run, when measured)."""
    lines = [
        "| time limit (s) | points | proven before | proven after | CPU s/point before | CPU s/point after | "
        "after / before | mean gap before | mean gap after | mean decoded L2 before / after |",
        "|" + " --- |" * 10,
    ]
    for s in summ:
        b, a = s["before"], s["after"]
        lines.append(
            f"| {s['time_limit']:g} | {b['points']} | {b['proven']} | {a['proven']} | {b['cpu_s_per_point']:.2f} | "
            f"{a['cpu_s_per_point']:.2f} | {s['cpu_ratio_after_over_before']:.2f} | {b['mean_gap']:.3f} | "
            f"{a['mean_gap']:.3f} | {b['mean_value']:.3f} / {a['mean_value']:.3f} |"
        )
    for s in summ:
        if "warm" in s:
            w = s["warm"]
            lines.append(
                f"\nwarm-started from a 30-step PGD on the decoded change (its time counted), limit "
                f"{s['time_limit']:g} s: proven {w['proven']} of {w['points']}, CPU s/point "
                f"{w['cpu_s_per_point']:.2f} ({s['cpu_ratio_warm_over_before']:.2f} x before), mean gap "
                f"{w['mean_gap']:.3f}, mean decoded L2 {w['mean_value']:.3f}"
            )
    return "\n".join(lines)


def run(
    model: str | None,
    points: int,
    eps: float,
    time_limits: list[float],
    rev: str = BEFORE,
    seed: int = 0,
    echo: bool = True,
    with_warm: bool = False,
) -> dict:
    target, x, label = problems(model, points, seed)
    old = old_module("robustvae/certify/attack.py", rev)
    rows = measure(target, x, eps, time_limits, old.optimal_context_attack, echo=echo, with_warm=with_warm)
    summ = summary(rows)
    check_agreement(summ)
    return {
        "model": label,
        "eps": eps,
        "norm": "linf",
        "rev": rev,
        "omp_threads": torch.get_num_threads(),
        "rows": rows,
        "summary": summ,
        "table": table(summ),
    }


def add_arguments(ap: argparse.ArgumentParser, prefix: str = "") -> None:
    ap.add_argument(
        f"--{prefix}model",
        default=None,
        help="DCT-VAE run directory or checkpoint (default: the dctvae-mnist-tiny codec fitted on mnist-offline)",
    )
    ap.add_argument(f"--{prefix}points", type=int, default=20)
    ap.add_argument(f"--{prefix}eps", type=float, default=0.1)
    ap.add_argument(f"--{prefix}time-limits", type=float, nargs="+", default=[5.0, 10.0])
    ap.add_argument(f"--{prefix}rev", default=BEFORE, help=f"git revision of the old code (default {BEFORE})")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.milp", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warm", action="store_true", help="also run the working tree warm-started from a PGD")
    ap.add_argument(
        "--cpu-limits",
        type=float,
        nargs="*",
        default=None,
        help="also count, per version, the points proven within these CPU seconds (use one generous "
        "--time-limits value: on a loaded machine the wall limit leaves each solve a fraction of a CPU)",
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    a = ap.parse_args(argv)
    res = run(a.model, a.points, a.eps, a.time_limits, a.rev, a.seed, with_warm=a.warm)
    print(
        f"optimal context attack, L-inf eps {a.eps}, decoded_l2, {res['model']}; before = {a.rev}, after = working tree"
    )
    print(res["table"])
    if a.cpu_limits:
        res["cpu_to_proof"] = cpu_to_proof(res["rows"], a.cpu_limits)
        print("points proven optimal within a CPU budget (process seconds to the proof):")
        for r in res["cpu_to_proof"]:
            within = ", ".join(f"{c} s: {n}" for c, n in r["proven_within"].items())
            mean = r["mean_cpu_s_of_proven"]
            print(
                f"  {r['version']:6s} {within} (of {r['points']}; {r['proven_at_wall_limit']} within the "
                f"{r['wall_limit']:g} s wall limit" + (f", mean {mean:.2f} CPU s per proven point)" if mean else ")")
            )
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
