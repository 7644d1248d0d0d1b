"""Each speed change of issue 7 against the code before it, timed side by side in one run.

    python -m benchmarks.before_after [--rev 53180d5] [--checkpoint RUN] [--quick]

The old code is read from git at ``--rev`` (default: the commit before these changes) and
loaded next to the working tree's, so old and new run on the same model, inputs and
threads, alternating, best of ``--repeats``. Each row: old time / new time, and how far
apart their results are (0 where the change is exact; sign steps of the attack can flip
where a gradient is ~0, so adversarial images are compared by their share of equal pixels).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.attack import inputs
from benchmarks.common import best_time, synchronizer
from robustvae import metrics
from robustvae.attacks import LatentPGD
from robustvae.attacks.objectives import LatentObjective
from robustvae.device import resolve_device
from robustvae.registry import build_model, get_preset

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "53180d5"  # the last commit before the speed work of issue 7


def old_module(path: str, rev: str) -> types.ModuleType:
    """The file ``path`` as it was at git revision ``rev``, loaded as a standalone module."""
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True, capture_output=True, text=True
    ).stdout
    name = f"_before_{rev}_" + path.removesuffix(".py").replace("/", "_")
    mod = sys.modules[name] = types.ModuleType(name)
    exec(compile(src, f"{rev}:{path}", "exec"), mod.__dict__)
    return mod


@contextmanager
def method(obj, name: str, fn):
    """``obj.name`` replaced by the function ``fn`` bound to ``obj``, for the duration."""
    setattr(obj, name, types.MethodType(fn, obj))
    try:
        yield
    finally:
        delattr(obj, name)


def side_by_side(old, new, repeats: int, sync) -> tuple[float, float]:
    """Best times of ``old`` and ``new``, measured alternately so that load on the machine hits both."""
    old(), new()
    t_old = t_new = float("inf")
    for _ in range(repeats):
        t_new = min(t_new, best_time(new, 1, 0, sync))
        t_old = min(t_old, best_time(old, 1, 0, sync))
    return t_old, t_new


def _agreement(a, b) -> dict[str, float]:
    """Largest difference relative to the largest value, and the share of entries equal within 1e-5."""
    gap = (a - b).abs()
    return {
        "max_rel_difference": (gap.max() / b.abs().max().clamp_min(1e-30)).item(),
        "equal_share": (gap <= 1e-5).float().mean().item(),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.before_after", description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default=BEFORE, help=f"git revision of the old code (default {BEFORE})")
    ap.add_argument("--checkpoint", help="trained model (default: a freshly initialised vdvae-mnist)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    sync = synchronizer(dev)
    n, steps = (8, 1) if args.quick else (250, 5)
    if args.checkpoint:
        from robustvae import zoo

        model = zoo.load(args.checkpoint, device=dev).model
    else:
        torch.manual_seed(0)
        model = build_model(get_preset("vdvae-mnist").model).to(dev).eval()
    old_vdvae = old_module("robustvae/models/vdvae.py", args.rev)
    old_base = old_module("robustvae/attacks/base.py", args.rev)
    old_metrics = old_module("robustvae/metrics.py", args.rev)
    x = inputs(model, n, dev)
    seeds = list(range(n))
    rows = []

    def record(change: str, workload: str, old, new) -> None:
        t_old, t_new = side_by_side(old, new, args.repeats, sync)
        rows.append(
            {
                "change": change,
                "workload": workload,
                "old_s": t_old,
                "new_s": t_new,
                "ratio": t_old / t_new,
                **_agreement(old(), new()),
            }
        )

    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dev)).clamp(0, 1)
    record(
        "MS-SSIM as matrix products, cached windows",
        f"{n} pairs, one call",
        lambda: old_metrics.ms_ssim(x, y),
        lambda: metrics.ms_ssim(x, y),
    )

    for k in sorted({1, model.num_layers}):
        objective = LatentObjective(model, k)
        ref = objective.reference(x)
        d = y.clone().requires_grad_(True)  # away from x: at x itself the divergence and its gradient vanish

        def grad():
            return torch.autograd.grad(objective(d, ref).sum(), d)[0]

        def old_stop():
            with method(model, "_top_down", old_vdvae.VDVAE._top_down):
                return grad()

        def contiguous():
            model.use_channels_last(False)
            try:
                return grad()
            finally:
                model.use_channels_last(True)

        record("encode(x, k) skips the k-th prior net", f"attack step (fwd + bwd), k={k}, {n} images", old_stop, grad)
        record("channels-last layout", f"attack step (fwd + bwd), k={k}, {n} images", contiguous, grad)

        def attack_new():
            return LatentPGD(model, k=k, eps=0.1, steps=steps)(x, seeds=seeds)

        def attack_old():
            atk = LatentPGD(model, k=k, eps=0.1, steps=steps)
            with method(atk, "_init_state", lambda self, n, device: {}):  # the old loop's signature; PGD keeps no state
                return old_base.LatentAttack.forward(atk, x, seeds=seeds)

        def attack_before():  # every change undone: old loop, old top-down pass, contiguous layout
            model.use_channels_last(False)
            try:
                with method(model, "_top_down", old_vdvae.VDVAE._top_down):
                    return attack_old()
            finally:
                model.use_channels_last(True)

        record("attack loop without host syncs", f"PGD k={k}, {n} images x {steps} steps", attack_old, attack_new)
        record("all of the above", f"PGD k={k}, {n} images x {steps} steps", attack_before, attack_new)

    print(f"device {dev}, {torch.get_num_threads()} thread(s); old code from git {args.rev}\n")
    print("| change | workload | before | after | speed-up | max difference / max value | equal within 1e-5 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['change']} | {r['workload']} | {r['old_s'] * 1e3:.1f} ms | {r['new_s'] * 1e3:.1f} ms "
            f"| {r['ratio']:.2f}x | {r['max_rel_difference']:.1e} | {r['equal_share']:.1%} |"
        )
    return rows


if __name__ == "__main__":
    main()
