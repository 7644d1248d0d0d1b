"""robustvae compress: top-k layers against JPEG (Appendix G)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from robustvae.cli.common import DEVICE_HELP, MODELS_HELP, THREADS, app, out_console, print_frame
from robustvae.device import cpu_threads
from robustvae.errors import RobustVAEError


@app.command()
def compress(
    models: list[str] = typer.Argument(..., help=MODELS_HELP + " All grey or all RGB."),
    images: list[Path] = typer.Option(
        [],
        "--images",
        help="A folder of PNG/JPEG files, image files, or .npy/.npz/.pt arrays (uint8, or floats in [0, 1]; NCHW or NHWC), any size of at least one patch (repeatable). \\[required unless --data]",
    ),
    data: Optional[str] = typer.Option(
        None, "--data", help="Instead of --images: the test images of a dataset, e.g. mnist-offline. \\[default: none]"
    ),
    limit: Optional[int] = typer.Option(
        None,
        "--limit",
        help="With --data: a label-stratified subset of this many images, selected with --seed. \\[default: the whole test split]",
    ),
    data_dir: Optional[str] = typer.Option(
        None,
        "--data-dir",
        help="Folder with the dataset files (--data). \\[default: $ROBUSTVAE_DATA, else ~/.cache/robustvae/data]",
    ),
    layers: Optional[str] = typer.Option(
        None, "--layers", help="Top-k layers that carry the image: 1,2 or 1-4 or all. \\[required]"
    ),
    temperature: float = typer.Option(0.1, "--temperature", help="Prior temperature of the layers below k."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prior noise and of the rate's posterior samples."),
    batch_size: int = typer.Option(64, "--batch-size", help="Patches per model pass."),
    max_pixels: int = typer.Option(4_000_000, "--max-pixels", help="Refuse images larger than this (width x height)."),
    out: Path = typer.Option(Path("runs/compress"), "--out", "-o", help="Output directory (must be new or empty)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier compression run in --out."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    threads: Optional[int] = THREADS,
) -> None:
    """Appendix G: compress images patch by patch with the top k latent layers and compare with JPEG at the same PSNR."""
    from robustvae import api
    from robustvae.config import CompressConfig

    if layers is None:
        raise RobustVAEError(
            "--layers is required: the top-k layers that carry the image, e.g. --layers 1,2 or 1-4 or all"
        )
    cfg = CompressConfig(
        layers=layers, temperature=temperature, seed=seed, batch_size=batch_size, max_pixels=max_pixels
    )
    with cpu_threads(threads):
        res = api.compress(
            models,
            list(images),
            cfg,
            out,
            data=data,
            data_dir=data_dir,
            limit=limit,
            device=device,
            force=force,
            quiet=quiet,
            command=["robustvae", *(sys.argv[1:])],
        )
    print_compression_table(res.records)
    for line in res.warnings:
        out_console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    out_console.print(f"{len(res.records)} records, rate-distortion figure and side-by-side pictures in {out}")


def print_compression_table(records) -> None:
    """Means over images per model and k, beside JPEG at the matched PSNR."""
    from robustvae.reporting.tables import display_compression, summary_table

    print_frame(
        display_compression(summary_table(records)),
        f"compression: means over {records.image.nunique()} image(s); BPP*: DCT-VAE context at its raw size; "
        f"JPEG at the PSNR closest to the model's",
    )
