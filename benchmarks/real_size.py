"""Real-size cost: openai/vdvae's CIFAR-10 model (39 M parameters, 43 stochastic layers), random weights.

    python -m benchmarks.real_size [--device cpu|cuda] [--quick] [--real-ks 1,5,20,43] [--real-restarts 5]
                                   [--real-steps 50] [--real-max-batch-mib N] [--real-eval-images 2]
                                   [--real-eval-k 100] [--out FILE]

Also ``python -m benchmarks --only real-size``. In one process, on the device at hand:

* the limit (a dense 3x3 convolution's forward + backward FLOP/s, as in the suite);
* per k: seconds per point of an attack of ``--real-steps`` steps and ``--real-restarts`` restarts,
  the default (PGD on skl) and the ensemble (``--attack auto``, its members sharing the steps), a
  pass holding as many images as ``--real-max-batch-mib`` admits, as ``robustvae attack`` sizes it
  (one point's restarts run in passes when they do not fit); a point costs restarts / (images per
  pass) passes. A step costs the same every time, so each attack (each ensemble member) is timed
  at 1 and at 1 + ``--real-timed-steps`` steps and the cost of the full attack is the fixed part
  plus ``--real-steps`` times the per-step part; the table says so;
* the attack's peak memory in one pass, beside the budget;
* ``robustvae eval``'s importance-sampled NLL with K = ``--eval-k`` (at its default memory budget)
  and one ELBO pass: seconds per image, FLOPs per importance sample, peak memory of its largest pass;
* from these: what the CIFAR-10 test split (10,000 images) costs to evaluate, and a 50-point
  attack sweep at every measured k.

Numbers on a shared machine are noisy: on the CPU every time is also taken as the process's CPU
time (``time.process_time``), which other processes competing for the cores do not inflate; the
limit is measured in the same run and the workloads are also given as a fraction of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import count_flops, dense_conv_flops_per_s, machine, peak_memory, synchronizer

PRESET = "openai-vdvae-cifar10"
RESULTS = Path(__file__).with_name("real-size-results.json")
TEST_SPLIT = 10_000  # CIFAR-10 test images
SWEEP_POINTS = 50  # the protocol's points per k


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The real-size part's options (shared with ``python -m benchmarks``, hence the prefix)."""
    ap.add_argument("--real-preset", default=PRESET, help=f"the model, random weights (default {PRESET})")
    ap.add_argument("--real-ks", help="k values (default 1,5,20,43; quick 1,43)")
    ap.add_argument("--real-restarts", type=int, help="restarts per point (default 5; quick 2)")
    ap.add_argument("--real-steps", type=int, default=50, help="steps of the attack whose cost is given (default 50)")
    ap.add_argument("--real-timed-steps", type=int, help="steps timed beyond the first (default 2; quick 1)")
    ap.add_argument("--real-max-batch-mib", type=int, help="attack memory budget (default 1024 on CPU, 65536 on CUDA)")
    ap.add_argument(
        "--real-eval-images", type=int, help="images of the NLL measurement (default 1 on CPU, 20 on CUDA; quick 1 / 8)"
    )
    ap.add_argument("--real-eval-k", type=int, default=100, help="importance samples per image (default 100)")


def defaults(args: argparse.Namespace, device: torch.device) -> None:
    q, cuda = args.quick, device.type == "cuda"
    for name, full, quick in (
        ("real_ks", "1,5,20,43", "1,43"),
        ("real_restarts", 5, 2),
        ("real_timed_steps", 2, 1),
        ("real_max_batch_mib", 65536 if cuda else 1024, 65536 if cuda else 1024),
        ("real_eval_images", 20 if cuda else 1, 8 if cuda else 1),
    ):
        if getattr(args, name, None) is None:
            setattr(args, name, quick if q else full)


def real_size_model(preset: str, device: torch.device):
    from robustvae.registry import build_model, get_preset

    torch.manual_seed(0)
    model = build_model(get_preset(preset).model).to(device).eval()
    with torch.no_grad():  # random weights everywhere (the prior nets start at zero)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.1 / p[0].numel() ** 0.5 if p.dim() == 4 else 0.01))
    return model


def clocks(fn, sync) -> tuple[object, float, float]:
    """(result, wall seconds, this process's CPU seconds) of one call of ``fn``."""
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _images(model, n: int, device: torch.device) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)


def _members(model, k: int, optimizer: str, steps: int) -> list[tuple[str, str, str, int]]:
    """(name, optimizer, objective, steps) of the attack: itself, or the ensemble's members at k."""
    from robustvae.attacks import ensemble_plan, ensemble_version

    version = ensemble_version(optimizer)
    if version is None:
        return [(optimizer, optimizer, "skl", steps)]
    return [(m.name, m.optimizer, m.objective, n) for m, n in ensemble_plan(model, k, version, steps)]


def measure_attack(model, k: int, optimizer: str, args, device: torch.device) -> dict:
    """Seconds per point of the ``args.real_steps``-step attack at k, its passes and the peak memory of one."""
    from robustvae.attacks import make_attack
    from robustvae.config import AttackConfig
    from robustvae.experiments.attack import bytes_per_sample

    R, budget = args.real_restarts, args.real_max_batch_mib
    base = AttackConfig(layers=str(k), optimizer=optimizer, restarts=R, points=1, max_batch_mib=budget)
    per = bytes_per_sample(model, k, base, device)
    rows = max(1, min(R, budget * 2**20 // (3 * per)))  # the sweep's sizing
    passes = -(-R // rows)
    x = _images(model, rows, device)
    noise = model.make_noise(rows, torch.Generator().manual_seed(1))
    sync = synchronizer(device)
    fixed = per_step = cpu_fixed = cpu_per_step = 0.0
    members = []
    timed_steps = args.real_timed_steps
    for name, opt, objective, n_steps in _members(model, k, optimizer, args.real_steps):

        def run(steps: int, opt=opt, objective=objective):
            cfg = dataclasses.replace(base, optimizer=opt, objective=objective, steps=steps, step_size=None)
            return make_attack(model, k, cfg)(x, seeds=list(range(rows)), noise=noise)

        run(1)  # warm-up
        _, t1, c1 = clocks(lambda: run(1), sync)
        _, t2, c2 = clocks(lambda: run(1 + timed_steps), sync)
        step, cpu_step = max(t2 - t1, 0.0) / timed_steps, max(c2 - c1, 0.0) / timed_steps
        members.append(
            {
                "member": name,
                "steps": n_steps,
                "seconds_per_step": step,
                "seconds_fixed": t1 - step,
                "cpu_seconds_per_step": cpu_step,
                "cpu_seconds_fixed": c1 - cpu_step,
            }
        )
        fixed, cpu_fixed = fixed + t1 - step, cpu_fixed + c1 - cpu_step
        per_step, cpu_per_step = per_step + step * n_steps, cpu_per_step + cpu_step * n_steps
    pass_s, cpu_pass_s = fixed + per_step, cpu_fixed + cpu_per_step
    mem = peak_memory(lambda: _members_once(model, k, base, optimizer, x, noise), device)
    return {
        "k": k,
        "optimizer": optimizer,
        "restarts": R,
        "steps": args.real_steps,
        "images_per_pass": rows,
        "passes_per_point": passes,
        "bytes_per_image_estimate": per,
        "max_batch_mib": budget,
        "seconds_per_pass": pass_s,
        "seconds_per_point": pass_s * R / rows,
        "cpu_seconds_per_point": cpu_pass_s * R / rows,
        "members": members,
        "pass_peak_memory": mem,
        "timing": f"timed at 1 and {1 + timed_steps} steps per member, scaled to {args.real_steps}",
    }


def _members_once(model, k, base, optimizer, x, noise):
    """One step of every member: the memory of a pass (the steps do not add memory, they repeat)."""
    from robustvae.attacks import make_attack

    for _, opt, objective, _ in _members(model, k, optimizer, 1):
        cfg = dataclasses.replace(base, optimizer=opt, objective=objective, steps=1, step_size=None)
        make_attack(model, k, cfg)(x, seeds=list(range(x.shape[0])), noise=noise)


def measure_pgd_flops(model, k: int, device: torch.device) -> int:
    """FLOPs of one PGD step on one image: forward and backward of the skl objective (torch's FlopCounterMode)."""
    from robustvae.attacks import LatentObjective

    obj = LatentObjective(model, k, "skl")
    x = _images(model, 1, device)
    ref = obj.reference(x)
    d = x.clone().requires_grad_(True)
    return count_flops(lambda: torch.autograd.grad(obj(d, ref).sum(), d))


def measure_eval(model, args, device: torch.device) -> dict:
    """``robustvae eval``'s NLL (K = ``--eval-k``) and ELBO on ``--eval-images`` images: seconds per image."""
    from benchmarks.eval import flop_counts
    from robustvae.evaluation import (
        Chunk,
        _Noise,
        bytes_per_row,
        default_max_batch_mib,
        iwae_nll,
    )
    from robustvae.progress import make_progress

    n, K = args.real_eval_images, args.real_eval_k
    x = _images(model, n, device)
    budget = default_max_batch_mib(device)
    sync = synchronizer(device)
    with make_progress(quiet=True) as progress:
        iwae_nll(model, x[:1], 2, device=device, seed=0, max_batch_mib=budget, progress=progress)  # warm-up
        nll, seconds, cpu_seconds = clocks(
            lambda: iwae_nll(model, x, K, device=device, seed=0, max_batch_mib=budget, progress=progress), sync
        )
    with torch.no_grad():
        _, elbo_s, _ = clocks(lambda: model.elbo(x), sync)
    per_row = bytes_per_row(model, x[:1])
    rows = max(1, int(budget * 2**20 / (1.1 * per_row)))
    one = min(rows, K)
    pass_noise = _Noise(model, one, 0, device)(Chunk(range(1), range(one)))
    with torch.inference_mode():
        mem = peak_memory(lambda: model.log_importance_weights(x[:1], one, noise=pass_noise), device)
    per_image_flops, per_sample_flops = flop_counts(model, x[:1])
    return {
        "images": n,
        "iw_samples": K,
        "max_batch_mib": budget,
        "seconds_per_image": seconds / n,
        "cpu_seconds_per_image": cpu_seconds / n,
        "elbo_seconds_per_image": elbo_s / n,
        "flops_per_sample": per_sample_flops,
        "flops_per_image_fixed": per_image_flops,
        "nll_bits_per_dim": float(nll.mean()) / (model.num_pixels * math.log(2)),
        "pass_rows": one,
        "pass_peak_memory": mem,
    }


def run(args: argparse.Namespace, device: torch.device) -> dict:
    defaults(args, device)
    limit = dense_conv_flops_per_s(device, args.quick)
    model = real_size_model(args.real_preset, device)
    ks = [int(v) for v in str(args.real_ks).split(",")]
    res = {
        "model": f"{args.real_preset}, random weights: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{model.num_layers} stochastic layers",
        "limit": limit,
        "attacks": [],
        "flops_per_pgd_step": {},
    }
    for k in ks:
        for optimizer in ("pgd", "auto"):
            t = time.perf_counter()
            res["attacks"].append(measure_attack(model, k, optimizer, args, device))
            print(
                f"  k={k} {optimizer}: {res['attacks'][-1]['seconds_per_point']:.1f} s per point "
                f"(measured in {time.perf_counter() - t:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        res["flops_per_pgd_step"][k] = measure_pgd_flops(model, k, device)
    res["eval"] = measure_eval(model, args, device)
    again = dense_conv_flops_per_s(device, args.quick)["flops_per_s"]
    res["limit_before_after"] = [limit["flops_per_s"], again]
    e = res["eval"]
    clock = "cpu_seconds" if device.type == "cpu" else "seconds"  # on the CPU: what competition does not inflate
    res["cost_clock"] = clock
    res["cifar10_test_split_hours"] = e[f"{clock}_per_image"] * TEST_SPLIT / 3600
    res["sweep_50_points_hours"] = {
        f"{a['optimizer']} k={a['k']}": a[f"{clock}_per_point"] * SWEEP_POINTS / 3600 for a in res["attacks"]
    }
    return res


def rows(res: dict) -> list[str]:
    lim = res["limit"]["flops_per_s"]
    out = [
        "| workload | seconds per point (per image for eval): wall, CPU | images per pass x passes "
        "| FLOP per step / sample | of limit | peak memory of a pass |",
        "|---|---|---|---|---|---|",
    ]
    for a in res["attacks"]:
        flops = res["flops_per_pgd_step"].get(a["k"], res["flops_per_pgd_step"].get(str(a["k"]), 0))
        frac = ""
        if a["optimizer"] == "pgd" and flops:
            step = next(m["seconds_per_step"] for m in a["members"])
            frac = f"{flops * a['images_per_pass'] / step / lim:.1%}" if step > 0 else ""
        out.append(
            f"| attack {a['optimizer']} k={a['k']}, {a['restarts']} restarts x {a['steps']} steps "
            f"| {a['seconds_per_point']:.1f}, {a['cpu_seconds_per_point']:.1f} "
            f"| {a['images_per_pass']} x {a['passes_per_point']} "
            f"| {flops / 1e9:.3g} G | {frac} | {a['pass_peak_memory']['bytes'] / 2**20:.0f} MiB "
            f"(budget {a['max_batch_mib']} MiB) |"
        )
    e = res["eval"]
    frac = (
        f"{e['flops_per_sample'] * e['iw_samples'] / e['seconds_per_image'] / lim:.1%}" if e["flops_per_sample"] else ""
    )
    out.append(
        f"| eval NLL K={e['iw_samples']} (+ ELBO {e['elbo_seconds_per_image']:.2f} s) "
        f"| {e['seconds_per_image']:.1f}, {e['cpu_seconds_per_image']:.1f} "
        f"| {e['images']} images, {e['pass_rows']} samples per pass | {e['flops_per_sample'] / 1e9:.3g} G "
        f"| {frac} | {e['pass_peak_memory']['bytes'] / 2**20:.0f} MiB (budget {e['max_batch_mib']} MiB) |"
    )
    return out


def table(res: dict, device: str) -> str:
    lines = [
        f"{res['model']}; device {device}; limit {res['limit']['flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"(again after: {res['limit_before_after'][1] / 1e9:.1f})",
        "",
        *rows(res),
        "",
        f"from {res['cost_clock'].replace('_', ' ')}: "
        f"CIFAR-10 test split (10,000 images) at K={res['eval']['iw_samples']}: "
        f"{res['cifar10_test_split_hours']:.1f} h; a 50-point sweep: "
        + ", ".join(f"{k} {h:.1f} h" for k, h in res["sweep_50_points_hours"].items()),
        "attack seconds: each attack (each ensemble member) timed at 1 and 1 + --real-timed-steps steps, the per-step "
        "part scaled to the steps given",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from robustvae.device import resolve_device

    ap = argparse.ArgumentParser(prog="python -m benchmarks.real_size", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    ap.add_argument("--quick", action="store_true", help="fewer k, restarts and images")
    ap.add_argument("--out", type=Path, help=f"JSON results (default {RESULTS.name} next to this file)")
    add_arguments(ap)
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    res = run(args, dev)
    res.update(
        {
            "command": "python -m benchmarks.real_size " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": machine(),
            "device": str(dev),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average": os.getloadavg(),
        }
    )
    res["table"] = table(res, str(dev))
    print(res["table"])
    out = args.out or (RESULTS.with_name(f"real-size-results-{dev.type}{'-quick' if args.quick else ''}.json"))
    out.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
