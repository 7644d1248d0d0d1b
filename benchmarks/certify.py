"""Certified radii of the context and the optimal context attack's solver time, on real digits.

    python -m benchmarks.certify [--points 100] [--digits 1] [--eps 0.05 0.1 0.2] [--l2-eps 0.05 0.1 0.2 1.0]
                                 [--time-limit 60] [--json PATH]

The dctvae-mnist-tiny codec (1 x 6 x 6 DCT context, 2 bits) with its scale fitted on the
mnist-offline training split (random weights elsewhere: the codec has none), test digits
binarised as the model sees them. Prints the certified radius statistics per norm (and
the certified fraction at a few eps), then the MILP's seconds per digit, eps, norm and
objective with whether HiGHS proved it optimal. Single-threaded numbers need
OMP_NUM_THREADS=1 (HiGHS itself runs on one thread here).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from robustvae.certify import certified_fraction, certified_radius, optimal_context_attack
from robustvae.config import DataConfig
from robustvae.data import eval_images, load_dataset
from robustvae.registry import build_model, get_preset


def radius_stats(model, x: torch.Tensor) -> dict[str, dict[str, float]]:
    out = {}
    for norm in ("linf", "l2"):
        t0 = time.perf_counter()
        r = certified_radius(model, x, norm)
        out[norm] = {
            "seconds": time.perf_counter() - t0,
            "median": r.median().item(),
            "min": r.min().item(),
            "max": r.max().item(),
            "mean": r.mean().item(),
            "zero": int((r == 0).sum()),
        }
    return out


def attack_times(model, x: torch.Tensor, runs: list[tuple[str, float]], time_limit: float) -> list[dict]:
    rows = []
    for b in range(x.shape[0]):
        for norm, eps in runs:
            for objective in ("decoded_l2", "count"):
                res = optimal_context_attack(model, x[b : b + 1], eps, norm, objective=objective, time_limit=time_limit)
                rows.append(
                    {
                        "digit": b,
                        "norm": norm,
                        "eps": eps,
                        "objective": objective,
                        "seconds": res.solve_time.item(),
                        "proven_optimal": bool(res.proven_optimal.item()),
                        "decoded_l2": res.decoded_l2.item(),
                        "changed": int(res.changed.item()),
                        "bound": res.bound.item(),
                        "rounds": int(res.rounds.item()),
                        "status": res.status[0],
                    }
                )
                r = rows[-1]
                what = (
                    f"decoded L2 {r['decoded_l2']:.3f} (bound {r['bound']:.3f}), changed {r['changed']}"
                    if objective == "decoded_l2"
                    else f"changed {r['changed']} (bound {r['bound']:g}), decoded L2 {r['decoded_l2']:.3f}"
                )
                print(
                    f"  digit {b} {norm:4s} eps {eps:<5g} {objective:10s} {r['seconds']:7.2f} s  "
                    f"{'optimal   ' if r['proven_optimal'] else 'NOT proven'}  {what}  rounds {r['rounds']}",
                    flush=True,
                )
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.certify", description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--digits", type=int, default=1, help="test digits for the MILP timings")
    ap.add_argument("--eps", type=float, nargs="*", default=[0.05, 0.1, 0.2], help="L-inf eps of the MILP timings")
    ap.add_argument("--l2-eps", type=float, nargs="*", default=[0.05, 0.1, 0.2, 1.0], help="L2 eps of the MILP timings")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    ds = load_dataset(DataConfig("mnist-offline"))
    torch.manual_seed(0)
    model = build_model(get_preset("dctvae-mnist-tiny").model).eval()
    model.fit_data(ds.train.images)
    x = eval_images(ds, "test", True)
    stats = radius_stats(model, x[: a.points])
    print(f"certified radius over {a.points} mnist-offline test digits (dctvae-mnist-tiny codec):")
    for norm, s in stats.items():
        print(
            f"  {norm:4s} median {s['median']:.5f}  min {s['min']:.5f}  max {s['max']:.5f}  mean {s['mean']:.5f}  "
            f"zero {s['zero']}  ({s['seconds']:.2f} s)"
        )
    fractions = {}
    for norm, grid in (("linf", [0.0005, 0.001, 0.002, 0.005, 0.01]), ("l2", [0.005, 0.01, 0.02, 0.05, 0.1])):
        f = certified_fraction(model, x[: a.points], grid, norm)
        fractions[norm] = dict(zip(grid, f.tolist()))
        print(f"  certified fraction {norm:4s} " + "  ".join(f"{e:g}: {v:.2f}" for e, v in zip(grid, f.tolist())))
    print(f"optimal context attack (time limit {a.time_limit:g} s per run):")
    runs = [("linf", e) for e in a.eps] + [("l2", e) for e in a.l2_eps]
    rows = attack_times(model, x[: a.digits], runs, a.time_limit)
    out = {"points": a.points, "radius": stats, "certified_fraction": fractions, "attack": rows}
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
