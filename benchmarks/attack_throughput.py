"""The batched attack engine against the same attack one point and one restart at a time.

    python benchmarks/attack_throughput.py [--preset vdvae-mnist] [--checkpoint RUN] [--points 10]
        [--restarts 5] [--steps 20] [--k L]

The reference code attacked one image and one restart at a time; robustvae optimises
all points x restarts in one batch, each with its own seeded start and best iterate.
Both are run here on the same model, images, seeds and steps; the script checks that
they give the same adversarial images and prints the speed-up, the achieved FLOP/s
and its fraction of the dense-convolution FLOP/s measured in the same run, plus the
same comparison for batched vs per-image MS-SSIM. Results go to
benchmarks/attack_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import count_flops, dense_conv_flops_per_s, machine  # noqa: E402
from robustvae.attacks import LatentPGD  # noqa: E402
from robustvae.device import resolve_device  # noqa: E402
from robustvae.metrics import ms_ssim  # noqa: E402
from robustvae.registry import build_model, get_preset  # noqa: E402


def _model(args, device):
    if args.checkpoint:
        from robustvae import zoo

        return zoo.load(args.checkpoint, device=device)
    torch.manual_seed(0)
    return build_model(get_preset(args.preset).model).to(device).eval()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="vdvae-mnist")
    ap.add_argument("--checkpoint", default=None, help="use a trained model instead of a freshly initialised preset")
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--k", type=int, default=None, help="layers under attack (default: all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("attack_throughput.json"))
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = _model(args, dev)
    k = args.k or model.num_layers
    c, s = model.cfg.image_channels, model.cfg.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.points, c, s, s, generator=g).to(dev)
    X = x.repeat_interleave(args.restarts, 0)
    seeds = list(range(X.shape[0]))
    limit = dense_conv_flops_per_s(dev)

    def attack():
        return LatentPGD(model, k=k, eps=0.1, steps=args.steps)

    sync()
    t = time.perf_counter()
    batched = attack()(X, seeds=seeds)
    sync()
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    one_by_one = torch.cat([attack()(X[i : i + 1], seeds=[seeds[i]]) for i in range(X.shape[0])])
    sync()
    t_single = time.perf_counter() - t
    max_diff = (batched - one_by_one).abs().max().item()
    # FLOPs of the batched run: one objective forward + backward per step, plus the final scoring pass
    a = attack()
    ref = a.objective.reference(X)
    d = X.clone().requires_grad_(True)
    step_flops = count_flops(lambda: torch.autograd.grad(a.objective(d, ref).sum(), d))
    flops = step_flops * (args.steps + 1)

    # MS-SSIM: one batched call against one call per image
    y = (X + 0.1 * torch.randn(X.shape, generator=g).to(dev)).clamp(0, 1)
    sync()
    t = time.perf_counter()
    for _ in range(5):
        batched_ms = ms_ssim(X, y)
    sync()
    t_ms_batched = (time.perf_counter() - t) / 5
    t = time.perf_counter()
    single_ms = torch.cat([ms_ssim(X[i : i + 1], y[i : i + 1]) for i in range(X.shape[0])])
    sync()
    t_ms_single = time.perf_counter() - t

    res = {
        "machine": machine(), "device": str(dev), "model": args.checkpoint or args.preset, "k": k,
        "points": args.points, "restarts": args.restarts, "steps": args.steps,
        "dense_conv_flops_per_s": limit,
        "attack": {"batched_s": t_batched, "one_at_a_time_s": t_single, "speedup": t_single / t_batched,
                   "max_abs_difference": max_diff, "flops": flops, "achieved_flops_per_s": flops / t_batched,
                   "fraction_of_limit": flops / t_batched / limit},
        "ms_ssim": {"images": X.shape[0], "batched_s": t_ms_batched, "per_image_s": t_ms_single,
                    "speedup": t_ms_single / t_ms_batched,
                    "max_abs_difference": (batched_ms - single_ms).abs().max().item()},
    }
    a_, m_ = res["attack"], res["ms_ssim"]
    print(f"device {dev}, {torch.get_num_threads()} threads; dense 3x3 conv fwd+bwd limit {limit / 1e9:.1f} GFLOP/s")
    print(f"attack {res['model']} k={k}: {args.points} points x {args.restarts} restarts x {args.steps} steps")
    print(f"  batched {a_['batched_s']:.2f} s | one at a time {a_['one_at_a_time_s']:.2f} s | speed-up "
          f"{a_['speedup']:.1f}x | max |difference| {a_['max_abs_difference']:.2e}")
    print(f"  batched: {a_['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s = {a_['fraction_of_limit']:.1%} of the limit")
    print(f"ms_ssim ({m_['images']} images of {c}x{s}x{s}): batched {m_['batched_s'] * 1e3:.1f} ms | per image "
          f"{m_['per_image_s'] * 1e3:.1f} ms | speed-up {m_['speedup']:.1f}x | max |difference| {m_['max_abs_difference']:.1e}")
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
