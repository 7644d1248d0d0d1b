"""Shared pieces of the benchmarks: the machine's dense-convolution limit and FLOP counting."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of one call of ``fn``, as torch's FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 1, sync: Callable[[], None] = lambda: None) -> float:
    """The fastest of ``repeats`` timed calls (after ``warmup`` untimed ones), in seconds."""
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def dense_conv_flops_per_s(device: torch.device, repeats: int = 5) -> float:
    """The machine's limit: FLOP/s of a large 3x3 convolution, forward + backward (float32)."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(device)
    x = torch.randn(32, 128, 32, 32, device=device, requires_grad=True)

    def step():
        conv(x).sum().backward()

    flops = count_flops(step)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return flops / best_time(step, repeats, warmup=2, sync=sync)


def machine() -> dict[str, object]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
