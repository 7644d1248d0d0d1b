"""Training: AdamW + cosine schedule, clipping, gradient skipping, EMA, atomic checkpoints, resume.

A run directory holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one
JSON line per logged step and per validation), ``last.pt`` (everything needed to
resume), ``best.pt`` (the weights with the best validation -ELBO) and
``summary.json``. Data order, binarisation and model noise are all seeded, and the
RNG state is checkpointed, so on CPU a resumed run ends with exactly the weights of
an uninterrupted one.

Under torchrun (:mod:`robustvae.distributed`) the model is wrapped in
DistributedDataParallel, so gradients are averaged across processes. Each step's
global batch (``train.batch_size`` images, the same for any number of processes) is
cut into equal contiguous shares; every process draws the random numbers of the whole
batch and keeps its rows (:mod:`robustvae.models.rng`), so N processes follow the
single-process run up to float rounding. The skip / NaN and stop decisions are taken
jointly; only rank 0 validates and writes files. Resuming works with any number of
processes.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from robustvae.config import Config
from robustvae.data import check_compatible, eval_images, load_dataset, prepare
from robustvae.distributed import SINGLE, DistContext
from robustvae.errors import RobustVAEError, TrainingError
from robustvae.models import rng
from robustvae.progress import make_progress
from robustvae.registry import build_model
from robustvae.seeding import derive_seed
from robustvae.zoo import atomic_save, config_of, load_weights, make_checkpoint, read_checkpoint

# A skipped first update calls scheduler.step() before optimizer.step(); that is intended here.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before", category=UserWarning)

RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "summary.json")


class Interrupted(RobustVAEError):
    """Training stopped by Ctrl-C after saving ``last.pt``."""


def lr_factor(step: int, total: int, warmup: int, lr: float, lr_min: float) -> float:
    """Linear warm-up to 1, then cosine decay to lr_min / lr at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    m = lr_min / lr
    return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def evaluate_nelbo(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device, seed: int = 0) -> dict[str, float]:
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


class Trainer:
    """Trains the model of ``cfg`` into ``out_dir``.

    ``on_step(step)`` is called after every optimisation step (tests use it to
    simulate crashes).
    """

    def __init__(
        self, cfg: Config, out_dir: str | Path, device: torch.device, quiet: bool = False, dist: DistContext = SINGLE
    ):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.device = device
        self.dist = dist
        self.quiet = quiet or not dist.is_main
        self._stop_requested = False

    # ------------------------------------------------------------------ run directory

    @staticmethod
    def prepare_dir(out: Path, resume: bool, force: bool, dist: DistContext = SINGLE) -> None:
        """Refuse to overwrite an existing run unless resuming or forced (every rank checks, rank 0 cleans)."""
        existing = [f for f in RUN_FILES if (out / f).exists()]
        if resume:
            if not (out / "last.pt").is_file():
                raise RobustVAEError(f"nothing to resume in {out} (no last.pt); drop --resume to start a new run")
            return
        if existing and not force:
            raise RobustVAEError(
                f"run directory {out} already holds a run ({', '.join(existing)}); "
                f"pass --resume to continue it or --force to start over"
            )
        if dist.is_main:
            for f in existing:
                (out / f).unlink()
            out.mkdir(parents=True, exist_ok=True)
        dist.barrier()

    @staticmethod
    def resume_config(out: Path) -> Config:
        ckpt = read_checkpoint(out / "last.pt")
        return config_of(ckpt, out / "last.pt")

    # ------------------------------------------------------------------ main loop

    def fit(self, resume: bool = False, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        cfg, tc, dev, dd = self.cfg, self.cfg.train, self.device, self.dist
        check_compatible(cfg.data, cfg.model.image_channels, cfg.model.image_size)
        ds = load_dataset(cfg.data)
        binary = cfg.model.binary
        train_imgs = ds.train.images
        n = len(ds.train)
        bs = tc.batch_size
        if bs > n:
            raise RobustVAEError(f"train.batch_size={bs} is larger than the {n} training images; lower --batch-size")
        if bs % dd.world_size:
            raise RobustVAEError(
                f"train.batch_size={bs} (the global batch) does not split evenly over {dd.world_size} processes; "
                f"use a batch size divisible by --nproc_per_node"
            )
        share = bs // dd.world_size
        lo, hi = dd.rank * share, (dd.rank + 1) * share  # this process's rows of every global batch
        spe = n // bs  # steps per epoch (the last incomplete batch is dropped)
        total = tc.steps if tc.steps is not None else tc.epochs * spe
        val_x = eval_images(ds, "val", binary)
        if tc.val_batches is not None:
            val_x = val_x[: tc.val_batches * bs]

        torch.manual_seed(tc.seed)
        model = build_model(cfg.model).to(dev)
        if not resume and hasattr(model, "fit_data"):
            # data-dependent set-up (DCT-VAE's context scale) from the training split only, before the
            # first step and before EMA copies the model; a resumed run restores it from last.pt
            model.fit_data(train_imgs)
        model.use_channels_last(tc.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        net = model
        if dd.enabled:
            # forward through the wrapper, or the gradients are never averaged (GUIDE section 7)
            net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if tc.compile:
            import torch._inductor.config as inductor_config

            # draw random numbers as eager torch does, so compiled runs resume and split over processes exactly
            inductor_config.fallback_random = True
            net = torch.compile(net)  # checkpoints keep saving the plain module's weights
        opt = torch.optim.AdamW(params, lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, total, tc.warmup_steps, tc.lr, tc.lr_min)
        )
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True) if tc.ema_decay > 0 else None
        st = {"step": 0, "best_val": math.inf, "skips": 0, "consecutive_skips": 0, "elapsed": 0.0}
        if resume:
            ckpt = read_checkpoint(self.out / "last.pt", map_location=dev)
            load_weights(model, ckpt["model"], self.out / "last.pt")
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            if ema is not None and ckpt.get("ema") is not None:
                ema.load_state_dict(ckpt["ema"])
            st.update(ckpt["train_state"])
            torch.set_rng_state(ckpt["rng"]["torch"].cpu())
            if dev.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), dev)
            self._truncate_metrics(st["step"])
        elif dd.is_main:
            (self.out / "config.json").write_text(cfg.to_json() + "\n")

        eval_model = ema.module if ema is not None else model
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if (dev.type == "cuda" and tc.amp) else nullcontext()
        )

        def save_last() -> None:
            if not dd.is_main:
                return
            rng_state = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}
            atomic_save(
                make_checkpoint(cfg, model, ema, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                train_state=dict(st), rng=rng_state),
                self.out / "last.pt",
            )

        def validate() -> dict[str, float]:
            if not dd.is_main:
                return {}
            model.eval()
            v = evaluate_nelbo(eval_model, val_x, max(bs, 256), dev)
            model.train()
            improved = v["nelbo"] < st["best_val"]
            if improved:
                st["best_val"] = v["nelbo"]
                atomic_save(make_checkpoint(cfg, model, ema, train_state=dict(st)), self.out / "best.pt")
            self._log({"kind": "val", "step": st["step"], "epoch": st["step"] / spe, **v, "best": improved})
            return v

        model.train()
        t0 = time.perf_counter() - st["elapsed"]
        last_val: dict[str, float] = {}
        gn = float("nan")
        with self._sigint_guard(), make_progress(self.quiet) as progress:
            task = progress.add_task(cfg.name, total=total, completed=st["step"], info="")
            while st["step"] < total:
                step = st["step"]
                epoch, b = divmod(step, spe)
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(tc.seed, epoch)))
                idx = perm[b * bs : (b + 1) * bs]
                x = prepare(train_imgs[idx], binary, torch.Generator().manual_seed(derive_seed(tc.seed, 1, step)))
                x = x[lo:hi]
                x = (x.pin_memory() if dev.type == "cuda" else x).to(dev, non_blocking=True)
                with autocast, (rng.batch_slice(bs, lo, hi) if dd.enabled else nullcontext()):
                    res = net(x)
                loss = res.nelbo.mean() / model.num_pixels  # nats per dimension
                opt.zero_grad(set_to_none=True)
                # global-batch sums: for the log, and so a non-finite loss on any process skips on all
                sums = dd.all_sum(torch.stack([res.nelbo.sum(), res.kl.sum(), res.recon.sum(), res.bpd.sum()]).detach())
                g_nelbo, g_kl, g_recon, g_bpd = (v / bs for v in sums.tolist())
                skip = not math.isfinite(g_nelbo)
                if not skip:
                    loss.backward()
                    gn = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip).item()
                    skip = not math.isfinite(gn) or gn > tc.skip_threshold
                    if dd.enabled:  # the averaged gradients agree, but make the decision explicitly joint
                        skip = bool(dd.all_sum(torch.tensor([float(skip)])).item() > 0)
                if skip:
                    opt.zero_grad(set_to_none=True)
                    st["skips"] += 1
                    st["consecutive_skips"] += 1
                    if st["consecutive_skips"] >= tc.max_consecutive_skips:
                        raise TrainingError(
                            f"stopped at step {step}: {st['consecutive_skips']} consecutive updates skipped "
                            f"(loss {g_nelbo / model.num_pixels:.4g}, gradient norm {gn:.4g} vs train.skip_threshold="
                            f"{tc.skip_threshold}); raise --set train.skip_threshold=..., lower train.lr, "
                            f"or check the data"
                        )
                else:
                    opt.step()
                    st["consecutive_skips"] = 0
                    if ema is not None:
                        ema.update_parameters(model)
                sched.step()
                st["step"] = step + 1
                st["elapsed"] = time.perf_counter() - t0
                if st["step"] % tc.log_every == 0 or st["step"] == total:
                    self._log({
                        "kind": "train", "step": st["step"], "epoch": st["step"] / spe,
                        "loss_nats": g_nelbo, "kl": g_kl, "recon": g_recon, "bpd": g_bpd,
                        "grad_norm": gn, "lr": sched.get_last_lr()[0], "skipped": skip,
                        "skips_total": st["skips"], "elapsed_s": st["elapsed"],
                    })
                epoch_end = st["step"] % spe == 0
                if epoch_end or st["step"] == total:
                    last_val = validate()
                if epoch_end or st["step"] == total or st["step"] % tc.checkpoint_every == 0:
                    save_last()
                progress.update(
                    task, completed=st["step"],
                    info=f"loss {g_nelbo:.2f} nats | val {last_val.get('nelbo', float('nan')):.2f}"
                         f" | skips {st['skips']}",
                )
                if on_step is not None:
                    on_step(st["step"])
                stop = self._stop_requested
                if dd.enabled:  # Ctrl-C / SIGTERM seen by any process stops all at the same step
                    stop = bool(dd.all_sum(torch.tensor([float(stop)])).item() > 0)
                if stop:
                    save_last()
                    raise Interrupted(
                        f"interrupted at step {st['step']}/{total}; last.pt saved in {self.out}; "
                        f"continue with --resume"
                    )
        summary = {
            "name": cfg.name, "steps": st["step"], "epochs": st["step"] / spe, "skipped_steps": st["skips"],
            "best_val_nelbo": st["best_val"], "final_val": last_val, "wall_time_s": st["elapsed"],
            "device": str(dev), "processes": dd.world_size, "train_images": n, "images_per_s": st["step"] * bs / max(st["elapsed"], 1e-9),
        }
        if dd.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    # ------------------------------------------------------------------ helpers

    def _log(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from (no duplicates)."""
        path = self.out / "metrics.jsonl"
        if not self.dist.is_main or not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))

    @contextmanager
    def _sigint_guard(self):
        """First Ctrl-C (or SIGTERM, which torchrun sends its workers): finish the step, save, stop.

        A second signal stops at once.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):  # noqa: ARG001
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
