"""Multi-process runs under torchrun: process-group set-up, the rank's device, joint decisions.

robustvae never launches processes itself: ``torchrun --nproc_per_node N -m robustvae
train ...`` (or the console script under torchrun) starts them, and this module reads
the rendezvous variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). Without them a run is a plain single process. Backends: gloo on CPU,
NCCL on CUDA (``--backend auto`` picks by device). Every rank draws the same random
numbers (see :mod:`robustvae.models.random`), so results do not depend on the number
of processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from robustvae.device import resolve_device
from robustvae.errors import RobustVAEError


class RankError(RobustVAEError):
    """An error of one process (not shared by all ranks): every rank that meets it reports it."""

    every_rank = True


RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BACKENDS = ("auto", "gloo", "nccl")
# Collectives wait at most this long for a slow peer (validation on rank 0, the attack's final merge).
TIMEOUT_ENV = "ROBUSTVAE_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 4 * 3600


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: rank 0 of 1 for a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum of ``values`` over all processes (the tensor itself when single-process).

        Gloo reduces CPU tensors and NCCL CUDA tensors, so the values travel on the
        backend's device and come back on their own.
        """
        if not self.enabled:
            return values
        dev = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        buf = values.detach().to(dev, torch.float64).clone()
        dist.all_reduce(buf)
        return buf.to(values.device)


SINGLE = DistContext()
_current = SINGLE


def current() -> DistContext:
    """The context of the running command (single-process outside :func:`distributed`)."""
    return _current


def launched_by_torchrun(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return any(v in env for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"))


def _read_env(env: Mapping[str, str]) -> tuple[int, int, int]:
    missing = [v for v in RENDEZVOUS_VARS if not env.get(v)]
    if missing:
        raise RobustVAEError(
            f"torchrun rendezvous variable(s) {', '.join(missing)} not set; launch with "
            f"'torchrun --nproc_per_node N -m robustvae ...' (or --standalone), or unset RANK/WORLD_SIZE/LOCAL_RANK "
            f"for a single-process run"
        )
    try:
        rank, world, local = (int(env[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise RobustVAEError(
            f"torchrun variables must be integers (RANK={env['RANK']!r}, WORLD_SIZE={env['WORLD_SIZE']!r}, "
            f"LOCAL_RANK={env['LOCAL_RANK']!r})"
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise RobustVAEError(f"inconsistent torchrun variables: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


def resolve(backend: str = "auto", device: str = "auto", env: Mapping[str, str] | None = None):
    """(rank, world, local_rank, backend, device) for this process, validated, without joining anything."""
    env = os.environ if env is None else env
    backend = str(backend).strip().lower()
    if backend not in BACKENDS:
        raise RobustVAEError(
            f"unsupported backend {backend!r}: use gloo (CPU), nccl (CUDA) or auto (gloo on CPU, nccl on CUDA)"
        )
    if not launched_by_torchrun(env):
        return 0, 1, 0, None, resolve_device(device)
    rank, world, local = _read_env(env)
    dev = resolve_device(device)
    if dev.type == "cuda":
        if str(device).strip().lower().startswith("cuda:") and world > 1:
            raise RobustVAEError(
                f"--device {device} pins every process to one GPU; under torchrun use --device cuda "
                f"(each process takes cuda:LOCAL_RANK)"
            )
        if local >= torch.cuda.device_count():
            raise RankError(
                f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                f"lower --nproc_per_node"
            )
        dev = torch.device("cuda", local)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and (dev.type != "cuda" or not dist.is_nccl_available()):
        raise RobustVAEError("backend nccl needs CUDA GPUs (and a torch built with NCCL); use --backend gloo on CPU")
    if backend == "gloo" and not dist.is_gloo_available():
        raise RobustVAEError("this torch build has no gloo backend; use --backend nccl on CUDA")
    return rank, world, local, backend, dev


@contextmanager
def distributed(backend: str = "auto", device: str = "auto") -> Iterator[tuple[DistContext, torch.device]]:
    """Join the torchrun process group (when launched by torchrun) for the body; leave it after."""
    global _current
    rank, world, local, backend_name, dev = resolve(backend, device)
    if world == 1:
        yield SINGLE, dev
        return
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    try:
        dist.init_process_group(backend_name, init_method="env://", rank=rank, world_size=world, timeout=timeout)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RankError(
            f"rank {rank} could not join the rendezvous at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
            f"with {backend_name} ({first}); check MASTER_ADDR/MASTER_PORT or launch with torchrun --standalone"
        ) from None
    _current = DistContext(rank, world, local, backend_name)
    try:
        yield _current, dev
    finally:
        _current = SINGLE
        if dist.is_initialized():
            dist.destroy_process_group()
