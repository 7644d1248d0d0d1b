"""robustvae's benchmark suite: one command, one table, benchmarks/results.json.

    python -m benchmarks [--device auto|cpu|cuda] [--quick] [--checkpoint RUN] [--only train,attack,msssim]

Everything runs in one process and every ratio is measured in one run, so it compares like with like on a shared machine:

* the limit: a large dense 3x3 convolution's forward + backward FLOP/s, in its faster layout;
* training images/s of vdvae-mnist and dctvae-mnist, FLOPs per image, fraction of the limit
  (goal: 40 % on CPU), and the speed-up of the default channels-last layout;
* the attack (PGD, L-inf eps 0.1, skl) batched over points x restarts against one point and one
  restart at a time, checked to give the same results (goal: 10x), at k = 1 and k = L, and the
  batched run's fraction of the limit;
* MS-SSIM batched against per image (goal: 20x);
* the importance-sampled NLL of ``robustvae eval`` (:mod:`benchmarks.eval`): K = 1000 on 100
  digits against the limit (goal: 40 %), the whole evaluation against the code before the
  batched evaluation, and samples/s per ``--max-batch-mib``;
* peak memory of each (CUDA: max_memory_allocated; CPU: torch.profiler's allocation events);
* on request (``--only ensemble``, :mod:`benchmarks.ensemble`): the old default attack (PGD skl) against the
  ensemble (``--attack auto``) on ``--ensemble-run`` models, worst-case MS-SSIM per k and passes per point;
* on request (``--only real-size``, :mod:`benchmarks.real_size`): openai/vdvae's CIFAR-10 model at full size,
  seconds per point of the attack and the ensemble per k, seconds per image of ``eval``, peak memory;
* on request (``--only milp``, :mod:`benchmarks.milp`): the optimal context attack's MILP before and after issue
  22's changes, proven-optimal fraction and CPU seconds per point at each ``--milp-time-limits``.

The attack and eval model is ``--checkpoint`` (a run directory or checkpoint) or, without it, a
freshly initialised ``--preset``; the table says which. ``--quick`` shrinks every size so a
test runs the whole suite in seconds (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from benchmarks import eval as eval_bench
from benchmarks import milp, real_size
from benchmarks.attack import measure_attack, measure_ms_ssim
from benchmarks.common import dense_conv_flops_per_s, machine
from benchmarks.training import measure_training
from robustvae.device import resolve_device
from robustvae.registry import build_model, get_preset

GOALS = {"train_fraction_of_limit": 0.40, "attack_speedup": 10.0, "ms_ssim_speedup": 20.0}
PARTS = ("train", "attack", "msssim", "eval")  # the default parts
OPTIONAL_PARTS = ("ensemble", "real-size", "milp")  # run when --only names them
RESULTS = Path(__file__).with_name("results.json")
HEADER = (
    "| benchmark | workload | throughput | GFLOP / item (image, image-step, sample) | GFLOP/s | of limit | speed-up | goal | peak memory |",
    "|---|---|---|---|---|---|---|---|---|",
)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for tests (the numbers mean nothing)")
    ap.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts to run (default: {','.join(PARTS)})"
    )
    ap.add_argument(
        "--train-preset", action="append", help="training preset(s) (default: vdvae-mnist and dctvae-mnist)"
    )
    ap.add_argument("--batch-size", type=int, help="training batch (default 128; quick 8)")
    ap.add_argument("--checkpoint", help="trained model for the attack (default: a freshly initialised --preset)")
    ap.add_argument("--preset", default="vdvae-mnist", help="attack model when no --checkpoint (default vdvae-mnist)")
    ap.add_argument("--points", type=int, help="attacked points (default 50; quick 2)")
    ap.add_argument("--restarts", type=int, help="restarts per point (default 5; quick 2)")
    ap.add_argument("--steps", type=int, help="attack steps (default 10; quick 2)")
    ap.add_argument("--k", help="layers under attack, comma-separated; L = all (default 1,L)")
    ap.add_argument("--repeats", type=int, help="timed repeats, the best is kept (default 5; quick 1)")
    ap.add_argument(
        "--no-amp", action="store_true", help="CUDA: train in float32 instead of the presets' bf16 autocast"
    )
    ap.add_argument("--compile", action="store_true", help="train through torch.compile (slow start)")
    eval_bench.add_arguments(ap)
    real_size.add_arguments(ap)
    milp.add_arguments(ap, prefix="milp-")
    ap.add_argument(
        "--ensemble-run",
        action="append",
        help="ensemble part: trained models (run directories or "
        "checkpoints; default: freshly initialised vdvae-mnist-tiny and dctvae-mnist-tiny on synthetic data)",
    )
    ap.add_argument("--ensemble-layers", default="1,2", help="ensemble part: k values (default 1,2)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON results (default {RESULTS.name} next to this file; with --quick, results-quick.json)",
    )
    return ap


def _defaults(args: argparse.Namespace) -> None:
    q = args.quick
    if args.out is None:  # a quick run never overwrites the committed full results
        args.out = RESULTS.with_name("results-quick.json") if q else RESULTS
    for name, full, quick in (
        ("batch_size", 128, 8),
        ("points", 50, 2),
        ("restarts", 5, 2),
        ("steps", 10, 2),
        ("repeats", 5, 1),
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    eval_bench.defaults(args)
    args.train_preset = args.train_preset or ["vdvae-mnist", "dctvae-mnist"]
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = [p for p in args.only if p not in PARTS + OPTIONAL_PARTS]
    if bad:
        raise SystemExit(f"--only: unknown part(s) {', '.join(bad)} (known: {', '.join(PARTS + OPTIONAL_PARTS)})")


def model_for(args: argparse.Namespace, device: torch.device):
    """The attack and eval model: ``--checkpoint``, else a freshly initialised ``--preset``; and a label saying which."""
    if args.checkpoint:
        from robustvae import zoo

        return zoo.load(args.checkpoint, device=device).model, f"trained checkpoint {args.checkpoint}"
    torch.manual_seed(0)
    model = build_model(get_preset(args.preset).model).to(device).eval()
    return model, f"freshly initialised {args.preset} (no --checkpoint)"


def _ks(text: str | None, num_layers: int) -> list[int]:
    return sorted({num_layers if t.strip().upper() == "L" else int(t) for t in (text or "1,L").split(",")})


def run(args: argparse.Namespace) -> dict:
    """Measure the parts ``args.only`` names; the results as one JSON-ready dict."""
    dev = resolve_device(args.device)
    amp = not args.no_amp and dev.type == "cuda"
    res: dict = {
        "command": "python -m benchmarks " + " ".join(args.argv),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": machine(),
        "device": str(dev),
        "quick": args.quick,
        "goals": GOALS,
    }
    if not set(args.only) & set(PARTS):  # the optional parts alone: no limit of the suite's own needed
        return {**res, **_optional(args, dev)}
    res["limit"] = dense_conv_flops_per_s(dev, args.quick)
    if amp and "train" in args.only:
        res["limit_bf16"] = dense_conv_flops_per_s(dev, args.quick, autocast=True)
    if "train" in args.only:
        res["training"] = []
        for preset in args.train_preset:
            row = measure_training(preset, args.batch_size, dev, args.repeats, amp=amp, compile=args.compile)
            limit = res["limit_bf16" if row["bf16_autocast"] else "limit"]["flops_per_s"]
            row["fraction_of_limit"] = row["achieved_flops_per_s"] / limit
            res["training"].append(row)
    if "attack" in args.only or "msssim" in args.only or "eval" in args.only:
        model, label = model_for(args, dev)
        res["attack_model"] = label
        if "attack" in args.only:
            res["attack"] = []
            for k in _ks(args.k, model.num_layers):
                row = measure_attack(model, k, args.points, args.restarts, args.steps, dev)
                row["fraction_of_limit"] = row["achieved_flops_per_s"] / res["limit"]["flops_per_s"]
                res["attack"].append(row)
        if "msssim" in args.only:
            res["ms_ssim"] = measure_ms_ssim(model, args.points * args.restarts, dev, args.repeats * 3)
        if "eval" in args.only:
            res["eval"] = eval_bench.run(args, dev, res["limit"]["flops_per_s"], model)
    return {**res, **_optional(args, dev)}


def _optional(args: argparse.Namespace, device: torch.device) -> dict:
    out = {}
    if "ensemble" in args.only:
        out["ensemble"] = _ensemble(args, device)
    if "real-size" in args.only:
        out["real_size"] = real_size.run(args, device)
    if "milp" in args.only:
        out["milp"] = milp.run(
            args.milp_model,
            2 if args.quick else args.milp_points,
            args.milp_eps,
            [0.5] if args.quick else args.milp_time_limits,
            args.milp_rev,
        )
    return out


def _ensemble(args: argparse.Namespace, device: torch.device) -> dict:
    """The ensemble part: old default against ``auto`` at the same points, restarts, steps and budget."""
    from benchmarks.ensemble import run as run_ensemble
    from robustvae.config import AttackConfig

    models, data = args.ensemble_run, None
    if not models:
        torch.manual_seed(0)
        models, data = (
            [build_model(get_preset(p).model).eval() for p in ("vdvae-mnist-tiny", "dctvae-mnist-tiny")],
            "synthetic",
        )
    base = AttackConfig(
        layers=args.ensemble_layers,
        points=args.points,
        restarts=args.restarts,
        steps=args.steps,
        floor_draws=0,
        noise_draws=0,
        unrelated_draws=0,
        gallery_points=0,
    )
    return run_ensemble(models, base, str(device), data)


def _mib(mem: dict) -> str:
    return f"{mem['bytes'] / 2**20:.1f} MiB"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def table(res: dict) -> str:
    """The results as one markdown table (plus a header line naming the machine and the limit)."""
    if "limit" not in res:
        return "\n\n".join(
            t for t in (_ensemble_text(res) if "ensemble" in res else "", _real_size_text(res), _milp_text(res)) if t
        )
    lim = res["limit"]
    m = res["machine"]
    lines = [
        f"device {res['device']} ({m['cuda'] or m['cpu']}), {m['threads']} thread(s), torch {m['torch']}; "
        f"limit {lim['flops_per_s'] / 1e9:.1f} GFLOP/s ({lim['workload']}, {lim['layout']})"
        + (f"; bf16 limit {res['limit_bf16']['flops_per_s'] / 1e9:.1f} GFLOP/s" if "limit_bf16" in res else ""),
        "",
        *HEADER,
    ]

    def row(*cells: str) -> None:
        lines.append("| " + " | ".join(cells) + " |")

    row(
        "limit",
        lim["workload"],
        "",
        "",
        f"{lim['flops_per_s'] / 1e9:.1f}",
        "100 %",
        " / ".join(f"{k} {v / 1e9:.1f}" for k, v in lim["per_layout"].items()),
        "",
        "",
    )
    goals = res["goals"]
    for r in res.get("training", []):
        extra = (", bf16 autocast" if r["bf16_autocast"] else "") + (", compiled" if r["compiled"] else "")
        cl = f"{r['channels_last_speedup']:.2f}x channels-last vs contiguous" if r["channels_last_speedup"] else ""
        row(
            f"train {r['preset']}",
            f"batch {r['batch_size']}, full step{extra}",
            f"{r['images_per_s']:.1f} img/s",
            f"{r['flops_per_image'] / 1e9:.3f}",
            f"{r['achieved_flops_per_s'] / 1e9:.1f}",
            f"{r['fraction_of_limit']:.1%}",
            cl,
            f">= {goals['train_fraction_of_limit']:.0%} of limit: {_met(r['fraction_of_limit'] >= goals['train_fraction_of_limit'])}",
            _mib(r["peak_memory"]),
        )
    for r in res.get("attack", []):
        work = f"k={r['k']}, {r['points']} points x {r['restarts']} restarts x {r['steps']} steps"
        same = (
            f"same results: {r['matching_images']:.1%} of images equal to rounding, objectives within "
            f"{r['max_loss_rel_difference']:.1e} relative"
        )
        row(
            "attack batched",
            f"{work}; {same}",
            f"{r['image_steps_per_s']:.1f} img-steps/s",
            f"{r['flops_per_image_step'] / 1e9:.3f}",
            f"{r['achieved_flops_per_s'] / 1e9:.1f}",
            f"{r['fraction_of_limit']:.1%}",
            f"{r['speedup']:.2f}x vs one at a time",
            f">= {goals['attack_speedup']:.0f}x: {_met(r['speedup'] >= goals['attack_speedup'])}",
            _mib(r["peak_memory"]),
        )
        one = r["one_at_a_time_flops_per_s"]
        row(
            "attack one at a time",
            f"k={r['k']}, one point x one restart per call",
            f"{r['image_steps_per_s'] / r['speedup']:.1f} img-steps/s",
            f"{r['flops_per_image_step'] / 1e9:.3f}",
            f"{one / 1e9:.1f}",
            f"{one / lim['flops_per_s']:.1%}",
            "1x",
            "",
            _mib(r["one_at_a_time_peak_memory"]),
        )
    if "ms_ssim" in res:
        r = res["ms_ssim"]
        shape = "x".join(map(str, r["shape"]))
        row(
            "MS-SSIM batched",
            f"{r['images']} pairs of {shape}, one call; values {r['max_abs_difference']:.0e} apart",
            f"{r['images'] / r['batched_s']:.0f} img/s",
            "",
            "",
            "",
            f"{r['speedup']:.1f}x vs per image",
            f">= {goals['ms_ssim_speedup']:.0f}x: {_met(r['speedup'] >= goals['ms_ssim_speedup'])}",
            _mib(r["peak_memory"]),
        )
        row(
            "MS-SSIM per image",
            f"{r['images']} calls of one pair",
            f"{r['images'] / r['per_image_s']:.0f} img/s",
            "",
            "",
            "",
            "1x",
            "",
            _mib(r["per_image_peak_memory"]),
        )
    for cells in eval_bench.rows(res["eval"]) if "eval" in res else []:
        row(*cells)
    if "attack_model" in res:
        lines += ["", f"attack / MS-SSIM / eval model: {res['attack_model']}"]
    if "ensemble" in res:
        lines += ["", _ensemble_text(res)]
    if "real_size" in res:
        lines += ["", _real_size_text(res)]
    if "milp" in res:
        lines += ["", _milp_text(res)]
    mem = next((r["peak_memory"]["method"] for part in ("training", "attack") for r in res.get(part, [])), None)
    if mem:
        lines.append(f"peak memory: {mem}, above what was held before the call")
    return "\n".join(lines)


def _real_size_text(res: dict) -> str:
    return real_size.table(res["real_size"], res["device"]) if "real_size" in res else ""


def _milp_text(res: dict) -> str:
    if "milp" not in res:
        return ""
    m = res["milp"]
    return (
        f"optimal context attack MILP, before ({m['rev']}) and after, L-inf eps {m['eps']}, {m['model']}\n" + m["table"]
    )


def _ensemble_text(res: dict) -> str:
    return (
        "old default (pgd) against the ensemble (auto): worst-case MS-SSIM per point, passes per point\n"
        + res["ensemble"]["table"]
    )


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _defaults(args)
    res = run(args)
    text = table(res)
    print(text)
    res["table"] = text
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
