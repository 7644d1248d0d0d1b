"""robustvae train."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustvae.cli.common import BACKEND_HELP, DEVICE_HELP, QUIET_HELP, SET_HELP, THREADS, app, ctrl_c, out_console
from robustvae.device import cpu_threads
from robustvae.errors import RobustVAEError


@app.command()
def train(
    preset: Optional[str] = typer.Option(
        None, "--preset", "-p", help="Preset name (robustvae zoo list). \\[default: vdvae-mnist-tiny]"
    ),
    data: Optional[str] = typer.Option(
        None, "--data", help="Dataset, overriding the preset's (e.g. mnist-offline). \\[default: the preset's]"
    ),
    data_dir: Optional[Path] = typer.Option(
        None,
        "--data-dir",
        help="Folder with (or for) the dataset files. \\[default: $ROBUSTVAE_DATA, else ~/.cache/robustvae/data]",
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs. \\[default: the preset's]"),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="Optimisation steps; overrides --epochs. \\[default: the preset's]"
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size. \\[default: the preset's]"),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Seed for init, data order, binarisation and noise. \\[default: the preset's]"
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory. \\[default: runs/<preset>]"),
    resume: bool = typer.Option(
        False, "--resume", metavar="", help="Continue the run in --out from its last.pt. \\[default: off]"
    ),
    force: bool = typer.Option(
        False,
        "--force",
        metavar="",
        help="Start over in an existing run directory (deletes its run files). \\[default: off]",
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP + " \\[default: none]"),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help=QUIET_HELP),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    threads: Optional[int] = THREADS,
) -> None:
    """Train a model from a preset; writes config, metrics, last/best checkpoints and log.txt to the run directory.

    Multi-process: [bold]torchrun --nproc_per_node N -m robustvae train ...[/bold] trains with
    DistributedDataParallel; --batch-size stays the global batch.
    """
    from robustvae.registry import get_preset

    if preset is not None:
        get_preset(preset)  # a typo fails here, before torch is imported
    with ctrl_c("train"), cpu_threads(threads):
        _train(
            preset, data, data_dir, epochs, steps, batch_size, seed, device, out, resume, force, set_, quiet, backend
        )


def _train(
    preset, data, data_dir, epochs, steps, batch_size, seed, device, out, resume, force, set_, quiet, backend
) -> None:
    """The train command after its light checks (the options as the command takes them)."""
    from robustvae import api
    from robustvae.distributed import distributed

    out_dir = out or Path("runs") / (preset or api.DEFAULT_TRAIN_PRESET)
    cfg = None
    if resume and not force:
        saved = api.saved_config(out_dir)
        changed = [
            o
            for o, v in (
                ("--preset", preset if preset != saved.name else None),
                ("--data", data),
                ("--data-dir", data_dir),
                ("--batch-size", batch_size),
                ("--seed", seed),
                ("--set", set_ or None),
            )
            if v is not None
        ]
        if changed:
            raise RobustVAEError(
                f"--resume continues the saved config of {out_dir}; {', '.join(changed)} cannot change it "
                f"(only --steps/--epochs can); start a new run with another --out instead"
            )
    elif not resume:
        cfg = api.train_config(
            preset,
            data=data,
            data_dir=data_dir,
            epochs=epochs,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            overrides=set_,
        )
        steps = epochs = None  # already in the config
    with distributed(backend, device) as (dd, dev):
        if dd.is_main:
            _print_train_settings(cfg, out_dir, dev, resume, steps, epochs)
        res = api.train(
            cfg, out_dir, resume=resume, force=force, steps=steps, epochs=epochs, device=dev, quiet=quiet, dist=dd
        )
    if not dd.is_main:
        return
    s, fv = res.summary, res.summary["final_val"]
    procs = f" x {dd.world_size} processes" if dd.enabled else ""
    out_console.print(
        f"trained {res.config.name} for {s['steps']} steps ({s['epochs']:.2f} epochs) on {dev}{procs} in "
        f"{s['wall_time_s']:.1f} s; validation -ELBO {fv.get('nelbo', float('nan')):.2f} nats "
        f"({fv.get('bpd', float('nan')):.4f} bits/dim); checkpoints in {res.out}"
    )


def _print_train_settings(cfg, out_dir: Path, device, resume: bool, steps, epochs) -> None:
    """The settings a run starts with (the whole config goes to <out>/config.json)."""
    if cfg is None:
        extra = ", ".join(f"{k} {v}" for k, v in (("--steps", steps), ("--epochs", epochs)) if v is not None)
        out_console.print(
            f"train: resuming {out_dir} with its saved config{'; ' + extra if extra else ''}; device {device}"
        )
        return
    t = cfg.train
    length = f"{t.steps} steps" if t.steps is not None else f"{t.epochs} epochs"
    out_console.print(
        f"train {cfg.name}: data {cfg.data.name}, {length}, batch {t.batch_size}, lr {t.lr:g}, seed {t.seed}, "
        f"device {device}, out {out_dir} (every setting: {out_dir / 'config.json'})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
