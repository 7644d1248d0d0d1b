"""Compression runs in reports: reading what ``robustvae compress`` wrote, its figures and tables.

* :func:`is_compression_run`: a directory whose ``run.json`` has ``kind: compress``;
* :func:`load_compression_run`: its ``run.json``, ``records.csv`` and ``jpeg.csv``;
* :func:`write_compression_figures`: the run's figures (``rd.png``, ``rd.pdf``,
  ``side-by-side/*.png``) drawn from its files alone and written into it;
* :func:`rd_figure`: PSNR and MS-SSIM against bits per pixel, a marker per model and k
  (means over the images), JPEG as a curve over its qualities;
* :func:`side_by_side_figure`: per image, original | reconstruction | JPEG at the
  matched PSNR, a row per model and k;
* :func:`~robustvae.reporting.tables.summary_table`: per model and k, the means over
  images (numbers only).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from robustvae import io
from robustvae.errors import RobustVAEError
from robustvae.io import safe_name
from robustvae.records import COMPRESSION_RUN_KIND, CompressionRecord, jpeg_match_problem
from robustvae.reporting.figures import dropped_note, imshow_array, marker_map, new_figure, palette
from robustvae.reporting.tables import summary_table
from robustvae.validation import CompressRun, JpegRow, read_csv_rows, read_json, row_schema

MAX_PICTURES = 4  # side-by-side pictures embedded per run (all of them stay in the run directory)


@dataclass
class CompressionRun:
    """One directory written by ``robustvae compress``."""

    dir: Path
    info: dict[str, Any]
    records: pd.DataFrame
    jpeg: pd.DataFrame

    def folder(self, image: dict[str, Any]) -> str:
        """The file name of an image's outputs, as ``run.json`` records it (runs written before: its safe name)."""
        return image.get("folder") or safe_name(image["name"])

    def file_stem(self, model: str) -> str:
        """The file stem of a model's reconstructions, as ``run.json`` records it (runs written before: its safe name)."""
        stems = {m.get("label"): m.get("file_stem") for m in self.info.get("models", [])}
        return stems.get(model) or safe_name(model)

    def side_by_side(self) -> list[tuple[str, Path]]:
        """(image name, picture) for every image, in the run's order."""
        return [(im["name"], self.dir / "side-by-side" / f"{self.folder(im)}.png") for im in self.info["images"]]


def is_compression_run(d: str | Path) -> bool:
    """Whether ``d`` holds a ``run.json`` written by ``robustvae compress``."""
    try:
        info = json.loads((Path(d) / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("kind") == COMPRESSION_RUN_KIND


def load_compression_run(d: str | Path) -> CompressionRun:
    """Read a compression run directory (``run.json``, ``records.csv``, ``jpeg.csv``), every file checked
    (:mod:`robustvae.validation`); one clear line naming the file, line and field otherwise."""
    d = Path(d)
    fix = "copy the whole compression run directory, or re-run robustvae compress"
    info = read_json(d / "run.json", CompressRun, fix)
    records = read_csv_rows(d / "records.csv", row_schema(CompressionRecord), fix, jpeg_match_problem)
    jpeg = read_csv_rows(d / "jpeg.csv", JpegRow, fix)
    names = {im["name"] for im in info["images"]}
    for table, name in ((records, "records.csv"), (jpeg, "jpeg.csv")):
        unknown = sorted(set(table.image) - names)
        if unknown:
            raise RobustVAEError(f"{d / name} names image {unknown[0]!r}, which run.json does not list; {fix}")
    return CompressionRun(d, info, records, jpeg)


def read_image(path: str | os.PathLike | BinaryIO) -> np.ndarray:
    """An 8-bit PNG or JPEG file -> (C, H, W) uint8, as the compression run held it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except OSError as e:
        raise RobustVAEError(
            f"cannot read {path} ({type(e).__name__}); copy the whole compression run directory"
        ) from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _side_by_side_panels(
    run: CompressionRun, image: dict[str, Any]
) -> tuple[np.ndarray, list[tuple[Any, np.ndarray, np.ndarray]]]:
    """One image's original and, per row of its records (in order), (record, reconstruction, matched JPEG), from files."""
    folder = run.dir / "images" / run.folder(image)
    original = read_image(folder / "original.png")
    if original.shape[1:] != (image["height"], image["width"]):
        raise RobustVAEError(
            f"{folder / 'original.png'} is {original.shape[2]}x{original.shape[1]}, run.json says "
            f"{image['width']}x{image['height']}; copy the whole compression run directory"
        )
    panels = [
        (
            r,
            read_image(folder / f"{run.file_stem(r.model)}-k{r.k}.png"),
            read_image(folder / f"jpeg-q{int(r.jpeg_quality)}.jpg") if pd.notna(r.jpeg_quality) else None,
        )
        for _, r in run.records[run.records.image == image["name"]].iterrows()
    ]
    return original, panels


def write_compression_figures(run_dir: str | os.PathLike) -> list[Path]:
    """Draw a compression run's figures from its files alone and write them into the run directory.

    Reads ``run.json`` (its ``images``: name, width, height, in order), ``records.csv``,
    ``jpeg.csv`` and per image ``images/<image>/original.png``, ``<model>-k<k>.png`` and
    ``jpeg-q<quality>.jpg`` (``run.json``'s ``folder`` and ``file_stem``); writes
    ``rd.png`` and ``rd.pdf`` (:func:`rd_figure`, dpi 130) and per image
    ``side-by-side/<image>.png`` (:func:`side_by_side_figure`, dpi 90). Returns the paths written.
    """
    run = load_compression_run(run_dir)
    written = [run.dir / f"rd.{fmt}" for fmt in ("png", "pdf")]
    fig = rd_figure(run.records, run.jpeg)
    for path in written:
        with io.atomic_file(path, root=run.dir) as f:
            fig.savefig(f, format=path.suffix[1:], dpi=130)
    for (name, path), image in zip(run.side_by_side(), run.info["images"]):
        original, panels = _side_by_side_panels(run, image)
        with io.atomic_file(path, root=run.dir) as f:
            side_by_side_figure(name, original, panels).savefig(f, format="png", dpi=90)
        written.append(path)
    return written


def rd_figure(records: pd.DataFrame, jpeg: pd.DataFrame) -> Figure:
    """PSNR (left) and MS-SSIM (right) against bpp: models' markers labelled by k, JPEG's curve over qualities."""
    table = summary_table(records)
    curve = jpeg.groupby("quality")[["bpp", "psnr", "msssim"]].mean().reset_index()
    models = sorted(table.model.unique())
    colours = palette(models)
    markers = marker_map(models)
    n_images = records.image.nunique()
    fig = new_figure(11, 4.4)
    axes = fig.subplots(1, 2)
    for ax, metric, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "msssim", "MS-SSIM")):
        ax.plot(curve.bpp, curve[metric], color="0.35", lw=1.4, zorder=1)
        for q in (1, 10, 50, 95):
            hit = curve[curve.quality == q]
            if len(hit):
                ax.annotate(
                    f"q{q}",
                    (hit.bpp.iloc[0], hit[metric].iloc[0]),
                    fontsize=7,
                    color="0.35",
                    xytext=(3, -9),
                    textcoords="offset points",
                )
        for m in models:
            g = table[table.model == m]
            ax.scatter(g.bpp, g[metric], color=colours[m], marker=markers[m], s=45, zorder=3)
            for _, r in g.iterrows():
                ax.annotate(f"k={int(r.k)}", (r.bpp, r[metric]), fontsize=8, xytext=(4, 3), textcoords="offset points")
                if not math.isnan(r.bpp_context_raw):
                    ax.scatter(
                        [r.bpp_context_raw],
                        [r[metric]],
                        facecolors="none",
                        edgecolors=colours[m],
                        marker=markers[m],
                        s=45,
                        zorder=3,
                    )
                    ax.plot([r.bpp, r.bpp_context_raw], [r[metric]] * 2, color=colours[m], lw=0.8, ls=":", zorder=2)
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel (log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color=colours[m], marker=markers[m], ls="", label=m) for m in models]
    handles.append(Line2D([], [], color="0.35", label="JPEG (Pillow, 4:4:4), qualities 1-95"))
    if table.bpp_context_raw.notna().any():
        handles.append(
            Line2D(
                [],
                [],
                color="0.3",
                marker="o",
                mfc="none",
                ls=":",
                label="hollow: DCT-VAE context at its raw size (BPP*)",
            )
        )
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)
    note = dropped_note(table, "non-finite reconstruction(s)")
    fig.suptitle(
        f"Rate-distortion, mean over {n_images} image{'s' if n_images != 1 else ''}: reconstruction "
        f"from the top k layers (filled: context under its diffusion prior) vs JPEG{note}",
        fontsize=10,
    )
    return fig


def _bpp_text(r: Any) -> str:
    raw = "" if pd.isna(r.bpp_context_raw) else f" (BPP* {r.bpp_context_raw:.3f})"
    return f"{r.bpp:.3f} bpp{raw}"


def side_by_side_figure(name: str, original: np.ndarray, panels: list[tuple[Any, np.ndarray, np.ndarray]]) -> Figure:
    """Original | model reconstruction | JPEG at the matched PSNR, a row per (record, reconstruction, JPEG image)."""
    h, w = original.shape[1:]
    cell = 3.4
    fig = new_figure(3 * cell, len(panels) * (cell * h / w + 0.55) + 0.3)
    axes = fig.subplots(len(panels), 3, squeeze=False)
    for row, (r, rec, jpg) in enumerate(panels):
        scored = pd.notna(r.jpeg_quality)  # a non-finite reconstruction is not scored and has no JPEG beside it
        cells = [
            (original, f"{name} ({w}x{h})"),
            (
                rec,
                f"{r.model}, k={int(r.k)}\n"
                + (
                    f"PSNR {r.psnr:.2f} dB, MS-SSIM {r.msssim:.3f}, {_bpp_text(r)}"
                    if scored
                    else "non-finite values: not scored"
                ),
            ),
            (
                jpg,
                f"JPEG q={int(r.jpeg_quality)}\nPSNR {r.jpeg_psnr:.2f} dB, MS-SSIM {r.jpeg_msssim:.3f}, "
                f"{r.jpeg_bpp:.3f} bpp"
                if scored
                else "no JPEG matched",
            ),
        ]
        for c, (img, title) in enumerate(cells):
            ax = axes[row, c]
            if img is None:
                ax.set_axis_off()
                ax.set_title(title, fontsize=7.5)
                continue
            ax.imshow(imshow_array(img.astype(np.float32) / 255), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7.5)
    return fig
