"""The ``robustvae`` command line (typer + rich).

``main(argv)`` runs a command and returns its exit code, so tests call it directly.
Every user error prints one line ``error: <what is wrong and how to fix it>`` on
stderr and exits with code 2; nothing is overwritten on error.

One module per command (group): ``train``, ``evaluate`` (eval), ``sample``, ``attack``,
``certify``, ``compress``, ``report``, ``demo``, ``zoo``. Each only parses its options, calls
:mod:`robustvae.api` (or the library function it names) and prints; :mod:`robustvae.cli.common`
holds the app, the console and the help texts they share.
"""

from __future__ import annotations

import sys

import typer

from robustvae.cli import attack, certify, compress, demo, evaluate, report, sample, train, zoo  # noqa: F401 - they register their commands
from robustvae.cli.common import app
from robustvae.errors import RobustVAEError

__all__ = ["app", "command", "main", "run"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` and return the exit code (0 ok, 2 user error, 130 interrupted)."""
    from robustvae.errors import Interrupted

    import warnings

    cmd = command()
    plain, warnings.formatwarning = warnings.formatwarning, _note  # warnings print as one "note:" line each
    try:
        # not standalone: usage errors come here and are printed on one line like every other error
        rv = cmd.main(args=argv, prog_name="robustvae", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _CLICK_ERROR as e:
        return _usage_error(e)
    except Interrupted as e:
        _print_once(f"stopped: {e}")
        return 130
    except RobustVAEError as e:
        _print_once(f"error: {e}", every_rank=getattr(e, "every_rank", False))
        return 2
    except OSError as e:  # a file or folder the command cannot read or write (permissions, a file for a folder)
        where = f" {e.filename}" if e.filename else ""
        _print_once(f"error: cannot use{where}: {e.strerror or e}; check the path and its permissions")
        return 2
    finally:
        warnings.formatwarning = plain


def _note(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' signature
    return f"note: {message}\n"


# the base of click's usage errors (typer >= 0.29 ships its own copy of click)
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _usage_error(e: Exception) -> int:
    """A usage error (unknown option, a value of the wrong type) on one line; a bare command prints its help."""
    if type(e).__name__ == "NoArgsIsHelpError":
        e.show()
        return e.exit_code
    message = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "robustvae"
    _print_once(f"error: {message} (see {where} --help)")
    return e.exit_code


def command():
    """The CLI as a click command, its help tidied (:mod:`robustvae.cli.helptext`)."""
    from robustvae.cli.helptext import tidy

    return tidy(typer.main.get_command(app))


def _print_once(message: str, every_rank: bool = False) -> None:
    """Print on stderr; under torchrun only rank 0 speaks, since every rank meets the same error.

    Errors of one rank only (``every_rank``) are printed by that rank, with its number.
    """
    import os

    message = _bounded(message)
    rank = os.environ.get("RANK", "0") or "0"
    if rank == "0":
        print(message, file=sys.stderr)
    elif every_rank:
        print(f"rank {rank}: {message}", file=sys.stderr)


MESSAGE_LIMIT = 2000  # characters of an error line; a value quoted from a hostile file can be megabytes


def _bounded(message: str) -> str:
    """One line of at most :data:`MESSAGE_LIMIT` characters: a longer message keeps its start (what is wrong) and
    its end (how to fix it) and says how much of the middle it left out."""
    message = " ".join(message.splitlines())
    if len(message) <= MESSAGE_LIMIT:
        return message
    head, tail = MESSAGE_LIMIT * 2 // 3, MESSAGE_LIMIT // 4
    return f"{message[:head]} ... ({len(message) - head - tail:,} characters left out) ... {message[-tail:]}"


def run() -> None:
    sys.exit(main())
