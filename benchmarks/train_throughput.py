"""Training throughput of a preset against the machine's dense-convolution limit.

    python benchmarks/train_throughput.py [--preset vdvae-mnist] [--batch-size 128] [--device auto]

Prints images/s, FLOPs per image (forward + backward, FlopCounterMode), achieved FLOP/s
and its fraction of the dense-convolution FLOP/s measured in the same run, and writes
them to benchmarks/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import best_time, count_flops, dense_conv_flops_per_s, machine  # noqa: E402
from robustvae.device import resolve_device  # noqa: E402
from robustvae.registry import build_model, get_preset  # noqa: E402


def measure(preset: str, batch_size: int, device: torch.device, repeats: int) -> dict[str, float]:
    cfg = get_preset(preset)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    c, s = cfg.model.image_channels, cfg.model.image_size
    x = torch.rand(batch_size, c, s, s, device=device)
    if cfg.model.likelihood == "bernoulli":
        x = torch.bernoulli(x)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(x).nelbo.mean() / model.num_pixels
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()

    flops = count_flops(step)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t = best_time(step, repeats, warmup=2, sync=sync)
    return {"preset": preset, "batch_size": batch_size, "seconds_per_step": t, "images_per_s": batch_size / t,
            "flops_per_image": flops / batch_size, "achieved_flops_per_s": flops / t}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", action="append", help="preset(s) to measure (default: vdvae-mnist)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("train_throughput.json"))
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    limit = dense_conv_flops_per_s(dev)
    rows = [measure(p, args.batch_size, dev, args.repeats) for p in (args.preset or ["vdvae-mnist"])]
    print(f"device {dev}, {torch.get_num_threads()} threads; dense 3x3 conv fwd+bwd limit: {limit / 1e9:.1f} GFLOP/s")
    print(f"{'preset':<22}{'batch':>6}{'img/s':>10}{'GFLOP/img':>11}{'GFLOP/s':>10}{'of limit':>10}")
    for r in rows:
        r["fraction_of_limit"] = r["achieved_flops_per_s"] / limit
        print(f"{r['preset']:<22}{r['batch_size']:>6}{r['images_per_s']:>10.1f}{r['flops_per_image'] / 1e9:>11.3f}"
              f"{r['achieved_flops_per_s'] / 1e9:>10.1f}{r['fraction_of_limit']:>10.1%}")
    result = {"machine": machine(), "device": str(dev), "dense_conv_flops_per_s": limit, "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
