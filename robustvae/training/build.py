"""Setting up a run: the training batches, the model and its wrapper, optimiser, schedule and EMA."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from robustvae.config import Config, TrainConfig
from robustvae.data import check_compatible, eval_images, load_dataset, prepare
from robustvae.distributed import DistContext
from robustvae.errors import RobustVAEError
from robustvae.registry import build_model
from robustvae.seeding import derive_seed


def lr_factor(step: int, total: int, warmup: int, lr: float, lr_min: float) -> float:
    """Linear warm-up to 1, then cosine decay to lr_min / lr at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    m = lr_min / lr
    return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class TrainData:
    """The training split cut into seeded global batches, this process's rows of each, and the validation images.

    A global batch holds ``batch_size`` images for any number of processes; this
    process keeps rows ``lo:hi`` of it. The last incomplete batch of an epoch is dropped.
    """

    images: torch.Tensor
    val: torch.Tensor
    binary: bool
    seed: int
    size: int  # training images
    batch_size: int
    steps_per_epoch: int
    total: int  # steps of the whole run
    lo: int
    hi: int

    @classmethod
    def load(cls, cfg: Config, dist: DistContext) -> TrainData:
        tc = cfg.train
        check_compatible(cfg.data, cfg.model.image_channels, cfg.model.image_size)
        ds = load_dataset(cfg.data)
        n, bs = len(ds.train), tc.batch_size
        if bs > n:
            raise RobustVAEError(f"train.batch_size={bs} is larger than the {n} training images; lower --batch-size")
        if bs % dist.world_size:
            raise RobustVAEError(
                f"train.batch_size={bs} (the global batch) does not split evenly over {dist.world_size} processes; "
                f"use a batch size divisible by --nproc_per_node"
            )
        share = bs // dist.world_size
        spe = n // bs
        val = eval_images(ds, "val", cfg.model.binary)
        if tc.val_batches is not None:
            val = val[: tc.val_batches * bs]
        return cls(
            images=ds.train.images,
            val=val,
            binary=cfg.model.binary,
            seed=tc.seed,
            size=n,
            batch_size=bs,
            steps_per_epoch=spe,
            total=tc.steps if tc.steps is not None else tc.epochs * spe,
            lo=dist.rank * share,
            hi=(dist.rank + 1) * share,
        )

    def batch(self, step: int, device: torch.device) -> torch.Tensor:
        """This process's rows of the global batch of ``step``, binarised when the model is binary, on ``device``."""
        epoch, b = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)))
        idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
        x = prepare(self.images[idx], self.binary, torch.Generator().manual_seed(derive_seed(self.seed, 1, step)))
        x = x[self.lo : self.hi]
        return (x.pin_memory() if device.type == "cuda" else x).to(device, non_blocking=True)


@dataclass
class TrainParts:
    """What a run trains: the model, the wrapper it is run through, its parameters, optimiser, schedule and EMA."""

    model: nn.Module  # the plain module: checkpoints save its weights
    net: nn.Module  # ``model``, or its DistributedDataParallel / torch.compile wrapper: forward through this
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


def wrap_model(model: nn.Module, tc: TrainConfig, device: torch.device, dist: DistContext) -> nn.Module:
    """The module to forward through: DistributedDataParallel under torchrun, compiled when asked."""
    net = model
    if dist.enabled:
        # forward through the wrapper, or DDP never averages the gradients
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        import torch._inductor.config as inductor_config

        # draw random numbers as eager torch does, so compiled runs resume and split over processes exactly
        inductor_config.fallback_random = True
        net = torch.compile(net)  # checkpoints keep saving the plain module's weights
    return net


def build_parts(cfg: Config, data: TrainData, device: torch.device, dist: DistContext, resume: bool) -> TrainParts:
    """The seeded model (data-dependent set-up done on a new run), AdamW, the warm-up + cosine schedule and EMA."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model).to(device)
    if not resume and hasattr(model, "fit_data"):
        # data-dependent set-up (DCT-VAE's context scale) from the training split only, before the
        # first step and before EMA copies the model; a resumed run restores it from last.pt
        model.fit_data(data.images)
    model.use_channels_last(tc.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    net = wrap_model(model, tc, device, dist)
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, data.total, tc.warmup_steps, tc.lr, tc.lr_min)
    )
    ema = None
    if tc.ema_decay > 0:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
    return TrainParts(model=model, net=net, params=params, opt=opt, sched=sched, ema=ema)
