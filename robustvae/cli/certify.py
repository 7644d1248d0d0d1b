"""robustvae certify: exact analysis of a quantised context."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from robustvae.cli.common import (
    DATA_HELP,
    DEVICE_HELP,
    IMAGES_HELP,
    QUIET_HELP,
    THREADS,
    app,
    image_source_text,
    load_with_images,
    out_console,
    print_frame,
    settings_text,
)
from robustvae.device import cpu_threads
from robustvae.errors import RobustVAEError


def _eps_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise RobustVAEError(
            f"--eps expects comma-separated budgets such as 0.025,0.05,0.1,0.2, got {text!r}"
        ) from None


@app.command()
def certify(
    models: list[str] = typer.Argument(
        ...,
        help="DCT-VAE checkpoint files, run directories, or module.path:factory (your own model with a context layer, docs/own-model.md).",
    ),
    eps: str = typer.Option(
        "0.025,0.05,0.1,0.2",
        "--eps",
        help="Comma-separated budgets on [0, 1] pixels: finite, >= 0, below 1 for linf and below sqrt(C x H x W) for l2.",
    ),
    norm: str = typer.Option("linf", "--norm", help="linf or l2."),
    points: int = typer.Option(
        50,
        "--points",
        help="Test points, stratified by label (the same as attack's with the same --seed; --images: the first N in file order).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the point selection and the prior noise."),
    time_limit: float = typer.Option(
        10.0, "--time-limit", help="Seconds per MILP of the optimal attack (two per point and eps)."
    ),
    optimal: bool = typer.Option(
        True,
        "--optimal/--no-optimal",
        help="Run the optimal context attack (MILP); --no-optimal: radii and certificates only.",
    ),
    temperature: float = typer.Option(
        0.1, "--temperature", help="Prior temperature below layer 1 of the scored k = 1 reconstruction."
    ),
    out: Path = typer.Option(
        Path("runs/certify"), "--out", "-o", help="Output directory (resumed when the settings match)."
    ),
    force: bool = typer.Option(False, "--force", help="Start over: remove the earlier certification run in --out."),
    shard: str = typer.Option("1/1", "--shard", help="Run slice i of N of the work units, e.g. 1/2."),
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    images: Optional[Path] = typer.Option(None, "--images", help=IMAGES_HELP),
    data_dir: Optional[str] = typer.Option(
        None, "--data-dir", help="Folder with the dataset files. \\[default: the checkpoint's]"
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help=QUIET_HELP),
    threads: Optional[int] = THREADS,
) -> None:
    """Exact analysis of DCT-VAE's quantised context: certified radius, certified fraction, optimal context attack."""
    from robustvae import api
    from robustvae.config import CertifyConfig
    from robustvae.reporting.certify import display_certify

    cfg = CertifyConfig(
        eps=_eps_list(eps),
        norm=norm,
        points=points,
        seed=seed,
        time_limit=time_limit,
        optimal=optimal,
        temperature=temperature,
    )
    with cpu_threads(threads):
        specs, image_set = load_with_images(models, images, data, device)
        out_console.print(
            f"certify {', '.join(models)} on {device}, out {out}, {image_source_text(image_set, data)}: "
            f"{settings_text(cfg)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        res = api.certify_models(
            specs,
            cfg,
            out,
            device=device,
            shard=shard,
            data=data,
            data_dir=data_dir,
            force=force,
            quiet=quiet,
            command=["robustvae", *(sys.argv[1:])],
            images=image_set,
        )
    print_frame(
        display_certify(res.table),
        "context certification: certified fraction, median radius, optimal attack (means over points)",
    )
    out_console.print(f"{len(res.records)} records in {out}")
