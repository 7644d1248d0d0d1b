"""The compression experiment (Appendix G): how much of an image the top k latent layers carry, against JPEG.

Every image is cut into patches of the model's input size; each patch is
reconstructed from the posterior means of the top k layers with the layers below
drawn from the prior at ``temperature`` (:mod:`robustvae.compression`); the patches
are stitched back, rounded to 8 bits and scored against the image with PSNR and
MS-SSIM. The rate is the KL terms of the top k layers in bits (a quantised top layer
also at its raw size, BPP*). The JPEG baseline: for each image and k, the quality
whose PSNR is closest to the model's, with its real file size.

The experiment writes records and files only (:class:`~robustvae.records.CompressionRecord`
rows in ``records.csv``, the JPEG sweep in ``jpeg.csv``, ``run.json``, and per image
its 8-bit input, reconstructions and matched JPEG files under ``images/``); its
figures are drawn by :func:`robustvae.reporting.compression.write_compression_figures`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robustvae.compression import code_images, context_raw_bits, jpeg
from robustvae.compression.images import InputImage, check_images, patch_count, read_images
from robustvae.config import CompressConfig, parse_layers, to_dict
from robustvae.errors import RobustVAEError
from robustvae.experiments.models import Labelled
from robustvae.experiments.rundir import RunDir, provenance
from robustvae import io
from robustvae.io import unique_names
from robustvae.progress import make_progress
from robustvae.records import COMPRESSION_RUN_KIND, CompressionRecord
from robustvae.compression.jpeg import match_warnings

# what a compression run writes (and ``force`` replaces); the figures among them come from the report package
OUTPUTS = ("records.csv", "jpeg.csv", "run.json", "rd.png", "rd.pdf", "side-by-side", "images")


def _model_rows(
    lm: Labelled,
    im: InputImage,
    ks: list[int],
    recs: dict[int, np.ndarray],
    layer_bits: torch.Tensor,
    patches: int,
    cfg: CompressConfig,
) -> list[CompressionRecord]:
    """One record per k for one model and image (JPEG columns are filled in later)."""
    model = lm.model
    ps, ms = jpeg.score(im.pixels, [recs[k] for k in ks])
    bad = getattr(recs, "nonfinite", {})  # a NaN reconstruction is not scored as the black image it casts to
    ps = [math.nan if bad.get(k) else p for k, p in zip(ks, ps)]
    ms = [math.nan if bad.get(k) else m for k, m in zip(ks, ms)]
    pixels = im.height * im.width
    coded = model.layers[0].deterministic  # a quantised top layer: its rate under the prior, and its raw size
    raw = context_raw_bits(model) * patches
    rows = []
    for k, p, m in zip(ks, ps, ms):
        used = layer_bits[:k].double()
        gaussian = float(used[1:].sum()) if coded else float(used.sum())
        context = float(used[0]) if coded else math.nan
        bits = gaussian + (context if coded else 0.0)
        rows.append(
            CompressionRecord(
                image=im.name,
                width=im.width,
                height=im.height,
                channels=int(im.pixels.shape[0]),
                conversion=im.conversion,
                model=lm.label,
                arch=model.arch,
                checkpoint_sha256=lm.sha256,
                k=k,
                patch_size=model.cfg.image_size,
                patches=patches,
                temperature=cfg.temperature,
                seed=cfg.seed,
                psnr=p,
                msssim=m,
                msssim_impl=jpeg.msssim_impl(im.height, im.width),
                bits=bits,
                bpp=bits / pixels,
                gaussian_bits=gaussian,
                context_bits_prior=context,
                context_bits_raw=raw if coded else math.nan,
                bpp_context_raw=(raw + gaussian) / pixels if coded else math.nan,
            )
        )
    return rows


def _sweep_rows(im: InputImage, sweep: jpeg.Sweep) -> list[dict[str, Any]]:
    """jpeg.csv's rows of one image: one per quality."""
    impl = jpeg.msssim_impl(im.height, im.width)
    return [
        {
            "image": im.name,
            "width": im.width,
            "height": im.height,
            "channels": int(im.pixels.shape[0]),
            "quality": q,
            "bytes": len(f),
            "bpp": b,
            "psnr": p,
            "msssim": m,
            "msssim_impl": impl,
        }
        for q, f, b, p, m in zip(sweep.qualities, sweep.files, sweep.bpp, sweep.psnr, sweep.msssim)
    ]


def _model_info(lm: Labelled, ks: list[int], patches: int, seconds: float) -> dict[str, Any]:
    """What run.json says about one model: where it came from, what it coded, how fast."""
    model = lm.model
    return {
        "label": lm.label,
        "path": lm.path,
        "sha256": lm.sha256,
        "sha256_of": lm.loaded.sha256_of,
        "arch": model.arch,
        "config": to_dict(lm.config),
        "num_layers": model.num_layers,
        "layers": ks,
        "patch_size": model.cfg.image_size,
        "context_bits_raw_per_patch": context_raw_bits(model) or None,
        "patches": patches,
        "model_seconds": seconds,
        "patches_per_s": patches / max(seconds, 1e-9),
        "reconstructions_per_s": patches * len(ks) / max(seconds, 1e-9),
    }


def save_png(pixels: np.ndarray, path: Path, *, root: Path | None = None) -> None:
    """An 8-bit (C, H, W) array as a PNG (grey or RGB), written atomically below ``root``."""
    from PIL import Image

    with io.atomic_file(path, root=root) as f:
        Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(f, format="PNG")


def file_names(imgs: list[InputImage], models: list[Labelled]) -> tuple[list[str], dict[str, str]]:
    """(a folder name per image, a file stem per model label): distinct on any file system, decided before any work.

    Image names that differ only in characters a file name cannot hold (``c d`` and ``c_d``)
    or in case get ``-2``, ``-3``, ... in the order given (:func:`~robustvae.io.unique_names`);
    ``run.json`` records each (``folder``, ``file_stem``) so that readers never re-derive them.
    """
    return unique_names([im.name for im in imgs]), dict(
        zip([lm.label for lm in models], unique_names([lm.label for lm in models]))
    )


def _write_files(
    out: Path,
    records: pd.DataFrame,
    sweep_rows: pd.DataFrame,
    imgs: list[InputImage],
    recs: dict[str, list[dict[int, np.ndarray]]],
    sweeps: dict[str, jpeg.Sweep],
    names: tuple[list[str], dict[str, str]],
) -> None:
    """records.csv, jpeg.csv, and per image its input, reconstructions and matched JPEG files (all below ``out``)."""
    folders, stems = names
    io.write_text(out / "records.csv", records.to_csv(index=False), root=out)
    io.write_text(out / "jpeg.csv", sweep_rows.to_csv(index=False), root=out)
    for i, (im, folder) in enumerate(zip(imgs, folders)):
        d = out / "images" / folder
        io.make_dirs(d, root=out)
        save_png(im.pixels, d / "original.png", root=out)
        for _, r in records[records.image == im.name].iterrows():
            save_png(recs[r.model][i][r.k], d / f"{stems[r.model]}-k{r.k}.png", root=out)
            if pd.isna(r.jpeg_quality):
                continue  # a non-finite reconstruction: no JPEG matched to it
            q = int(r.jpeg_quality)
            io.write_bytes(d / f"jpeg-q{q}.jpg", sweeps[im.name].files[sweeps[im.name].qualities.index(q)], root=out)


def _code_all(
    models: list[Labelled],
    imgs: list[InputImage],
    ks: dict[str, list[int]],
    config: CompressConfig,
    dev: torch.device,
    quiet: bool,
):
    """Model passes and JPEG sweeps of every image: (record rows, reconstructions, timing, sweeps)."""
    rows: list[CompressionRecord] = []
    recs: dict[str, list[dict[int, np.ndarray]]] = {}
    timing: dict[str, tuple[int, float]] = {}
    total = sum(patch_count(im.height, im.width, lm.model.cfg.image_size) for lm in models for im in imgs)
    with make_progress(quiet) as progress:
        task = progress.add_task("compress", total=total, info="model passes")
        for lm in models:
            r, bits, counts, seconds = code_images(
                lm.model,
                imgs,
                ks[lm.label],
                config,
                dev,
                lambda n, lm=lm: progress.update(task, advance=n, info=lm.label),
            )
            recs[lm.label] = r
            timing[lm.label] = (sum(counts), seconds)
            for im, rec, b, c in zip(imgs, r, bits, counts):
                rows += _model_rows(lm, im, ks[lm.label], rec, b, c, config)
        jtask = progress.add_task("JPEG", total=len(imgs), info=f"qualities {jpeg.QUALITIES[0]}-{jpeg.QUALITIES[-1]}")
        sweeps = {}
        for im in imgs:
            sweeps[im.name] = jpeg.sweep(im.pixels)
            progress.update(jtask, advance=1, info=im.name)
    return rows, recs, timing, sweeps


def _inputs(
    models: list[Labelled], images: list[str | os.PathLike] | list[InputImage], config: CompressConfig
) -> tuple[list[InputImage], int]:
    """The images to compress, read (files) or checked (images already read): (images, files skipped)."""
    channels = {lm.model.cfg.image_channels for lm in models}
    if len(channels) > 1:
        raise RobustVAEError("the models take grey and RGB images; compress grey and colour models in separate runs")
    channels, patch = channels.pop(), max(lm.model.cfg.image_size for lm in models)
    if images and all(isinstance(im, InputImage) for im in images):
        if any(im.pixels.shape[0] != channels for im in images):
            raise RobustVAEError(
                f"the images have {images[0].pixels.shape[0]} channels but the models take {channels}; "
                f"pass images of the models' kind"
            )
        return check_images(list(images), patch), 0
    return read_images(list(images), channels, patch, config.max_pixels)


def _inputs_info(
    models: list[Labelled],
    imgs: list[InputImage],
    ks: dict[str, list[int]],
    timing: dict[str, tuple[int, float]],
    names,
) -> dict[str, Any]:
    """run.json's ``images`` and ``models`` entries: what was coded, with which output names, at what cost."""
    return {
        "images": [
            {
                "name": im.name,
                "folder": folder,
                "path": im.path,
                "width": im.width,
                "height": im.height,
                "mode": im.mode,
                "conversion": im.conversion,
                "sha256": im.sha256,
            }
            for im, folder in zip(imgs, names[0])
        ],
        "models": [
            {**_model_info(lm, ks[lm.label], *timing[lm.label]), "file_stem": names[1][lm.label]} for lm in models
        ],
    }


def run_compression(
    models: list[Labelled],
    images: list[str | os.PathLike] | list[InputImage],
    config: CompressConfig,
    out: str | os.PathLike,
    *,
    device: torch.device,
    force: bool = False,
    quiet: bool = True,
    command: list[str] | None = None,
    source: dict[str, Any] | None = None,
    finish: Callable[[Path], Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compress ``images`` with every model and JPEG; write the run into ``out``; return (records, JPEG sweep).

    ``images``: folders, image files and array files (:func:`~robustvae.compression.images.read_images`), or images
    already read (a dataset's: ``source`` then says which, for run.json). Everything is read and checked before
    anything is written, so a bad input leaves ``out`` as it was. The run is written beside an earlier one
    (``force``) and swapped in at the end; ``finish(folder)`` (the figures) runs on the new run before the swap.
    """
    run = RunDir(out)
    run.check_fresh(force)
    ks = {lm.label: parse_layers(config.layers, lm.model.num_layers, lm.label) for lm in models}
    imgs, skipped = _inputs(models, images, config)
    names = file_names(imgs, models)  # every output name is known (and distinct) before any work
    t0 = time.perf_counter()
    rows, recs, timing, sweeps = _code_all(models, imgs, ks, config, device, quiet)
    matched = [sweeps[r.image].closest(r.psnr) if math.isfinite(r.psnr) else None for r in rows]
    records = pd.DataFrame([r.to_row() for r in rows], columns=CompressionRecord.columns())
    for col, attr in (
        ("jpeg_quality", "qualities"),
        ("jpeg_psnr", "psnr"),
        ("jpeg_msssim", "msssim"),
        ("jpeg_bpp", "bpp"),
    ):
        records[col] = [getattr(sweeps[r.image], attr)[i] if i is not None else None for r, i in zip(rows, matched)]
    sweep_rows = pd.DataFrame([row for im in imgs for row in _sweep_rows(im, sweeps[im.name])])
    info = {
        "kind": COMPRESSION_RUN_KIND,
        "command": command or sys.argv,
        "settings": to_dict(config),
        "jpeg": jpeg.SETTINGS,
        **provenance(["pillow"]),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "wall_time_s": time.perf_counter() - t0,
        "skipped_files": skipped,
        "image_source": source,
        **_inputs_info(models, imgs, ks, timing, names),
        "warnings": match_warnings(records),
    }
    with run.locked():
        run.check_fresh(force)  # again: the directory may have been filled meanwhile
        with io.replace_outputs(run.path, OUTPUTS) as new:  # an earlier run stays whole until the new one is written
            _write_files(new, records, sweep_rows, imgs, recs, sweeps, names)
            io.write_json(new / "run.json", info, root=new)  # a run.json means the run is complete
            if finish is not None:
                finish(new)
    return records, sweep_rows
