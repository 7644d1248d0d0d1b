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


def _version(value: bool) -> None:
    if value:
        from robustvae import __version__

        typer.echo(f"robustvae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
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

