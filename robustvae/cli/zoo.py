"""robustvae zoo: presets and published checkpoints (list, import, fetch)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from robustvae.cli.common import out_console, zoo_app


@zoo_app.command("list")
def zoo_list() -> None:
    """Presets (train them with robustvae train --preset NAME) and published checkpoints."""
    from robustvae.zoo import list_entries

    rows = list_entries()
    table = Table(title="robustvae zoo")
    table.add_column("name", no_wrap=True, min_width=max(len(r["name"]) for r in rows))
    for col in ("kind", "model", "data", "layers", "about"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(r[c] for c in ("name", "kind", "model", "data", "layers", "about")))
    out_console.print(table)
    if not any(r["kind"].startswith(("checkpoint", "published")) for r in rows):
        out_console.print("No published checkpoints are registered yet; train a preset with robustvae train.")


@zoo_app.command("import")
def zoo_import(
    file: Path = typer.Argument(..., help="A checkpoint file of another code base (downloaded by hand)."),
    source: str = typer.Option(
        "kuzina", "--from", help="Whose checkpoint: kuzina (AKuzina/dct_vae) or openai-vdvae (openai/vdvae)."
    ),
    preset: Optional[str] = typer.Option(
        None,
        "--preset",
        "-p",
        help="The preset of its architecture, e.g. kuzina-dctvae-mnist (kuzina: required; openai-vdvae: this or --hps). \\[default: none]",
    ),
    hps: Optional[str] = typer.Option(
        None,
        "--hps",
        help="openai-vdvae: its hyperparameter set, cifar10|imagenet32|imagenet64|ffhq256|ffhq1024 (or --preset). \\[default: none]",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the robustvae checkpoint (best.pt)."),
    force: bool = typer.Option(False, "--force", help="Replace the checkpoint in a non-empty --out."),
) -> None:
    """Convert a checkpoint of the authors (kuzina) or of openai/vdvae (weights only, no code runs) into a robustvae
    checkpoint with provenance."""
    from robustvae.api import import_checkpoint

    dest = import_checkpoint(file, source, out, preset=preset, hps=hps, force=force)
    out_console.print(f"imported {file} ({source}) into {dest}; evaluate it with: robustvae eval {out}")


@zoo_app.command("fetch")
def zoo_fetch(
    name: str = typer.Argument(..., help="A published checkpoint (robustvae zoo list), e.g. kuzina-dctvae-mnist."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the robustvae checkpoint (best.pt)."),
    force: bool = typer.Option(False, "--force", help="Replace the checkpoint in a non-empty --out."),
) -> None:
    """Download a published checkpoint (kuzina-*: Google Drive, needs gdown) and import it."""
    from robustvae.api import fetch_checkpoint

    dest = fetch_checkpoint(name, out, force=force)
    out_console.print(f"fetched and imported {name} into {dest}; evaluate it with: robustvae eval {out}")
