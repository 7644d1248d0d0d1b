"""The training loop (:class:`Trainer`): steps, logging, validation, checkpoints, Ctrl-C, the summary."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustvae import errors, io
from robustvae.config import Config
from robustvae.distributed import SINGLE, DistContext
from robustvae.errors import RobustVAEError, TrainingError
from robustvae.progress import LOG_NAME, make_progress
from robustvae.training.build import TrainData, TrainParts, build_parts
from robustvae.training.checkpoint import Checkpointer, TrainState
from robustvae.training.step import StepResult, evaluate_nelbo, train_step
from robustvae.zoo import config_of, read_checkpoint

RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "summary.json")


class Interrupted(errors.Interrupted):
    """Training stopped by Ctrl-C after saving ``last.pt``."""


@dataclass
class _Run:
    """Everything one call of :meth:`Trainer.fit` works with."""

    data: TrainData
    parts: TrainParts
    ckpt: Checkpointer
    state: TrainState
    last_val: dict[str, float] = field(default_factory=dict)
    grad_norm: float = float("nan")  # of the last step that computed one


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
                io.remove(out / f, root=out)
            io.make_dirs(out)
        dist.barrier()

    @staticmethod
    def resume_config(out: Path) -> Config:
        """The config saved in ``last.pt``, checked against its tensors before any model is built (meta device)."""
        from robustvae.registry import build_model
        from robustvae.zoo import check_state

        path = out / "last.pt"
        ckpt = read_checkpoint(path)
        cfg = config_of(ckpt, path)
        check_state(lambda: build_model(cfg.model), ckpt.get("model"), path)
        return cfg

    # ------------------------------------------------------------------ main loop

    def fit(self, resume: bool = False, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        run = self._start(resume)
        data, parts, st = run.data, run.parts, run.state
        parts.model.train()
        t0 = time.perf_counter() - st.elapsed
        log = self.out / LOG_NAME if self.dist.is_main else None  # plain progress lines, also for nohup / cluster jobs
        with self._sigint_guard(), make_progress(self.quiet, log) as progress:
            task = progress.add_task(self.cfg.name, total=data.total, completed=st.step, info="")
            while st.step < data.total:
                r = train_step(
                    parts,
                    data.batch(st.step, self.device),
                    self.cfg.train,
                    self.dist,
                    data.batch_size,
                    (data.lo, data.hi),
                )
                if r.grad_norm is not None:
                    run.grad_norm = r.grad_norm
                self._count_update(run, r)
                st.step += 1
                st.elapsed = time.perf_counter() - t0
                self._log_validate_save(run, r)
                progress.update(
                    task,
                    completed=st.step,
                    info=f"loss {r.nelbo:.2f} nats | val {run.last_val.get('nelbo', float('nan')):.2f}"
                    f" | skips {st.skips}",
                )
                if on_step is not None:
                    on_step(st.step)
                self._stop_if_requested(run)
        return self._finish(run)

    def _start(self, resume: bool) -> _Run:
        """Data, model and optimiser; the state of ``last.pt`` when resuming, else a fresh one and config.json."""
        data = TrainData.load(self.cfg, self.dist)
        parts = build_parts(self.cfg, data, self.device, self.dist, resume)
        ckpt = Checkpointer(self.out, self.cfg, parts, self.device, self.dist)
        if resume:
            state = ckpt.resume()
        else:
            state = TrainState()
            if self.dist.is_main:
                io.write_text(self.out / "config.json", self.cfg.to_json() + "\n", root=self.out)
        return _Run(data=data, parts=parts, ckpt=ckpt, state=state)

    def _count_update(self, run: _Run, r: StepResult) -> None:
        """Count a skipped update; too many in a row stop the run."""
        st, tc = run.state, self.cfg.train
        st.count_update(r.skipped)
        if r.skipped and st.consecutive_skips >= tc.max_consecutive_skips:
            raise TrainingError(
                f"stopped at step {st.step}: {st.consecutive_skips} consecutive updates skipped "
                f"(loss {r.nelbo / run.parts.model.num_pixels:.4g}, gradient norm {run.grad_norm:.4g} vs "
                f"train.skip_threshold={tc.skip_threshold}); raise --set train.skip_threshold=..., lower train.lr, "
                f"or check the data"
            )

    def _log_validate_save(self, run: _Run, r: StepResult) -> None:
        """After a step: log it, validate at the end of an epoch and of the run, save ``last.pt`` when due."""
        st, tc, total, spe = run.state, self.cfg.train, run.data.total, run.data.steps_per_epoch
        if st.step % tc.log_every == 0 or st.step == total:
            self._log(
                {
                    "kind": "train",
                    "step": st.step,
                    "epoch": st.step / spe,
                    "loss_nats": r.nelbo,
                    "kl": r.kl,
                    "recon": r.recon,
                    "bpd": r.bpd,
                    "grad_norm": run.grad_norm,
                    "lr": run.parts.sched.get_last_lr()[0],
                    "skipped": r.skipped,
                    "skips_total": st.skips,
                    "elapsed_s": st.elapsed,
                }
            )
        epoch_end = st.step % spe == 0
        if epoch_end or st.step == total:
            run.last_val = self._validate(run)
        if epoch_end or st.step == total or st.step % tc.checkpoint_every == 0:
            run.ckpt.save_last(st)

    def _validate(self, run: _Run) -> dict[str, float]:
        """-ELBO of the (EMA) model on the validation images; ``best.pt`` when it improved (main process only)."""
        if not self.dist.is_main:
            return {}
        st, model = run.state, run.parts.model
        model.eval()
        v = evaluate_nelbo(run.parts.eval_model, run.data.val, max(run.data.batch_size, 256), self.device)
        model.train()
        improved = v["nelbo"] < st.best_val
        if improved:
            st.best_val = v["nelbo"]
            run.ckpt.save_best(st)
        self._log({"kind": "val", "step": st.step, "epoch": st.step / run.data.steps_per_epoch, **v, "best": improved})
        return v

    def _stop_if_requested(self, run: _Run) -> None:
        """Ctrl-C / SIGTERM seen by any process stops all at the same step, after saving ``last.pt``."""
        stop = self._stop_requested
        if self.dist.enabled:
            stop = bool(self.dist.all_sum(torch.tensor([float(stop)])).item() > 0)
        if stop:
            run.ckpt.save_last(run.state)
            raise Interrupted(
                f"interrupted at step {run.state.step}/{run.data.total}; last.pt saved in {self.out}; "
                f"continue with --resume"
            )

    def _finish(self, run: _Run) -> dict[str, Any]:
        """The summary, also written to summary.json."""
        st, data = run.state, run.data
        done = self.out / "summary.json"
        if not run.last_val and done.is_file():  # --resume of a finished run: nothing ran, its summary stands
            from robustvae.validation import TrainSummary, read_json

            return read_json(done, TrainSummary, "delete it and resume again")
        summary = {
            "name": self.cfg.name,
            "steps": st.step,
            "epochs": st.step / data.steps_per_epoch,
            "skipped_steps": st.skips,
            "best_val_nelbo": st.best_val,
            "final_val": run.last_val,
            "wall_time_s": st.elapsed,
            "device": str(self.device),
            "processes": self.dist.world_size,
            "train_images": data.size,
            "images_per_s": st.step * data.batch_size / max(st.elapsed, 1e-9),
        }
        if self.dist.is_main:
            io.write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n", root=self.out)
        return summary

    # ------------------------------------------------------------------ helpers

    def _log(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        io.append_jsonl(self.out / "metrics.jsonl", [row], root=self.out)

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
