"""Training throughput of a preset: one full optimiser step, as the trainer takes it."""

from __future__ import annotations

import torch

from benchmarks.common import LAYOUTS, best_time, count_flops, peak_memory, synchronizer
from robustvae.registry import build_model, get_preset


def measure_training(
    preset: str, batch_size: int, device: torch.device, repeats: int, *, amp: bool = True, compile: bool = False
) -> dict[str, object]:
    """Images/s, FLOPs per image and peak memory of a training step of ``preset``.

    The step is the trainer's: forward, -ELBO per dimension, backward, gradient clipping,
    AdamW; bf16 autocast on CUDA when ``amp`` and the preset asks for it (as the trainer
    does). Timed in both memory layouts (the model's default is channels-last), so the
    layout's speed-up on this device is measured in the same run. ``compile`` wraps the
    model in ``torch.compile`` (a minute or more to start on CPU; off by default).
    """
    cfg = get_preset(preset)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    run = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    c, s = cfg.model.image_channels, cfg.model.image_size
    x = torch.rand(batch_size, c, s, s, device=device)
    if cfg.model.likelihood == "bernoulli":
        x = torch.bernoulli(x)
    bf16 = amp and cfg.train.amp and device.type == "cuda"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            res = run(x)
        (res.nelbo.mean() / model.num_pixels).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()

    flops = count_flops(step)
    sync = synchronizer(device)
    seconds = {}
    # the default layout last (the memory probe below uses it); a compiled model is timed in it only
    for name in ("channels_last",) if compile else ("contiguous", "channels_last"):
        model.use_channels_last(name == "channels_last")
        x = x.contiguous(memory_format=LAYOUTS[name])
        seconds[name] = best_time(step, repeats, warmup=2, sync=sync)
    t = seconds["channels_last"]
    return {
        "preset": preset,
        "batch_size": batch_size,
        "bf16_autocast": bf16,
        "compiled": compile,
        "seconds_per_step": t,
        "images_per_s": batch_size / t,
        "flops_per_image": flops / batch_size,
        "achieved_flops_per_s": flops / t,
        "channels_last_speedup": seconds["contiguous"] / t if "contiguous" in seconds else None,
        "peak_memory": peak_memory(step, device),
    }
