"""Training: AdamW + cosine schedule, clipping, gradient skipping, EMA, atomic checkpoints, resume.

A run directory holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one
JSON line per logged step and per validation), ``last.pt`` (everything needed to
resume), ``best.pt`` (the weights with the best validation -ELBO) and
``summary.json``. Data order, binarisation and model noise are all seeded, and the
RNG state is checkpointed, so on CPU a resumed run ends with exactly the weights of
an uninterrupted one.

The code is split as in openai/vdvae:

- :mod:`~robustvae.training.build`: :class:`TrainData` (the seeded global batches and
  the validation images), :func:`build_parts` (model, DDP / torch.compile wrapper,
  AdamW, the :func:`lr_factor` schedule, EMA, gathered in :class:`TrainParts`);
- :mod:`~robustvae.training.step`: :func:`train_step`, one optimisation step returning
  a :class:`StepResult`, and :func:`evaluate_nelbo`, the validation bound;
- :mod:`~robustvae.training.checkpoint`: :class:`TrainState` (the counters a checkpoint
  carries, stored as a plain dict) and :class:`Checkpointer` (``last.pt`` / ``best.pt``,
  RNG state, resuming);
- :mod:`~robustvae.training.loop`: :class:`Trainer`, the loop that logs, validates,
  checkpoints, stops cleanly on Ctrl-C / SIGTERM (:class:`Interrupted`) and writes the
  summary.

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

from robustvae.training.build import TrainData, TrainParts, build_parts, lr_factor
from robustvae.training.checkpoint import Checkpointer, TrainState
from robustvae.training.loop import RUN_FILES, Interrupted, Trainer
from robustvae.training.step import StepResult, evaluate_nelbo, train_step

__all__ = [
    "RUN_FILES",
    "Checkpointer",
    "Interrupted",
    "StepResult",
    "TrainData",
    "TrainParts",
    "TrainState",
    "Trainer",
    "build_parts",
    "evaluate_nelbo",
    "lr_factor",
    "train_step",
]
