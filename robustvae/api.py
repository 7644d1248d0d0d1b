"""The typed Python API: every job a user runs, as one call that returns a typed result.

``robustvae.load``, ``train``, ``evaluate``, ``attack``, ``certify_models``, ``report``, ``compress`` and
``sample`` (re-exported at the package top) are what the command line and the demo
call; they parse nothing and print nothing. Tables come back as pandas DataFrames.
Every user error raises :class:`robustvae.RobustVAEError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from robustvae.config import AttackConfig, CertifyConfig, CompressConfig, Config
from robustvae.defences.base import Defence
from robustvae.distributed import SINGLE, DistContext
from robustvae.errors import RobustVAEError, require_nonnegative, require_positive
from robustvae.experiments.models import ImageSource, Labelled, ModelSpec, load_models
from robustvae.zoo import LoadedModel

if TYPE_CHECKING:
    from robustvae.data.images import ImageSet

DEFAULT_TRAIN_PRESET = "vdvae-mnist-tiny"


def _device(device: str | torch.device) -> torch.device:
    from robustvae.device import resolve_device

    return resolve_device(device)


# --------------------------------------------------------------------------- load


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", weights: str = "auto") -> LoadedModel:
    """A trained model in eval mode with its config and provenance (``.model``, ``.config``, ``.path``, ``.sha256``).

    ``name_or_path``: a checkpoint file, a run directory (its best.pt,
    else last.pt), or ``module.path:factory``: a user's own model, built by calling
    ``factory()`` and checked against the model contract (docs/own-model.md; its
    ``.sha256`` hashes its state dict, not a file). ``weights``: ``auto`` (EMA weights
    when present), ``ema`` or ``raw``.
    """
    from robustvae import zoo

    return zoo.load(name_or_path, device=_device(device), weights=weights)


def load_images(source: ImageSource, model: ModelSpec) -> ImageSet:
    """A user's own images, checked against ``model``'s image shape: an :class:`~robustvae.data.images.ImageSet`
    (``.images`` (N, C, H, W) floats in [0, 1] in file order, ``.path``, ``.layout``, ``.dtype``, ``.sha256``).

    ``source``: a folder of PNG/JPEG files, an image file, a ``.npy`` / ``.npz`` / ``.pt`` array file, or an array
    or tensor (uint8, or floats in [0, 1]; NCHW or NHWC, told apart by the model's channel count).
    """
    from robustvae.data.images import load_image_set

    net = (
        model.model
        if isinstance(model, LoadedModel)
        else model
        if isinstance(model, torch.nn.Module)
        else load(model).model
    )
    return load_image_set(source, net.cfg.image_channels, net.cfg.image_size)


IMPORT_SOURCES = ("kuzina", "openai-vdvae")  # whose checkpoints `robustvae zoo import --from` reads


def import_checkpoint(
    file: str | os.PathLike,
    source: str,
    out: str | os.PathLike,
    *,
    preset: str | None = None,
    hps: str | None = None,
    force: bool = False,
) -> Path:
    """Convert a checkpoint of another code base into ``out``/best.pt (with provenance); returns that file.

    ``source`` ``kuzina`` (AKuzina/dct_vae) needs ``preset`` (a kuzina-* preset);
    ``openai-vdvae`` (openai/vdvae) needs ``hps`` (upstream's ``--hps``: cifar10, imagenet32,
    imagenet64, ffhq256, ffhq1024) or an openai-vdvae ``preset``.
    """
    if source == "kuzina":
        if preset is None or hps is not None:
            raise RobustVAEError("--from kuzina takes --preset (a kuzina-* preset, robustvae zoo list), not --hps")
        from robustvae.zoo.kuzina import import_checkpoint as kuzina_import

        return kuzina_import(file, preset, out, source=source, force=force)
    if source == "openai-vdvae":
        from robustvae.zoo.openai_vdvae import import_checkpoint as openai_import
        from robustvae.zoo.openai_vdvae import preset_of

        if (preset is None) == (hps is None):
            raise RobustVAEError(
                "--from openai-vdvae needs --hps (cifar10, imagenet32, imagenet64, ffhq256 or "
                "ffhq1024) or an openai-vdvae --preset, one of them"
            )
        return openai_import(file, preset or preset_of(hps), out, force=force)
    raise RobustVAEError(f"unknown checkpoint source {source!r} (known: {', '.join(IMPORT_SOURCES)})")


def fetch_checkpoint(name: str, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Download a published checkpoint (``robustvae zoo list``) and import it into ``out``/best.pt."""
    from robustvae.registry import PUBLISHED

    entry = PUBLISHED.get(name)
    if entry is None:
        raise RobustVAEError(f"unknown published checkpoint {name!r} (known: {', '.join(PUBLISHED)})")
    if entry.source == "openai-vdvae":
        from robustvae.zoo.openai_vdvae import fetch
    else:
        from robustvae.zoo.kuzina import fetch
    return fetch(name, out, force=force)


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
    preset: str | Config | None = None,
    *,
    data: str | None = None,
    data_dir: str | os.PathLike | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """A preset (by name, default ``vdvae-mnist-tiny``) or config with options and ``section.key=value`` overrides applied."""
    from robustvae.registry import get_preset

    cfg = preset if isinstance(preset, Config) else get_preset(preset or DEFAULT_TRAIN_PRESET)
    given = []
    if epochs is not None:
        given += [f"train.epochs={epochs}", "train.steps=none"]
    given += [
        f"train.{k}={v}" for k, v in (("steps", steps), ("batch_size", batch_size), ("seed", seed)) if v is not None
    ]
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
        from robustvae import io

        io.remove(path, root=path.parent)


def train(
    config: Config | str | None = None,
    out: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    steps: int | None = None,
    epochs: int | None = None,
    device: str | torch.device = "auto",
    quiet: bool = True,
    dist: DistContext = SINGLE,
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
            raise RobustVAEError(
                f"--resume continues the saved config of {out_dir}; start a new run with another --out to change it"
            )
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
    model: ModelSpec,
    *,
    data: str | None = None,
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    iw_samples: int | None = None,
    limit: int | None = None,
    batch_size: int = 100,
    seed: int = 0,
    device: str | torch.device = "auto",
    quiet: bool = True,
    estimator: str = "iwae",
    max_batch_mib: int | None = None,
    log_path: str | os.PathLike | None = None,
    images: ImageSource | None = None,
) -> EvalResult:
    """NLL (importance-sampled bound), ELBO, bits/dim, KL and active units per layer on a split of the model's dataset.

    ``limit`` evaluates a label-stratified subset (selected with ``seed``); ``iw_samples``
    defaults to :func:`default_iw_samples`; ``data`` overrides the dataset (a model without a
    config, in memory or from a ``module.path:factory``, needs it or ``images``); ``images``
    evaluates a user's own images instead (:func:`load_images`; ``limit``: the first N in
    file order); ``estimator`` is ``iwae`` (the bound), ``authors`` or ``both``
    (:func:`robustvae.evaluation.evaluate_model`); ``max_batch_mib`` is the memory budget of
    one importance-sampling pass (default 64 on CPU, 2048 on CUDA); ``log_path`` receives
    the progress lines. The record names the images it used (``image_set``) and the settings (``settings``).
    """
    from robustvae.evaluation import default_max_batch_mib, evaluate_model

    require_positive(batch_size=batch_size, iw_samples=iw_samples, limit=limit, max_batch_mib=max_batch_mib)
    require_nonnegative(seed=seed)
    dev = _device(device)
    (lm,) = load_models([model], dev, data, images=images)
    x, image_set = _eval_images(lm, data_dir, split, limit, seed)
    k = iw_samples or default_iw_samples(lm)
    budget = max_batch_mib or default_max_batch_mib(dev)
    res = evaluate_model(
        lm.model,
        x,
        iw_samples=k,
        batch_size=batch_size,
        device=dev,
        seed=seed,
        quiet=quiet,
        estimator=estimator,
        max_batch_mib=budget,
        log_path=log_path,
        label=lm.label,
    )
    settings = {
        "split": image_set["split"],
        "iw_samples": k,
        "limit": limit,
        "batch_size": batch_size,
        "max_batch_mib": budget,
        "seed": seed,
        "device": str(dev),
        "estimator": estimator,
    }
    return EvalResult(
        {
            "checkpoint": lm.path,
            "checkpoint_sha256": lm.sha256,
            "sha256_of": lm.loaded.sha256_of,
            "model": lm.label,
            "dataset": image_set["dataset"],
            "split": image_set["split"],
            **res,
            "image_set": image_set,
            "settings": settings,
        }
    )


def _eval_images(
    lm: Labelled, data_dir: str | os.PathLike | None, split: str, limit: int | None, seed: int
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The images an evaluation scores (prepared as the model sees them) and its record of them (``image_set``)."""
    from robustvae.data import eval_images, fixed_prepare, load_dataset, stratified_order

    if lm.images is not None:  # a user's own images: the first ``limit`` in file order (no labels to stratify by)
        x = fixed_prepare(lm.images.images, lm.model.cfg.binary)
        order = torch.arange(limit) if limit is not None and limit < x.shape[0] else None
        info = _image_set(lm.images.name, lm.images.name, None, x, order, None)
        info.update(
            selection=f"the first {limit} in file order" if order is not None else "every image",
            **{k: v for k, v in lm.images.info().items() if k != "images"},
        )
        return x[order] if order is not None else x, info
    dcfg = dataclasses.replace(lm.data, data_dir=str(data_dir)) if data_dir is not None else lm.data
    ds = load_dataset(dcfg)
    x = eval_images(ds, split, lm.model.cfg.binary)
    order = None
    if limit is not None and limit < x.shape[0]:
        order = stratified_order(ds.split(split).labels, seed)[:limit]
    return (x[order] if order is not None else x), _image_set(ds.name, split, dcfg.split_seed, x, order, seed)


def _image_set(
    dataset: str, split: str, split_seed: int | None, x: torch.Tensor, order: torch.Tensor | None, seed: int | None
) -> dict[str, Any]:
    """Which images an evaluation used: split, count, how they were selected, and a hash of the pixels."""
    from robustvae.data.images import pixels_sha256

    chosen = x[order] if order is not None else x
    return {
        "dataset": dataset,
        "split": split,
        "images": int(chosen.shape[0]),
        "split_images": int(x.shape[0]),
        "selection": "label-stratified subset" if order is not None else "whole split",
        "selection_seed": seed if order is not None else None,
        "split_seed": split_seed,
        "indices": order.tolist() if order is not None else None,
        "images_sha256": pixels_sha256(chosen),
    }


# --------------------------------------------------------------------------- attack


def attack_config(suite: str | os.PathLike | None = None, **options: Any) -> tuple[list[str], AttackConfig]:
    """The models and settings of an attack suite file (``attacks/*.toml``), overridden by ``options`` (None values
    are left out), validated: ``(models, config)``. Without ``suite``: no models and the options over the defaults.
    Where neither names the attack (``optimizer``): the ensemble ``auto`` (auto-v2), as ``robustvae attack`` runs it."""
    from robustvae.experiments.suite import attack_config as resolve

    return resolve(suite, **options)


def _shard(shard: tuple[int, int] | str) -> tuple[int, int]:
    """``(i, N)`` from a tuple or an ``"i/N"`` string (the CLI's --shard), checked."""
    from robustvae.experiments.attack import parse_shard

    return parse_shard(shard if isinstance(shard, str) else f"{shard[0]}/{shard[1]}")


@dataclass(frozen=True)
class AttackResult:
    """The records of an attack sweep (this shard's) and their results table."""

    records: pd.DataFrame  # one row per AttackRecord (robustvae.records)
    table: pd.DataFrame  # per (dataset, norm, eps, model, k): mean / worst MS-SSIM with intervals, baselines
    out: Path | None
    targeted: pd.DataFrame | None = (
        None  # a targeted objective's success per (..., model, k): robustvae.reporting.targeted
    )


def attack(
    models: Sequence[ModelSpec],
    config: AttackConfig | None = None,
    out: str | os.PathLike | None = None,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    device: str | torch.device = "auto",
    shard: tuple[int, int] | str = (1, 1),
    quiet: bool = True,
    command: list[str] | None = None,
    dist: DistContext | None = None,
    eot: int = 0,
    images: ImageSource | None = None,
    defence: str | Defence | None = None,
    adaptive: bool = False,
) -> AttackResult:
    """Latent attacks on the top-k layers of each model: MS-SSIM of attacked vs clean reconstructions.

    ``config``: the attack and its settings; by default (``AttackConfig()``) the ensemble ``optimizer="auto"``
    (auto-v2); the paper's PGD is ``AttackConfig(optimizer="pgd")``.

    ``models``: checkpoint files, run directories, ``module.path:factory`` names, loaded models or
    models in memory (these last two kinds need ``data`` or ``images``). ``data`` replaces the models' dataset;
    ``images`` attacks a user's own images instead (:func:`load_images`): the first ``config.points`` in file
    order (they have no labels). With ``out`` the run is written there and resumed
    by a later call with the same settings; ``shard=(i, N)`` (or ``"i/N"``) runs every N-th work unit.
    ``eot``: N > 0 attacks the authors' dithered context (kuzina-ladder DCT-VAEs only) with
    the dither on, averaged over N fixed draws; by default the dither is off (run.json says which).
    ``defence``: a test-time defence (a :class:`robustvae.defences.Defence`, or a name of
    ``robustvae.defences.DEFENCES`` with its default settings) through which every scored
    reconstruction goes; ``adaptive`` attacks through it instead of attacking the model
    (docs/defences.md). Its curves are named ``<model>+hmc`` and ``<model>+hmc/adaptive``.
    """
    from robustvae.experiments.attack import run_sweep
    from robustvae.reporting.aggregate import summarise
    from robustvae.reporting.targeted import targeted_table

    from robustvae.defences import make_defence
    from robustvae.defences.sweep import DefenceRun

    shard = _shard(shard)  # a bad shard fails before any model is loaded
    if adaptive and defence is None:
        raise RobustVAEError("--adaptive attacks through a defence: add --defence hmc (or drop --adaptive)")
    run_defence = (
        None
        if defence is None
        else DefenceRun(make_defence(defence) if isinstance(defence, str) else defence, adaptive)
    )
    dev = _device(device)
    labelled = load_models(list(models), dev, data, images=images)
    if eot < 0:
        raise RobustVAEError(f"--eot takes the number of dither draws (>= 1; 0: dither off), got {eot}")
    if eot:
        from robustvae.zoo.kuzina import with_dither

        labelled = [dataclasses.replace(lm, loaded=with_dither(lm.loaded, eot)) for lm in labelled]
    records = run_sweep(
        labelled,
        config or AttackConfig(),
        out,
        device=dev,
        shard=shard,
        data_dir=data_dir,
        quiet=quiet,
        command=command,
        dist=dist,
        defence=run_defence,
    )
    targeted = targeted_table(records) if len(records) and "msssim_target" in records else None
    return AttackResult(
        records,
        summarise(records) if len(records) else pd.DataFrame(),
        Path(out) if out is not None else None,
        targeted,
    )


# --------------------------------------------------------------------------- certify


@dataclass(frozen=True)
class CertifyResult:
    """The records of a certification run (this shard's) and their summary table."""

    records: pd.DataFrame  # one row per CertifyRecord (robustvae.records): model x point x eps
    table: pd.DataFrame  # per (model, norm, eps): certified fraction, radius, the optimal attack's means
    out: Path | None


def certify_models(
    models: Sequence[ModelSpec],
    config: CertifyConfig | None = None,
    out: str | os.PathLike | None = None,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    device: str | torch.device = "auto",
    shard: tuple[int, int] | str = (1, 1),
    force: bool = False,
    quiet: bool = True,
    command: list[str] | None = None,
    images: ImageSource | None = None,
) -> CertifyResult:
    """Exact analysis of each model's quantised context on test points: certified radius, certificates, optimal attack.

    ``config``: a :class:`robustvae.config.CertifyConfig` (eps list, norm, points, ...).
    Named ``certify_models``, not ``certify``, because ``robustvae.certify`` is already
    the subpackage of the per-image analysis (``robustvae.certify.context_radius`` and
    friends); a top-level function of the same name would shadow it. With ``out`` the
    run is written there and resumed by a later call with the same settings (``force``
    starts over). A model without a context layer is an error. ``data`` and ``images`` choose the points as for
    :func:`attack`.
    """
    from robustvae.experiments.certify import run_certify
    from robustvae.reporting.certify import certify_table

    shard = _shard(shard)  # a bad shard fails before any model is loaded
    dev = _device(device)
    labelled = load_models(list(models), dev, data, images=images)
    records = run_certify(
        labelled,
        config or CertifyConfig(),
        out,
        device=dev,
        shard=shard,
        data_dir=data_dir,
        force=force,
        quiet=quiet,
        command=command,
    )
    return CertifyResult(
        records, certify_table(records) if len(records) else pd.DataFrame(), Path(out) if out is not None else None
    )


# --------------------------------------------------------------------------- output folders


@contextlib.contextmanager
def claim_output(
    out: str | os.PathLike, *, force: bool = False, what: str = "run", resumable: bool = False
) -> Iterator[Path]:
    """Hold the folder ``out`` for a job that writes several things into it (the demo).

    Refuses a file, a place this user cannot write, and, unless ``force``, a folder that
    is not empty (naming ``what`` would be replaced, and ``--resume`` when the job is ``resumable``);
    then holds its lock while the block
    runs (a second writer gets a one-line error) and refuses symbolic links inside it, so
    nothing is written or deleted through one (:class:`robustvae.experiments.rundir.RunDir`).
    """
    from robustvae.experiments.rundir import RunDir

    run_dir = RunDir(out)
    run_dir.check_usable()
    if run_dir.entries() and not force:
        resume = ", --resume to continue an interrupted one" if resumable else ""
        raise RobustVAEError(
            f"{out} is not empty; pass --force to replace an earlier {what} there{resume}, or use another --out"
        )
    with run_dir.locked():
        yield Path(out)


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
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    evals: Sequence[str | os.PathLike] = (),
    notes: Sequence[str | os.PathLike] = (),
    title: str | None = None,
    force: bool = False,
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
        from robustvae.compression.jpeg import match_warnings

        return match_warnings(self.records)


def compress(
    models: Sequence[ModelSpec],
    images: Sequence[str | os.PathLike] | torch.Tensor = (),
    config: CompressConfig | None = None,
    out: str | os.PathLike = "runs/compress",
    *,
    data: str | None = None,
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    limit: int | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    quiet: bool = True,
    command: list[str] | None = None,
) -> CompressResult:
    """Appendix G: compress images with the top k latent layers of each model and compare with JPEG at the same PSNR.

    ``images``: folders of PNG/JPEG files, image files and array files (any size of at least one patch), or an
    array / tensor of images (uint8 or floats in [0, 1]); or, instead, ``data``: the images of a dataset's
    ``split`` (``limit``: a label-stratified subset, selected with the config's seed). Writes records, the JPEG
    sweep, the images and the rate-distortion and side-by-side figures into ``out`` (refused when not empty,
    unless ``force``).
    """
    from robustvae.experiments.compress import run_compression
    from robustvae.reporting.compression import write_compression_figures

    require_positive(limit=limit)
    config = config or CompressConfig()
    dev = _device(device)
    labelled = load_models(list(models), dev, need_data=False)
    inputs, source = _compress_inputs(labelled, images, data, data_dir, split, limit, config.seed)
    records, jpeg = run_compression(
        labelled,
        inputs,
        config,
        out,
        device=dev,
        force=force,
        quiet=quiet,
        command=command,
        source=source,
        finish=write_compression_figures,
    )
    return CompressResult(records, jpeg, Path(out))


def _compress_inputs(
    labelled: list[Labelled],
    images: Sequence[str | os.PathLike] | torch.Tensor,
    data: str | None,
    data_dir: str | os.PathLike | None,
    split: str,
    limit: int | None,
    seed: int,
) -> tuple[list, Any]:
    """What :func:`compress` codes: file names (read by the experiment) or images already read, and their source."""
    import numpy as np

    from robustvae.compression.images import from_tensor
    from robustvae.config import DataConfig
    from robustvae.data import load_dataset, stratified_order, to_float
    from robustvae.data.images import one_source, read_array

    given = images is not None and (isinstance(images, (torch.Tensor, np.ndarray)) or len(images) > 0)
    one_source(data, images if given else None)
    if data is None and limit is not None:
        raise RobustVAEError("--limit picks images of --data; with --images every image given is compressed")
    if isinstance(images, (torch.Tensor, np.ndarray)):
        x, _, _ = read_array(images, labelled[0].model.cfg.image_channels)
        return from_tensor(x, [f"image-{i}" for i in range(len(x))], [f"<in memory>[{i}]" for i in range(len(x))]), {
            "path": "<in memory>",
            "images": len(x),
        }
    if data is None:
        return list(images), None
    ds = load_dataset(DataConfig(data, data_dir=str(data_dir) if data_dir is not None else None))
    part = ds.split(split)
    order = (
        stratified_order(part.labels, seed)[:limit]
        if limit is not None and limit < len(part)
        else torch.arange(len(part))
    )
    names = [f"{data}-{split}-{int(i)}" for i in order]
    imgs = from_tensor(to_float(part.images[order]), names, [f"{data}:{split}[{int(i)}]" for i in order])
    return imgs, {
        "data": data,
        "split": split,
        "images": len(imgs),
        "selection": f"label-stratified, seed {seed}" if limit is not None and limit < len(part) else "whole split",
    }


# --------------------------------------------------------------------------- sample


def sample(
    model: ModelSpec, n: int = 64, *, temperature: float = 1.0, seed: int = 0, device: str | torch.device = "auto"
) -> torch.Tensor:
    """``n`` ancestral samples (decoder mean images in [0, 1], on the CPU) at prior ``temperature``."""
    require_positive(n=n)
    require_nonnegative(temperature=temperature, seed=seed)
    (lm,) = load_models([model], _device(device), need_data=False)
    noise = lm.model.make_noise(n, torch.Generator().manual_seed(seed))
    return lm.model.sample(n, temperature=temperature, noise=noise).cpu()


def save_grid(images: torch.Tensor, out: str | os.PathLike, settings: dict[str, Any] | None = None) -> int:
    """Write ``images`` (N, C, H, W) in [0, 1] as one PNG grid (atomically), each image scaled up by nearest
    neighbour to at least 84 px; ``settings`` go into the PNG's text chunk. Returns the scale factor."""
    from robustvae.grid import save_grid as write

    return write(images, Path(out), settings or {})
