"""Shared pieces of the benchmarks: the machine's limit, FLOP counting, timing and peak memory."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What to call before reading a clock: wait for the device's queued work (nothing on CPU)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of one call of ``fn``, as torch's FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def best_time(
    fn: Callable[[], object], repeats: int, warmup: int = 1, sync: Callable[[], None] = lambda: None
) -> float:
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


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> tuple[object, float]:
    """(result, seconds) of one call of ``fn``."""
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def dense_conv_flops_per_s(device: torch.device, quick: bool = False, autocast: bool = False) -> dict[str, object]:
    """The machine's limit: FLOP/s of a large 3x3 convolution, forward + backward, in its faster layout.

    Both memory layouts are timed and the faster one is the limit, so that no workload is
    flattered by a limit measured in a slow layout. ``autocast``: under bf16 autocast (CUDA).
    """
    c, s, b = (32, 16, 8) if quick else (128, 32, 32)
    per_layout = {}
    for name, fmt in LAYOUTS.items():
        conv = torch.nn.Conv2d(c, c, 3, padding=1).to(device, memory_format=fmt)
        x = torch.randn(b, c, s, s, device=device).to(memory_format=fmt).requires_grad_(True)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                y = conv(x)
            y.float().sum().backward()

        flops = count_flops(step)
        per_layout[name] = flops / best_time(
            step, 2 if quick else 5, warmup=1 if quick else 2, sync=synchronizer(device)
        )
    best = max(per_layout, key=per_layout.get)
    return {
        "flops_per_s": per_layout[best],
        "layout": best,
        "per_layout": per_layout,
        "workload": f"conv {c}->{c} 3x3 on {b}x{c}x{s}x{s}, forward + backward" + (", bf16" if autocast else ""),
    }


def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes held by torch's CPU allocator during ``fn`` above what it held before (torch.profiler's
    allocation events carry the allocator's running total)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    events = []
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            events.append((e.start_time_ns, e.extra_fields.alloc_size, e.extra_fields.total_allocated))
    if not events:
        return 0
    events.sort()
    # the running total carries blocks that earlier profiled calls left alive: measure from this call's start
    _, size, total = events[0]
    return max(t for _, _, t in events) - (total - size)


def peak_memory(fn: Callable[[], object], device: torch.device) -> dict[str, object]:
    """Peak tensor memory of one call of ``fn`` above what was held before it, and how it was measured.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: torch.profiler's allocation events
    (tracemalloc does not see torch's allocator, and ru_maxrss only ever grows in one process).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return {"bytes": torch.cuda.max_memory_allocated(device) - before, "method": "torch.cuda.max_memory_allocated"}
    return {"bytes": _cpu_peak_bytes(fn), "method": "torch.profiler allocation events (CPU allocator)"}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, object]:
    return {
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
