"""The training state and the checkpoints of a run directory: ``last.pt``, ``best.pt`` and resuming."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robustvae.config import Config
from robustvae.distributed import DistContext
from robustvae import io
from robustvae.io import read_jsonl
from robustvae.training.build import TrainParts
from robustvae.zoo import atomic_save, load_weights, make_checkpoint, read_checkpoint


@dataclass
class TrainState:
    """Counters that a checkpoint carries over (stored as the plain dict of :meth:`to_dict`)."""

    step: int = 0
    best_val: float = math.inf
    skips: int = 0
    consecutive_skips: int = 0
    elapsed: float = 0.0  # seconds of training, summed over resumes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def count_update(self, skipped: bool) -> None:
        if skipped:
            self.skips += 1
            self.consecutive_skips += 1
        else:
            self.consecutive_skips = 0


class Checkpointer:
    """Writes ``last.pt`` (everything needed to resume) and ``best.pt`` (weights) atomically, and resumes.

    Only the main process writes; every process resumes.
    """

    def __init__(self, out: Path, cfg: Config, parts: TrainParts, device: torch.device, dist: DistContext):
        self.out = Path(out)
        self.cfg = cfg
        self.parts = parts
        self.device = device
        self.dist = dist

    @property
    def last(self) -> Path:
        return self.out / "last.pt"

    def rng_state(self) -> dict[str, torch.Tensor | None]:
        dev = self.device
        return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}

    def restore_rng(self, saved: dict[str, torch.Tensor | None]) -> None:
        torch.set_rng_state(saved["torch"].cpu())
        if self.device.type == "cuda" and saved.get("cuda") is not None:
            torch.cuda.set_rng_state(saved["cuda"].cpu(), self.device)

    def save_last(self, state: TrainState) -> None:
        if not self.dist.is_main:
            return
        p = self.parts
        atomic_save(
            make_checkpoint(
                self.cfg,
                p.model,
                p.ema,
                optimizer=p.opt.state_dict(),
                scheduler=p.sched.state_dict(),
                train_state=state.to_dict(),
                rng=self.rng_state(),
            ),
            self.last,
            root=self.out,
        )

    def save_best(self, state: TrainState) -> None:
        if self.dist.is_main:
            atomic_save(
                make_checkpoint(self.cfg, self.parts.model, self.parts.ema, train_state=state.to_dict()),
                self.out / "best.pt",
                root=self.out,
            )

    def resume(self) -> TrainState:
        """Load weights, optimiser, schedule, EMA, state and RNG from ``last.pt``; drop later log lines."""
        from robustvae.errors import CheckpointError
        from robustvae.validation import TrainStateTable, check_json

        p = self.parts
        ckpt = read_checkpoint(self.last, map_location=self.device)
        load_weights(p.model, ckpt["model"], self.last)
        state = TrainState.from_dict(
            check_json(
                f"{self.last} (train_state)",
                ckpt.get("train_state"),
                TrainStateTable,
                "it is not a training checkpoint of this robustvae; start over with --force",
            )
        )
        try:  # optimiser, schedule, EMA and RNG states: torch checks them; any failure is one line
            p.opt.load_state_dict(ckpt["optimizer"])
            p.sched.load_state_dict(ckpt["scheduler"])
            if p.ema is not None and ckpt.get("ema") is not None:
                p.ema.load_state_dict(ckpt["ema"])
            self.restore_rng(ckpt["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            raise CheckpointError(
                f"{self.last} holds a training state that does not fit this run ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'}); start over with --force"
            ) from None
        self.truncate_metrics(state.step)
        return state

    def truncate_metrics(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from (no duplicates)."""
        path = self.out / "metrics.jsonl"
        if not self.dist.is_main or not path.exists():
            return
        from robustvae.validation import MetricsRow, problem

        rows = read_jsonl(path, repair=True, check=lambda row: problem(MetricsRow, row))  # a torn tail is cut
        keep = [row for row in rows if row["step"] <= step]
        io.write_jsonl(path, keep, root=self.out)
