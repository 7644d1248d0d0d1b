"""robustvae report: Figure 10, tables, checks and the HTML page from finished runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from robustvae.cli.common import print_frame, app, out_console
from robustvae.cli.compress import print_compression_table


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(
        ..., help="Directories written by robustvae attack (shards and runs merge) or robustvae compress."
    ),
    out: Path = typer.Option(Path("reports/report"), "--out", "-o", help="Output directory of the report."),
    eval_files: list[Path] = typer.Option(
        [], "--eval", help="JSON written by robustvae eval: NLL beside each model (repeatable). \\[default: none]"
    ),
    notes: list[Path] = typer.Option(
        [], "--notes", help="Text file shown near the top of the page (repeatable). \\[default: none]"
    ),
    title: Optional[str] = typer.Option(None, "--title", help="Page title. \\[default: the models compared]"),
    force: bool = typer.Option(False, "--force", help="Replace a report already in --out."),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Exit with status 1 when any check fails, the failed checks listed one per line on stderr (the report is written either way); for CI. \\[default: off]",
    ),
) -> None:
    """Figure 10, tables, checks, gallery (and a compression section) in one self-contained index.html; nothing is re-run."""
    from robustvae import api

    res = api.report(run_dirs, out, evals=eval_files, notes=notes, title=title, force=force)
    print_report_summary(res.summary, out)
    if strict:
        fail_on_checks(res.summary)


def fail_on_checks(summary: dict) -> None:
    """``--strict``: every failed check on its own line on stderr, then exit status 1; nothing when all passed."""
    from robustvae.reporting.checklist import failed_lines

    lines = failed_lines(summary.get("checks", []))
    if lines:
        print("\n".join([f"report --strict: {len(lines)} check(s) failed:", *lines]), file=sys.stderr)
        raise typer.Exit(1)


def print_report_summary(summary: dict, out: Path) -> None:
    import pandas as pd

    from robustvae.reporting.tables import TABLE_CAPTION, display_table

    if "compression" in summary:
        print_compression_table(pd.DataFrame(summary["compression"]["records"]))
    if "certify" in summary:
        from robustvae.reporting.certify import display_certify

        print_frame(display_certify(pd.DataFrame(summary["certify"]["table"])), "context certification")
    if "checks" in summary:  # attack runs among the inputs
        print_frame(display_table(pd.DataFrame(summary["table"])), TABLE_CAPTION)
        failed = [c for c in summary["checks"] if not c["passed"]]
        out_console.print(f"checks: {summary['checks_passed']} passed, {summary['checks_failed']} failed")
        for c in failed[:10]:
            out_console.print(
                f"  FAIL {c['check']}: {c['scope']}: {c['detail']}", markup=False, highlight=False, soft_wrap=True
            )
        if len(failed) > 10:
            out_console.print(f"  ... and {len(failed) - 10} more (see the checks table)")
    out_console.print(f"report written to {out / 'index.html'} (and {len(summary['files']) - 1} more files)")
