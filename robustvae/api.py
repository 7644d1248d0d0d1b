"""The typed Python API: every job a user runs, as one call that returns a typed result.

``robustvae.load``, ``train``, ``evaluate``, ``attack``, ``certify_models``, ``report``, ``compress`` and
``sample`` (re-exported at the package top) are what the command line and the demo
call; they parse nothing and print nothing. Tables come back as pandas DataFrames.
Every user error raises :class:`robustvae.RobustVAEError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from robustvae.config import AttackConfig, CertifyConfig, CompressConfig, Config
from robustvae.defences.base import Defence
from robustvae.distributed import SINGLE, DistContext
from robustvae.errors import RobustVAEError, require_nonnegative, require_positive
from robustvae.experiments.models import Labelled, ModelSpec, load_models
from robustvae.zoo import LoadedModel

DEFAULT_TRAIN_PRESET = "vdvae-mnist-tiny"


def _device(device: str | torch.device) -> torch.device:
    from robustvae.device import resolve_device

    return resolve_device(device)


# --------------------------------------------------------------------------- load


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", weights: str = "auto") -> LoadedModel:
    """A trained model in eval mode with its config and provenance (``.model``, ``.config``, ``.path``, ``.sha256``).

    ``name_or_path``: a zoo name, a checkpoint file or a run directory (its best.pt,
    else last.pt). ``weights``: ``auto`` (EMA weights when present), ``ema`` or ``raw``.
    """
    from robustvae import zoo

    return zoo.load(name_or_path, device=_device(device), weights=weights)


# --------------------------------------------------------------------------- train


@dataclass(frozen=True)
class TrainResult:
    """A finished (or resumed-to-the-end) training run."""

    out: Path  # the run directory: config.json, metrics.jsonl, last.pt, best.pt, summary.json
    config: Config
    summary: dict[str, Any]  # as in summary.json

    @property
    def metrics(self) -> pd.DataFrame:
        """metrics.jsonl: one row per logged training step and per validation."""
        return pd.read_json(self.out / "metrics.jsonl", lines=True)


def train_config(
    preset: str | Config | None = None, *, data: str | None = None, data_dir: str | os.PathLike | None = None,
    epochs: int | None = None, steps: int | None = None, batch_size: int | None = None, seed: int | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """A preset (by name, default ``vdvae-mnist-tiny``) or config with options and ``section.key=value`` overrides applied."""
    from robustvae.registry import get_preset

    cfg = preset if isinstance(preset, Config) else get_preset(preset or DEFAULT_TRAIN_PRESET)
    given = []
    if epochs is not None:
        given += [f"train.epochs={epochs}", "train.steps=none"]
    given += [f"train.{k}={v}" for k, v in (("steps", steps), ("batch_size", batch_size), ("seed", seed)) if v is not None]
    if data is not None:
        given.append(f"data.name={data}")
    if data_dir is not None:
        given.append(f"data.data_dir={data_dir}")
    return cfg.override(given + list(overrides))


def saved_config(out: str | os.PathLike) -> Config:
    """The config of the training run in ``out`` (from its last.pt), to resume it."""
    from robustvae.training import Trainer

    out = Path(out)
    if not (out / "last.pt").is_file():
        raise RobustVAEError(f"nothing to resume in {out} (no last.pt); drop --resume to start a new run")
    return Trainer.resume_config(out)


def _remove_if_empty(path: Path) -> None:
    """Remove a run directory this call created when it holds nothing but its lock file."""
    if path.is_dir() and all(p.name == ".lock" for p in path.iterdir()):
        (path / ".lock").unlink(missing_ok=True)
        path.rmdir()


def train(
    config: Config | str | None = None, out: str | os.PathLike | None = None, *, resume: bool = False,
    force: bool = False, steps: int | None = None, epochs: int | None = None, device: str | torch.device = "auto",
    quiet: bool = True, dist: DistContext = SINGLE,
) -> TrainResult:
    """Train ``config`` (a Config or a preset name) into ``out`` (default ``runs/<name>``).

    ``resume`` continues the run in ``out`` from its last.pt with its saved config
    (``config`` must then be None or that same config; ``steps`` / ``epochs`` may extend
    it); ``force`` starts over in a directory that holds a run. Without either, a
    directory that holds a run is refused.
    """
    from robustvae.training import Trainer

    if resume and force:
        raise RobustVAEError("--resume and --force contradict each other; pick one")
    name = config.name if isinstance(config, Config) else (config or DEFAULT_TRAIN_PRESET)
    out_dir = Path(out) if out is not None else Path("runs") / name
    if resume:
        saved = saved_config(out_dir)
        if config is not None and train_config(config) != saved:
            raise RobustVAEError(f"--resume continues the saved config of {out_dir}; start a new run with another --out "
                                 f"to change it")
        cfg = train_config(saved, steps=steps, epochs=epochs)
    else:
        cfg = train_config(config, steps=steps, epochs=epochs)
    from robustvae.experiments.rundir import RunDir

    created = not out_dir.exists()
    try:
        with RunDir(out_dir).locked(dist.is_main):
            Trainer.prepare_dir(out_dir, resume=resume, force=force, dist=dist)
            summary = Trainer(cfg, out_dir, _device(device), quiet=quiet, dist=dist).fit(resume=resume)
    except RobustVAEError:  # e.g. the data cannot be read: no empty run directory is left behind
        if created and dist.is_main:
            _remove_if_empty(out_dir)
        raise
    return TrainResult(out_dir, cfg, summary)


# --------------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class EvalResult:
    """Likelihood and posterior-collapse diagnostics of one model on one image set."""

    record: dict[str, Any]  # as written to eval-<split>.json

    @property
    def layers(self) -> pd.DataFrame:
        """Per layer (top first): resolution, units, KL (nats), active units (context: levels used)."""
        return pd.DataFrame(self.record["layers"])

    @property
    def nll_nats(self) -> float:
        return self.record["nll_nats"]

    @property
    def nelbo_nats(self) -> float:
        return self.record["nelbo_nats"]


def default_iw_samples(model: LoadedModel | Labelled) -> int:
    """Importance samples of the NLL: 1000 for binary data (MNIST, Omniglot), 100 otherwise (as in the paper)."""
    return 1000 if model.model.cfg.likelihood == "bernoulli" else 100


def evaluate(
    model: ModelSpec, *, data: str | None = None, data_dir: str | os.PathLike | None = None, split: str = "test",
    iw_samples: int | None = None, limit: int | None = None, batch_size: int = 100, seed: int = 0,
    device: str | torch.device = "auto", quiet: bool = True, estimator: str = "iwae", max_batch_mib: int | None = None,
    log_path: str | os.PathLike | None = None,
) -> EvalResult:
    """NLL (importance-sampled bound), ELBO, bits/dim, KL and active units per layer on a split of the model's dataset.

    ``limit`` evaluates a label-stratified subset (selected with ``seed``); ``iw_samples``
    defaults to :func:`default_iw_samples`; ``data`` overrides the dataset (needed for a
    model in memory); ``estimator`` is ``iwae`` (the bound), ``authors`` or ``both``
    (:func:`robustvae.evaluation.evaluate_model`); ``max_batch_mib`` is the memory budget of
    one importance-sampling pass (default 64 on CPU, 2048 on CUDA); ``log_path`` receives
    the progress lines. The record names the images it used (``image_set``) and the settings (``settings``).
    """
    from robustvae.data import eval_images, load_dataset, stratified_order
    from robustvae.evaluation import default_max_batch_mib, evaluate_model

    require_positive(batch_size=batch_size, iw_samples=iw_samples, limit=limit, max_batch_mib=max_batch_mib)
    require_nonnegative(seed=seed)
    dev = _device(device)
    (lm,) = load_models([model], dev, data)
    dcfg = dataclasses.replace(lm.data, data_dir=str(data_dir)) if data_dir is not None else lm.data
    ds = load_dataset(dcfg)
    x = eval_images(ds, split, lm.model.cfg.binary)
    order = None
    if limit is not None and limit < x.shape[0]:
        order = stratified_order(ds.split(split).labels, seed)[:limit]
    image_set = _image_set(ds.name, split, dcfg.split_seed, x, order, seed)
    x = x[order] if order is not None else x
    k = iw_samples or default_iw_samples(lm)
    budget = max_batch_mib or default_max_batch_mib(dev)
    res = evaluate_model(lm.model, x, iw_samples=k, batch_size=batch_size, device=dev, seed=seed, quiet=quiet,
                         estimator=estimator, max_batch_mib=budget, log_path=log_path, label=lm.label)
    settings = {"split": split, "iw_samples": k, "limit": limit, "batch_size": batch_size, "max_batch_mib": budget,
                "seed": seed, "device": str(dev), "estimator": estimator}
    return EvalResult({"checkpoint": lm.path, "checkpoint_sha256": lm.sha256, "model": lm.label, "dataset": ds.name,
                       "split": split, **res, "image_set": image_set, "settings": settings})


def _image_set(dataset: str, split: str, split_seed: int, x: torch.Tensor, order: torch.Tensor | None,
               seed: int) -> dict[str, Any]:
    """Which images an evaluation used: split, count, how they were selected, and a hash of the pixels."""
    import hashlib

    chosen = x[order] if order is not None else x
    return {
        "dataset": dataset, "split": split, "images": int(chosen.shape[0]), "split_images": int(x.shape[0]),
        "selection": "label-stratified subset" if order is not None else "whole split",
        "selection_seed": seed if order is not None else None, "split_seed": split_seed,
        "indices": order.tolist() if order is not None else None,
        "images_sha256": hashlib.sha256(chosen.contiguous().numpy().tobytes()).hexdigest(),
    }


# --------------------------------------------------------------------------- attack


@dataclass(frozen=True)
class AttackResult:
    """The records of an attack sweep (this shard's) and their results table."""

    records: pd.DataFrame  # one row per AttackRecord (robustvae.records)
    table: pd.DataFrame  # per (dataset, norm, eps, model, k): mean / worst MS-SSIM with intervals, baselines
    out: Path | None


def attack(
    models: Sequence[ModelSpec], config: AttackConfig | None = None, out: str | os.PathLike | None = None, *,
    data: str | None = None, data_dir: str | None = None, device: str | torch.device = "auto",
    shard: tuple[int, int] = (1, 1), quiet: bool = True, command: list[str] | None = None,
    dist: DistContext | None = None, eot: int = 0, defence: str | Defence | None = None, adaptive: bool = False,
) -> AttackResult:
    """Latent attacks on the top-k layers of each model: MS-SSIM of attacked vs clean reconstructions.

    ``models``: zoo names, checkpoint files, run directories, loaded models or models
    in memory (these need ``data``). With ``out`` the run is written there and resumed
    by a later call with the same settings; ``shard=(i, N)`` runs every N-th work unit.
    ``eot``: N > 0 attacks the authors' dithered context (kuzina-ladder DCT-VAEs only) with
    the dither on, averaged over N fixed draws; by default the dither is off (run.json says which).
    ``defence``: a test-time defence (a :class:`robustvae.defences.Defence`, or a name of
    ``robustvae.defences.DEFENCES`` with its default settings) through which every scored
    reconstruction goes; ``adaptive`` attacks through it instead of attacking the model
    (docs/defences.md). Its curves are named ``<model>+hmc`` and ``<model>+hmc/adaptive``.
    """
    from robustvae.experiments.attack import run_sweep
    from robustvae.reporting.aggregate import summarise

    from robustvae.defences import make_defence
    from robustvae.defences.sweep import DefenceRun

    if adaptive and defence is None:
        raise RobustVAEError("--adaptive attacks through a defence: add --defence hmc (or drop --adaptive)")
    run_defence = None if defence is None else DefenceRun(
        make_defence(defence) if isinstance(defence, str) else defence, adaptive)
    dev = _device(device)
    labelled = load_models(list(models), dev, data)
    if eot < 0:
        raise RobustVAEError(f"--eot takes the number of dither draws (>= 1; 0: dither off), got {eot}")
    if eot:
        from robustvae.zoo.kuzina import with_dither

        labelled = [dataclasses.replace(lm, loaded=with_dither(lm.loaded, eot)) for lm in labelled]
    records = run_sweep(labelled, config or AttackConfig(), out, device=dev, shard=shard, data_dir=data_dir,
                        quiet=quiet, command=command, dist=dist, defence=run_defence)
    return AttackResult(records, summarise(records) if len(records) else pd.DataFrame(),
                        Path(out) if out is not None else None)


# --------------------------------------------------------------------------- certify


@dataclass(frozen=True)
class CertifyResult:
    """The records of a certification run (this shard's) and their summary table."""

    records: pd.DataFrame  # one row per CertifyRecord (robustvae.records): model x point x eps
    table: pd.DataFrame  # per (model, norm, eps): certified fraction, radius, the optimal attack's means
    out: Path | None


def certify_models(
    models: Sequence[ModelSpec], config: CertifyConfig | None = None, out: str | os.PathLike | None = None, *,
    data: str | None = None, data_dir: str | None = None, device: str | torch.device = "auto",
    shard: tuple[int, int] = (1, 1), force: bool = False, quiet: bool = True, command: list[str] | None = None,
) -> CertifyResult:
    """Exact analysis of each model's quantised context on test points: certified radius, certificates, optimal attack.

    ``config``: a :class:`robustvae.config.CertifyConfig` (eps list, norm, points, ...).
    Named ``certify_models``, not ``certify``, because ``robustvae.certify`` is already
    the subpackage of the per-image analysis (``robustvae.certify.context_radius`` and
    friends); a top-level function of the same name would shadow it. With ``out`` the
    run is written there and resumed by a later call with the same settings (``force``
    starts over). A model without a context layer is an error.
    """
    from robustvae.experiments.certify import run_certify
    from robustvae.reporting.certify import certify_table

    dev = _device(device)
    labelled = load_models(list(models), dev, data)
    records = run_certify(labelled, config or CertifyConfig(), out, device=dev, shard=shard, data_dir=data_dir,
                          force=force, quiet=quiet, command=command)
    return CertifyResult(records, certify_table(records) if len(records) else pd.DataFrame(),
                         Path(out) if out is not None else None)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ReportResult:
    """A written report: its summary (as in summary.json) and its main tables."""

    out: Path
    summary: dict[str, Any]

    @property
    def table(self) -> pd.DataFrame:
        """The results table (empty for a compression-only report)."""
        return pd.DataFrame(self.summary.get("table", []))

    @property
    def checks(self) -> pd.DataFrame:
        """The sanity checks: check, scope, passed, value, limit, detail."""
        return pd.DataFrame(self.summary.get("checks", []))


def report(
    runs: Sequence[str | os.PathLike], out: str | os.PathLike, *, evals: Sequence[str | os.PathLike] = (),
    notes: Sequence[str | os.PathLike] = (), title: str | None = None, force: bool = False,
) -> ReportResult:
    """Figure 10, tables, checks, gallery (and a compression section) from run directories; nothing is re-run."""
    from robustvae.reporting import make_report

    return ReportResult(Path(out), make_report(runs, out, evals=evals, notes=notes, title=title, force=force))


# --------------------------------------------------------------------------- compress


@dataclass(frozen=True)
class CompressResult:
    """A compression run: per model, image and k its record, and the JPEG sweep of every image."""

    records: pd.DataFrame  # one row per CompressionRecord (robustvae.records)
    jpeg: pd.DataFrame  # per image and JPEG quality: bytes, bpp, PSNR, MS-SSIM
    out: Path

    @property
    def warnings(self) -> list[str]:
        """(model, k) whose matched JPEG is not at the model's PSNR (none of its qualities gets there)."""
        from robustvae.reporting.compression import match_warnings

        return match_warnings(self.records)


def compress(
    models: Sequence[ModelSpec], images: Sequence[str | os.PathLike], config: CompressConfig | None = None,
    out: str | os.PathLike = "runs/compress", *, device: str | torch.device = "auto", force: bool = False,
    quiet: bool = True, command: list[str] | None = None,
) -> CompressResult:
    """Appendix G: compress images with the top k latent layers of each model and compare with JPEG at the same PSNR.

    Writes records, the JPEG sweep, the images and the rate-distortion and side-by-side
    figures into ``out`` (refused when not empty, unless ``force``).
    """
    from robustvae.experiments.compress import run_compression
    from robustvae.reporting.compression import write_compression_figures

    dev = _device(device)
    labelled = load_models(list(models), dev, need_data=False)
    records, jpeg = run_compression(labelled, list(images), config or CompressConfig(), out, device=dev, force=force,
                                    quiet=quiet, command=command)
    write_compression_figures(out)
    return CompressResult(records, jpeg, Path(out))


# --------------------------------------------------------------------------- sample


def sample(model: ModelSpec, n: int = 64, *, temperature: float = 1.0, seed: int = 0,
           device: str | torch.device = "auto") -> torch.Tensor:
    """``n`` ancestral samples (decoder mean images in [0, 1], on the CPU) at prior ``temperature``."""
    require_positive(n=n)
    require_nonnegative(temperature=temperature, seed=seed)
    (lm,) = load_models([model], _device(device), need_data=False)
    noise = lm.model.make_noise(n, torch.Generator().manual_seed(seed))
    return lm.model.sample(n, temperature=temperature, noise=noise).cpu()
