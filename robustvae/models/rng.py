"""The models' random draws, made independent of how a batch is split over processes.

Every random number a model draws while training (posterior samples, the diffusion
step and noise, the context's dither) goes through :func:`randn_like`,
:func:`rand_like` or :func:`randint`. Outside :func:`batch_slice` they are torch's own
functions. Inside ``batch_slice(total, start, stop)`` each draw is made for the whole
``total``-image batch from the (identically seeded) global generator and rows
``start:stop`` are returned: a process that holds rows ``start:stop`` of a global
batch then sees exactly the numbers a single process training on the whole batch
sees, and all processes' generators stay in step. This is what makes a torchrun run
equal a single-process run with the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

_slice: tuple[int, int, int] | None = None


@contextmanager
def batch_slice(total: int, start: int, stop: int) -> Iterator[None]:
    """Draw for a ``total``-image batch and keep rows ``start:stop`` (this process's share)."""
    global _slice
    if not 0 <= start < stop <= total:
        raise ValueError(f"bad batch slice {start}:{stop} of {total}")
    previous, _slice = _slice, (total, start, stop)
    try:
        yield
    finally:
        _slice = previous


def _full_shape(shape: tuple[int, ...]) -> tuple[tuple[int, ...], slice | None]:
    if _slice is None:
        return shape, None
    total, start, stop = _slice
    if not shape or shape[0] != stop - start:
        raise RuntimeError(
            f"random draw of shape {tuple(shape)} inside batch_slice({total}, {start}, {stop}): "
            f"draws must be batch-first with {stop - start} rows"
        )
    return (total, *shape[1:]), slice(start, stop)


def randn_like(t: Tensor) -> Tensor:
    shape, rows = _full_shape(tuple(t.shape))
    out = torch.randn(shape, dtype=t.dtype, device=t.device)
    return out if rows is None else out[rows]


def rand_like(t: Tensor) -> Tensor:
    shape, rows = _full_shape(tuple(t.shape))
    out = torch.rand(shape, dtype=t.dtype, device=t.device)
    return out if rows is None else out[rows]


def randint(low: int, high: int, size: tuple[int, ...], device: torch.device | str | None = None) -> Tensor:
    shape, rows = _full_shape(tuple(size))
    out = torch.randint(low, high, shape, device=device)
    return out if rows is None else out[rows]
