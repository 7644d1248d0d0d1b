"""``--device auto|cpu|cuda`` -> a torch.device, with a clear error when CUDA is absent; ``--threads``: torch's CPU
threads for a command."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from robustvae.errors import RobustVAEError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else the CPU."""
    import torch  # not at import time: the CLI reads THREADS_REASON before it needs torch

    if isinstance(name, torch.device):
        return name
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RobustVAEError(
                f"--device {name} was asked for but no CUDA GPU is visible (torch.cuda.is_available() is False); "
                f"use --device cpu or --device auto"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RobustVAEError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return dev
    raise RobustVAEError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


# why a command runs on one CPU thread unless told otherwise (--threads, OMP_NUM_THREADS)
THREADS_REASON = (
    "the models are small enough that more threads gain little, and on a 2-core machine busy with "
    "other work two threads made training over 100 times slower (OpenMP threads waiting for a core)"
)


@contextlib.contextmanager
def cpu_threads(threads: int | None = None) -> Iterator[int]:
    """torch's CPU threads while a command runs: ``threads``, else 1 unless ``OMP_NUM_THREADS`` is set (then torch
    follows it); the previous number is restored afterwards. Yields the number in use."""
    if threads is not None and threads < 1:
        raise RobustVAEError(f"--threads must be a positive integer, got {threads}")
    import torch

    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = 1
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
