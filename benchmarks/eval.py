"""Importance-sampled evaluation (``robustvae eval``): throughput against the limit, against the old code, and per budget.

    python -m benchmarks.eval [--checkpoint RUN] [--images 100] [--iw-samples 1000] [--quick]

Also part of ``python -m benchmarks`` (``--only eval``). Everything runs in one process:

* the limit (a dense 3x3 convolution's forward + backward FLOP/s, as in the suite);
* the NLL of ``--images`` test-like digits with K = ``--iw-samples`` through
  :func:`robustvae.evaluation.iwae_nll` at the default memory budget: samples/s, FLOPs
  per importance sample, fraction of the limit (goal: 40 %), and the peak memory of
  one pass beside the budget it was sized to;
* the whole ``evaluate_model`` against the code of git ``--rev`` (loaded next to the
  current code, as in :mod:`benchmarks.before_after`) on ``--compare-images`` x
  ``--compare-k``: the speed-up new vs old (their NLLs differ only by the random draws);
* samples/s at several ``--max-batch-mib`` budgets, and the largest NLL difference
  between them (the NLL must not depend on the budget).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.common import count_flops, dense_conv_flops_per_s, machine, peak_memory, synchronizer, timed
from robustvae.device import resolve_device
from robustvae.evaluation import Chunk, _Noise, bytes_per_row, default_max_batch_mib, evaluate_model, iwae_nll
from robustvae.progress import make_progress

OLD_REV = "cfbb3d7"  # the last commit before the batched evaluation
GOAL = 0.40  # of the limit
README_IMAGES = 10_000  # the whole MNIST test split, K = 1000: what `robustvae eval` of a mnist model runs by default
RESULTS = Path(__file__).with_name("eval-results.json")


def digits(model, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` fixed binary images of the model's shape (the work does not depend on the pixels)."""
    c, s = model.cfg.image_channels, model.cfg.image_size
    x = torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed))
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed + 1)) if model.cfg.binary else x


def flop_counts(model, x1: torch.Tensor) -> tuple[int, int]:
    """(FLOPs per image: encoder and context bound, FLOPs per importance sample), from two counted passes."""
    counted = []
    for n in (2, 4):
        noise = _Noise(model, n, 0, x1.device)(Chunk(range(1), range(n)))
        counted.append(count_flops(lambda: model.log_importance_weights(x1, n, noise=noise)))
    per_sample = (counted[1] - counted[0]) // 2
    return counted[0] - 2 * per_sample, per_sample


def _nll(model, x, k, device, budget: int) -> torch.Tensor:
    with make_progress(quiet=True) as progress:
        return iwae_nll(model, x, k, device=device, seed=0, max_batch_mib=budget, progress=progress)


def measure_target(model, images: int, k: int, device: torch.device) -> dict:
    """The goal's workload at the default budget: rate, fraction of the limit, peak memory of one pass."""
    x = digits(model, images).to(device)
    budget = default_max_batch_mib(device)
    per_row = bytes_per_row(model, x[:1])
    rows = max(1, int(budget * 2**20 / (1.1 * per_row)))
    per_image, per_sample = flop_counts(model, x[:1])
    flops = images * (per_image + k * per_sample)
    _nll(model, x[:1], min(k, 8), device, budget)  # warm-up
    with _timed_passes(model, synchronizer(device)) as passes:
        nll, seconds = timed(lambda: _nll(model, x, k, device, budget), synchronizer(device))
    best = max((b * per_image + r * per_sample) / t for b, r, t in passes[2:])  # the first two calls: the memory probe
    one, group = min(rows, k), min(images, max(1, rows // k))  # the largest pass of the plan
    pass_noise = _Noise(model, k, 0, device)(Chunk(range(group), range(one)))
    pass_x = x[:group]
    with torch.inference_mode():
        peak = peak_memory(lambda: model.log_importance_weights(pass_x, one, noise=pass_noise), device)
    return {
        "images": images,
        "iw_samples": k,
        "seconds": seconds,
        "samples_per_s": images * k / seconds,
        "flops": flops,
        "flops_per_sample": flops / (images * k),
        "achieved_flops_per_s": flops / seconds,
        "best_pass_flops_per_s": best,
        "max_batch_mib": budget,
        "rows_per_pass": rows,
        "largest_pass_rows": group * one,
        "bytes_per_row_estimate": per_row,
        "pass_peak_memory": peak,
        "nll_nats": float(nll.mean()),
        "readme_example_s": seconds * README_IMAGES / images,
    }


@contextmanager
def _timed_passes(model, sync):
    """Times every ``log_importance_weights`` call of ``model``: a list of (images, rows, seconds)."""
    passes: list[tuple[int, int, float]] = []
    real = model.log_importance_weights

    def timed_call(x, k, *args, **kwargs):
        sync()
        t = time.perf_counter()
        out = real(x, k, *args, **kwargs)
        sync()
        passes.append((x.shape[0], x.shape[0] * k, time.perf_counter() - t))
        return out

    model.log_importance_weights = timed_call
    try:
        yield passes
    finally:
        del model.log_importance_weights


def old_evaluation(rev: str):
    """``robustvae/evaluation.py`` of git ``rev`` as a module, or None where the history lacks it (shallow clone)."""
    from benchmarks.before_after import old_module

    try:
        return old_module("robustvae/evaluation.py", rev)
    except (subprocess.CalledProcessError, OSError):
        return None


def measure_old_vs_new(model, images: int, k: int, device: torch.device, rev: str) -> dict:
    """The whole evaluate_model (ELBO, NLL, diagnostics), old code against new, alternating, best of two."""
    old = old_evaluation(rev)
    if old is None:
        return {"rev": rev, "available": False}
    x = digits(model, images)
    sync = synchronizer(device)

    def run(fn):
        return timed(lambda: fn(model, x, iw_samples=k, batch_size=100, device=device, seed=0, quiet=True), sync)

    times: dict[str, float] = {"old": float("inf"), "new": float("inf")}
    results = {}
    for _ in range(2):
        for name, fn in (("new", evaluate_model), ("old", old.evaluate_model)):
            results[name], t = run(fn)
            times[name] = min(times[name], t)
    return {
        "rev": rev,
        "available": True,
        "images": images,
        "iw_samples": k,
        "old_s": times["old"],
        "new_s": times["new"],
        "speedup": times["old"] / times["new"],
        "old_nll_nats": results["old"]["nll_nats"],
        "new_nll_nats": results["new"]["nll_nats"],
        "nelbo_nats": results["new"]["nelbo_nats"],
    }


def measure_budgets(model, images: int, k: int, device: torch.device, budgets: list[int]) -> dict:
    """Samples/s per memory budget on one workload, and how far apart the budgets' NLLs are."""
    x = digits(model, images, seed=2).to(device)
    rows, nlls = [], []
    for b in budgets:
        nll, seconds = timed(lambda b=b: _nll(model, x, k, device, b), synchronizer(device))
        nlls.append(nll)
        rows.append({"max_batch_mib": b, "samples_per_s": images * k / seconds})
    gap = max(float((a - nlls[0]).abs().max()) for a in nlls)
    return {"images": images, "iw_samples": k, "budgets": rows, "max_nll_difference": gap}


def run(args: argparse.Namespace, dev: torch.device, limit: float, model) -> dict:
    """The eval part of the suite: the target, old against new, and the budgets.

    The limit is measured again right after the target workload and the higher of the two
    counts, so that a machine that got busier meanwhile does not flatter the fraction.
    """
    target = measure_target(model, args.eval_images, args.eval_k, dev)
    again = dense_conv_flops_per_s(dev, args.quick)["flops_per_s"]
    target["limit_flops_per_s"] = max(limit, again)
    target["fraction_of_limit"] = target["achieved_flops_per_s"] / target["limit_flops_per_s"]
    target["best_pass_fraction_of_limit"] = target["best_pass_flops_per_s"] / target["limit_flops_per_s"]
    return {
        "model": Path(args.checkpoint).name if args.checkpoint else args.preset,
        "goal_fraction_of_limit": GOAL,
        "target": target,
        "limit_before_after": [limit, again],
        "old_vs_new": measure_old_vs_new(model, args.compare_images, args.compare_k, dev, args.rev),
        "budgets": measure_budgets(model, args.budget_images, args.compare_k, dev, args.budgets),
    }


def rows(res: dict) -> list[list[str]]:
    """Table rows (the suite's columns) of an eval result."""
    t, o, b = res["target"], res["old_vs_new"], res["budgets"]
    speed = f"{o['speedup']:.2f}x vs git {o['rev']}" if o["available"] else f"git {o['rev']} not in this clone"
    mem = (
        f"{t['pass_peak_memory']['bytes'] / 2**20:.1f} MiB in its largest pass ({t['largest_pass_rows']} of the "
        f"{t['rows_per_pass']} samples a {t['max_batch_mib']} MiB pass may hold)"
    )
    out = [
        [
            f"eval NLL {res['model']}",
            f"K={t['iw_samples']} x {t['images']} images, --max-batch-mib {t['max_batch_mib']}; "
            f"whole MNIST test split about {t['readme_example_s'] / 3600:.1f} h",
            f"{t['samples_per_s']:.0f} samples/s",
            f"{t['flops_per_sample'] / 1e9:.3f}",
            f"{t['achieved_flops_per_s'] / 1e9:.1f}",
            f"{t['fraction_of_limit']:.1%} (best pass {t['best_pass_fraction_of_limit']:.1%}; limit "
            f"{t['limit_flops_per_s'] / 1e9:.1f}: the higher before / after)",
            speed,
            f">= {res['goal_fraction_of_limit']:.0%} of limit: {'met' if t['fraction_of_limit'] >= res['goal_fraction_of_limit'] else 'NOT met'}",
            mem,
        ]
    ]
    if o["available"]:
        out.append(
            [
                f"eval old vs new ({o['rev']})",
                f"evaluate_model, K={o['iw_samples']} x {o['images']} images; "
                f"NLL {o['old_nll_nats']:.2f} old / {o['new_nll_nats']:.2f} new (other draws)",
                f"{o['old_s']:.1f} s old / {o['new_s']:.1f} s new",
                "",
                "",
                "",
                f"{o['speedup']:.2f}x",
                "",
                "",
            ]
        )
    sweep = ", ".join(f"{r['max_batch_mib']} MiB: {r['samples_per_s']:.0f}/s" for r in b["budgets"])
    out.append(
        [
            "eval per budget",
            f"K={b['iw_samples']} x {b['images']} images; NLLs {b['max_nll_difference']:.1e} apart",
            sweep,
            "",
            "",
            "",
            "",
            "",
            "",
        ]
    )
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.eval", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--checkpoint", help="trained model (default: a freshly initialised --preset)")
    ap.add_argument("--preset", default="vdvae-mnist")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for tests (the numbers mean nothing)")
    ap.add_argument("--out", type=Path, help=f"JSON results (default {RESULTS.name} next to this file)")
    add_arguments(ap)
    return ap


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The eval part's sizes (shared with ``python -m benchmarks``)."""
    ap.add_argument("--eval-images", type=int, help="images of the target workload (default 100; quick 2)")
    ap.add_argument("--eval-k", type=int, help="importance samples of the target workload (default 1000; quick 8)")
    ap.add_argument("--compare-images", type=int, help="images of old vs new (default 100; quick 2)")
    ap.add_argument(
        "--compare-k", type=int, help="importance samples of old vs new and the budgets (default 100; quick 4)"
    )
    ap.add_argument("--budget-images", type=int, help="images of the budget sweep (default 10; quick 2)")
    ap.add_argument("--rev", default=OLD_REV, help=f"git revision of the old evaluation code (default {OLD_REV})")
    ap.add_argument(
        "--budgets",
        type=lambda s: [int(v) for v in s.split(",")],
        help="--max-batch-mib values compared (default 32,64,128,256,512,1024,2048; quick 1,4)",
    )


def defaults(args: argparse.Namespace) -> None:
    q = args.quick
    for name, full, quick in (
        ("eval_images", 100, 2),
        ("eval_k", 1000, 8),
        ("compare_images", 100, 2),
        ("compare_k", 100, 4),
        ("budget_images", 10, 2),
        ("budgets", [32, 64, 128, 256, 512, 1024, 2048], [1, 4]),
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.__main__ import HEADER, model_for

    args = _parser().parse_args(argv)
    defaults(args)
    dev = resolve_device(args.device)
    limit = dense_conv_flops_per_s(dev, args.quick)
    model, label = model_for(args, dev)
    res = {
        "command": "python -m benchmarks.eval " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "device": str(dev),
        "limit": limit,
        "eval": run(args, dev, limit["flops_per_s"], model),
    }
    lines = [
        f"limit {limit['flops_per_s'] / 1e9:.1f} GFLOP/s ({limit['workload']}, {limit['layout']}); model: {label}",
        "",
        *HEADER,
        *("| " + " | ".join(r) + " |" for r in rows(res["eval"])),
    ]
    print("\n".join(lines))
    out = args.out or (RESULTS.with_name("eval-results-quick.json") if args.quick else RESULTS)
    out.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
