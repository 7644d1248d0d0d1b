"""What every command module shares: the typer app, the console, option help texts and small printers."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    name="robustvae",
    help="How easily can the latent space of hierarchical VAEs be fooled? Train, evaluate and attack VDVAE / DCT-VAE.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
zoo_app = typer.Typer(help="Presets and published checkpoints.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")

out_console = Console()

DEVICE_HELP = "auto (CUDA when visible), cpu, cuda or cuda:N."
BACKEND_HELP = "Under torchrun: gloo (CPU), nccl (CUDA) or auto (by device). Ignored in a single process."
SET_HELP = "Override any config field, e.g. --set model.channels=16 --set train.lr=3e-4 (repeatable)."
QUIET_HELP = "No progress display (log.txt in the output directory still gets the progress lines). \\[default: off]"
MODELS_HELP = (
    "Checkpoint files, run directories (robustvae zoo fetch makes one of a published checkpoint), or module.path:factory (your own model, "
    "docs/own-model.md)."
)
DATA_HELP = (
    "Dataset instead of the model's own, e.g. mnist-offline (a module:factory model needs --data or "
    "--images). \\[default: the checkpoint's]"
)
IMAGES_HELP = (
    "Your own images instead of a dataset: a folder of PNG/JPEG files, an image file, or a .npy/.npz/.pt "
    "array (uint8, or floats in [0, 1]; NCHW or NHWC). \\[default: none]"
)


def settings_text(cfg) -> str:
    """A config's fields as ``name value, ...`` (None shows as ``default``), for a command's settings line."""
    import dataclasses

    return ", ".join(f"{k} {'default' if v is None else v}" for k, v in dataclasses.asdict(cfg).items())


def image_source_text(images, data: str | None) -> str:
    """Where a command's images come from, for its settings line: the image set, the dataset given, or the models'."""
    if images is not None:
        return f"images {images.describe()}"
    return f"data {data}" if data else "data: each model's own"


def _threads_help() -> str:
    from robustvae.device import THREADS_REASON

    return f"torch's CPU threads. \\[default: 1 unless OMP_NUM_THREADS is set: {THREADS_REASON}]"


# one --threads for every command that computes (train, eval, attack, certify, compress, demo)
THREADS = typer.Option(None, "--threads", help=_threads_help())


def _version(value: bool) -> None:
    if value:
        from robustvae import __version__

        typer.echo(f"robustvae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """robustvae: latent-space robustness of hierarchical VAEs."""


@contextmanager
def ctrl_c(command: str, after: str = ""):
    """A Ctrl-C that reaches the command (not handled deeper) becomes one 'stopped' line and exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        from robustvae.errors import Interrupted

        raise Interrupted(f"{command} interrupted by Ctrl-C{after}") from None


def write_json_file(dest: Path, obj: dict) -> None:
    """Write a command's JSON output (its folder is created; the file is never written through a link)."""
    from robustvae import io

    io.write_json(dest, obj)


def print_frame(cells, title: str) -> None:
    """A table of text cells (from robustvae.reporting.tables) as Markdown: nothing cut, at any width, in any log."""
    from robustvae.reporting.tables import markdown

    out_console.print(title, markup=False, highlight=False, soft_wrap=True)
    out_console.print(markdown(cells), markup=False, highlight=False, soft_wrap=True)


def load_with_images(names: list[str], images: Path | None, data: str | None, device):
    """(models, image set): with --images, the models loaded here and the images read against the first one's image
    shape, so that the settings line can say how they were read; else the names as given and None."""
    from robustvae import api
    from robustvae.data.images import one_source

    one_source(data, images)
    if images is None:
        return names, None
    loaded = [api.load(n, device=device) for n in names]
    return loaded, api.load_images(images, loaded[0])
