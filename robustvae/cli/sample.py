"""robustvae sample: ancestral samples as a PNG grid."""

from __future__ import annotations

from pathlib import Path

import typer

from robustvae.cli.common import DEVICE_HELP, ctrl_c, app, out_console
from robustvae.errors import RobustVAEError


@app.command()
def sample(
    checkpoint: str = typer.Argument(
        ..., help="Checkpoint file or run directory (robustvae zoo fetch makes one of a published checkpoint)."
    ),
    n: int = typer.Option(64, "--n", help="Number of samples."),
    temperature: float = typer.Option(
        1.0,
        "--temperature",
        "-t",
        help="Prior temperature (of the Gaussian layers; DCT-VAE draws its context from the diffusion prior).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the prior noise."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out: Path = typer.Option(
        Path("samples.png"), "--out", "-o", help="PNG grid to write (the settings go into its text chunks)."
    ),
    force: bool = typer.Option(False, "--force", metavar="", help="Overwrite an existing --out. \\[default: off]"),
) -> None:
    """Draw ancestral samples (decoder mean images) and save them as a PNG grid, each image at least 84 px wide."""
    from robustvae.errors import require_nonnegative, require_positive

    require_positive(n=n)
    require_nonnegative(temperature=temperature, seed=seed)
    if out.suffix.lower() != ".png":
        raise RobustVAEError(f"--out {out} needs the .png image file extension (got {out.suffix or 'none'})")
    if out.is_dir():
        raise RobustVAEError(f"--out {out} is a directory; give a .png file name")
    if out.exists() and not force:
        raise RobustVAEError(f"{out} exists; pass --force to overwrite it or choose another --out")
    settings = {"checkpoint": checkpoint, "n": n, "temperature": temperature, "seed": seed, "device": device}
    out_console.print(
        f"sample: {n} images from {checkpoint} at temperature {temperature}, seed {seed}, device {device} -> {out}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    with ctrl_c("sample"):
        from robustvae import api

        imgs = api.sample(checkpoint, n, temperature=temperature, seed=seed, device=device)
        scale = api.save_grid(imgs, out, settings)
    out_console.print(
        f"wrote {n} samples at temperature {temperature} to {out} (each {imgs.shape[-1] * scale} px, {scale}x nearest)"
    )
