"""robustvae attack: latent attacks on the top-k layers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from robustvae.cli.common import (
    BACKEND_HELP,
    DATA_HELP,
    DEVICE_HELP,
    IMAGES_HELP,
    MODELS_HELP,
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


@app.command()
def attack(
    models: list[str] = typer.Argument(None, help=MODELS_HELP),
    layers: Optional[str] = typer.Option(
        None, "--layers", help="Top-k layers under attack: 1,2 or 1-4 or all. [default: 1]"
    ),
    eps: Optional[float] = typer.Option(
        None,
        "--eps",
        help="Budget on [0, 1] pixels: a finite number >= 0, below 1 for linf and below sqrt(C x H x W), the images' diameter, for l2 (a larger ball holds every image). [default: 0.1]",
    ),
    norm: Optional[str] = typer.Option(None, "--norm", help="linf or l2. [default: linf]"),
    restarts: Optional[int] = typer.Option(None, "--restarts", help="Random restarts per point. [default: 5]"),
    points: Optional[int] = typer.Option(
        None, "--points", help="Test points, stratified by label (--images: the first N in file order). [default: 50]"
    ),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimisation steps. [default: 50]"),
    objective: Optional[str] = typer.Option(
        None,
        "--objective",
        help="Objective (robustvae.attacks.OBJECTIVES): skl, kl_forward, kl_reverse, means, boundary (quantised context: margin to the nearest quantiser edge), recon or recon_l2 (the scored reconstruction's damage); targeted, towards another-label test image per point: target (its posteriors; context: its levels), target_recon or target_recon_l2 (its reconstruction), with --attack auto the ensemble auto-target-v1; supervised (the earlier targeted form). [default: skl]",
    ),
    optimizer: Optional[str] = typer.Option(
        None,
        "--optimizer",
        "--attack",
        help="Attack (robustvae.attacks.ATTACKS): pgd (the paper's), sgd (the authors': lr 1.0, plateau), apgd (Croce & Hein 2020), square (gradient-free) or context (quantised context: MILP and level-flip seeds, then APGD); or auto, the fixed ensemble auto-v2 (robustvae.attacks.ENSEMBLES: worst case per point over its members, the same passes per point as one attack of --steps; a quantised context adds a member on its levels, whose solver seconds run.json records apart), or auto-v1 (the earlier ensemble, to compare old runs). \\[default: auto; a --suite's own: the Figure 10 suites pin pgd]",
    ),
    step_size: Optional[float] = typer.Option(
        None, "--step-size", help="PGD step or SGD learning rate. \\[default: 2.5 eps / steps for PGD, 1.0 for SGD]"
    ),
    eot: Optional[int] = typer.Option(
        None,
        "--eot",
        help="Fixed draws of randomness the attack averages over (EOT): with --defence hmc --adaptive, N chain draws; without a defence, kuzina-ladder DCT-VAEs: the authors' context dither on, N draws (0 or none: off). \\[default: none: 4 chain draws; dither off]",
    ),
    defence: Optional[str] = typer.Option(
        None,
        "--defence",
        help="Test-time defence every scored reconstruction goes through (robustvae.defences.DEFENCES): hmc (Kuzina, Welling & Tomczak 2022) or none. \\[default: none]",
    ),
    adaptive: bool = typer.Option(
        False,
        "--adaptive/--no-adaptive",
        help="Attack through the defence (gradients through the chain, EOT over --eot draws) instead of attacking the model.",
    ),
    hmc_steps: Optional[int] = typer.Option(
        None, "--hmc-steps", help="HMC transitions per reconstruction, burn-in included. [default: 20]"
    ),
    hmc_leapfrog: Optional[int] = typer.Option(
        None, "--hmc-leapfrog", help="Leapfrog steps per HMC transition. [default: 5]"
    ),
    hmc_step_size: Optional[str] = typer.Option(
        None,
        "--hmc-step-size",
        help="auto (adapted per image during burn-in towards acceptance 0.9, from 0.1) or a fixed step. [default: auto]",
    ),
    eps_sweep: Optional[str] = typer.Option(
        None,
        "--eps-sweep",
        help="Run the sweep at each of these budgets, e.g. 0.025,0.05,0.1,0.2,0.4,0.8 (instead of --eps; the same limits). \\[default: none, --eps only]",
    ),
    temperature: Optional[float] = typer.Option(
        None, "--temperature", help="Prior temperature below layer k. [default: 0.1]"
    ),
    recon: Optional[str] = typer.Option(
        None,
        "--recon",
        help="Reconstruction rule: default (posterior means, shared noise, best iterate) or authors (posterior samples, independent noise, last iterate). [default: default]",
    ),
    temperature_convention: Optional[str] = typer.Option(
        None,
        "--temperature-convention",
        help="What --temperature scales: std or var. [default: std for the default rule, var for authors]",
    ),
    straight_through: Optional[bool] = typer.Option(
        None,
        "--straight-through/--no-straight-through",
        help="DCT-VAE context: score quantised values with straight-through gradients. [default: off]",
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of points, starts and noise. [default: 0]"),
    suite: Optional[Path] = typer.Option(
        None,
        "--suite",
        help="TOML file with the same settings (attacks/*.toml); options override it. \\[default: none]",
    ),
    out: Path = typer.Option(
        Path("runs/attack"), "--out", "-o", help="Output directory (resumed when the settings match)."
    ),
    shard: str = typer.Option("1/1", "--shard", help="Run slice i of N of the work units, e.g. 1/2."),
    max_batch_mib: Optional[int] = typer.Option(
        None, "--max-batch-mib", help="Memory budget of one batch. [default: 1024]"
    ),
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    images: Optional[Path] = typer.Option(None, "--images", help=IMAGES_HELP),
    data_dir: Optional[str] = typer.Option(
        None, "--data-dir", help="Folder with the dataset files. \\[default: the checkpoint's]"
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help=QUIET_HELP),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    threads: Optional[int] = THREADS,
) -> None:
    """Latent attacks on the top-k layers: MS-SSIM of attacked vs clean reconstructions, as records.

    Multi-process: [bold]torchrun --nproc_per_node N -m robustvae attack ...[/bold] splits the
    work units (of --shard i/N, for several machines) over the processes; rank 0 merges the records.
    """
    from robustvae import api
    from robustvae.defences import defence_from_options
    from robustvae.distributed import distributed

    suite_models, cfg = api.attack_config(
        suite,
        layers=layers,
        eps=eps,
        norm=norm,
        restarts=restarts,
        points=points,
        steps=steps,
        objective=objective,
        optimizer=optimizer,
        step_size=step_size,
        temperature=temperature,
        recon=recon,
        temperature_convention=temperature_convention,
        straight_through=straight_through,
        seed=seed,
        max_batch_mib=max_batch_mib,
        eps_sweep=eps_sweep,
    )
    run_defence = defence_from_options(
        defence, adaptive=adaptive, eot=eot, hmc_steps=hmc_steps, hmc_leapfrog=hmc_leapfrog, hmc_step_size=hmc_step_size
    )
    names = list(models or []) or suite_models
    if not names:
        raise RobustVAEError(
            "no model given: name checkpoint files, run directories or module.path:factory models (or a --suite with models)"
        )
    with cpu_threads(threads), distributed(backend, device) as (dd, dev):
        specs, image_set = load_with_images(names, images, data, dev)
        if dd.is_main:
            _print_attack_settings(names, cfg, out, dev, image_source_text(image_set, data))
        res = api.attack(
            specs,
            cfg,
            out,
            device=dev,
            shard=shard,
            data=data,
            data_dir=data_dir,
            quiet=quiet,
            command=["robustvae", *(sys.argv[1:])],
            dist=dd,
            images=image_set,
            defence=run_defence,
            eot=0 if run_defence is not None else eot or 0,  # with a defence: its chain draws
            adaptive=adaptive,
        )
    if dd.is_main:
        _print_attack_results(res, out)


def _print_attack_results(res, out: Path) -> None:
    """The summary table (and the targeted one), then where the records are."""
    from robustvae.reporting.tables import TABLE_CAPTION, display_table

    print_frame(display_table(res.table), TABLE_CAPTION)
    if res.targeted is not None and len(res.targeted):
        from robustvae.reporting.targeted import display_targeted

        print_frame(
            display_targeted(res.targeted),
            "Targeted: MS-SSIM(attacked reconstruction, target's), strongest restart per point, mean over points",
        )
    out_console.print(f"{len(res.records)} records in {out}")


def _print_attack_settings(names: list[str], cfg, out: Path, device, source: str) -> None:
    """Every setting of an attack run, on one line, before it starts."""
    out_console.print(
        f"attack {', '.join(names)} on {device}, out {out}, {source}: {settings_text(cfg)}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
