"""One optimisation step (:func:`train_step`) and the validation bound (:func:`evaluate_nelbo`)."""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from robustvae.config import TrainConfig
from robustvae.distributed import DistContext
from robustvae.models import rng
from robustvae.training.build import TrainParts


@dataclass(frozen=True)
class StepResult:
    """What one step did. The loss terms are means over the global batch (nats per image)."""

    nelbo: float
    kl: float
    recon: float
    bpd: float
    grad_norm: float | None  # None when the loss was non-finite and no gradient was computed
    skipped: bool


def train_step(
    parts: TrainParts, x: torch.Tensor, tc: TrainConfig, dist: DistContext, batch_size: int, rows: tuple[int, int]
) -> StepResult:
    """Forward this process's rows ``x`` (rows ``rows`` of a global batch of ``batch_size``), then update or skip.

    The update is skipped on every process when the global loss is not finite, or when
    the clipped gradient norm is not finite or above ``tc.skip_threshold`` on any
    process. The EMA follows the applied updates; the schedule advances either way.
    """
    model, opt = parts.model, parts.opt
    lo, hi = rows
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (x.device.type == "cuda" and tc.amp) else nullcontext()
    with autocast, rng.batch_slice(batch_size, lo, hi) if dist.enabled else nullcontext():
        res = parts.net(x)
    loss = res.nelbo.mean() / model.num_pixels  # nats per dimension
    opt.zero_grad(set_to_none=True)
    # global-batch sums: for the log, and so a non-finite loss on any process skips on all
    sums = dist.all_sum(torch.stack([res.nelbo.sum(), res.kl.sum(), res.recon.sum(), res.bpd.sum()]).detach())
    nelbo, kl, recon, bpd = (v / batch_size for v in sums.tolist())
    gn = None
    skip = not math.isfinite(nelbo)
    if not skip:
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(parts.params, tc.grad_clip).item()
        skip = not math.isfinite(gn) or gn > tc.skip_threshold
        if dist.enabled:  # the averaged gradients agree, but make the decision explicitly joint
            skip = bool(dist.all_sum(torch.tensor([float(skip)])).item() > 0)
    if skip:
        opt.zero_grad(set_to_none=True)
    else:
        opt.step()
        if parts.ema is not None:
            parts.ema.update_parameters(model)
    with warnings.catch_warnings():
        # a skipped first update calls scheduler.step() before optimizer.step(); that is intended here
        warnings.filterwarnings(
            "ignore", message=r"Detected call of `lr_scheduler.step\(\)` before", category=UserWarning
        )
        parts.sched.step()
    return StepResult(nelbo=nelbo, kl=kl, recon=recon, bpd=bpd, grad_norm=gn, skipped=skip)


@torch.no_grad()
def evaluate_nelbo(
    model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device, seed: int = 0
) -> dict[str, float]:
    """Mean -ELBO terms over ``x`` with a fixed noise seed that leaves the global RNG untouched."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        tot, kl, recon = 0.0, 0.0, 0.0
        for i in range(0, x.shape[0], batch_size):
            r = model.elbo(x[i : i + batch_size].to(device))
            tot += r.nelbo.sum().item()
            kl += r.kl.sum().item()
            recon += r.recon.sum().item()
    n = x.shape[0]
    npix = model.num_pixels
    return {"nelbo": tot / n, "kl": kl / n, "recon": recon / n, "bpd": tot / n / (npix * math.log(2))}
