"""robustvae demo: train, evaluate, attack and report, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustvae.cli.common import DEVICE_HELP, THREADS, app
from robustvae.cli.report import print_report_summary


@app.command()
def demo(
    out: Path = typer.Option(Path("reports/demo"), "--out", "-o", help="Where the report (and runs/) go."),
    force: bool = typer.Option(
        False, "--force", help="Replace an earlier demo in --out (only the files the demo writes)."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue an interrupted demo in --out with its saved settings: finished stages are kept, training continues from last.pt, the attack from its records; the report is made again. \\[default: off]",
    ),
    preset: list[str] = typer.Option(
        [], "--preset", help="Presets to train and compare (repeatable). [default: vdvae-mnist-demo, dctvae-mnist-demo]"
    ),
    train_steps: Optional[int] = typer.Option(
        None, "--train-steps", help="Training steps per model. [default: the presets']"
    ),
    points: Optional[int] = typer.Option(
        None, "--points", help="Test points attacked (by the ensemble auto, auto-v2). [default: 20]"
    ),
    restarts: Optional[int] = typer.Option(None, "--restarts", help="Random restarts per point. [default: 5]"),
    attack_steps: Optional[int] = typer.Option(None, "--attack-steps", help="Attack optimisation steps. [default: 50]"),
    iw_samples: Optional[int] = typer.Option(
        None, "--iw-samples", help="Importance samples of the NLL. [default: 100]"
    ),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Test images evaluated. [default: 200]"),
    threads: Optional[int] = THREADS,
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Offline, on one CPU thread: train a small VDVAE and DCT-VAE on real MNIST digits, evaluate, attack k = 1..L, report (Ctrl-C, then --resume, continues it)."""
    from robustvae.demo import DemoSettings, run_demo

    given = dict(
        presets=tuple(preset) or None,
        train_steps=train_steps,
        points=points,
        restarts=restarts,
        attack_steps=attack_steps,
        iw_samples=iw_samples,
        eval_limit=eval_limit,
    )
    chosen = {k: v for k, v in given.items() if v is not None}
    # --resume takes the saved settings; the options given with it must agree with them
    settings = chosen if resume else DemoSettings(**chosen)
    summary = run_demo(out, settings, device=device, force=force, resume=resume, quiet=quiet, threads=threads)
    if not quiet:
        print_report_summary(summary, out)
