"""The ``robustvae`` command line (typer + rich).

``main(argv)`` runs a command and returns its exit code, so tests call it directly.
Every user error prints one line ``error: <what is wrong and how to fix it>`` on
stderr and exits with code 2; nothing is overwritten on error.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from robustvae.errors import RobustVAEError

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


# --------------------------------------------------------------------------- train


@app.command()
def train(
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset name (robustvae zoo list). \\[default: vdvae-mnist-tiny]"),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset, overriding the preset's (e.g. mnist-offline). \\[default: the preset's]"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with (or for) the dataset files. \\[default: $ROBUSTVAE_DATA, else ~/.cache/robustvae/data]"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs. \\[default: the preset's]"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimisation steps; overrides --epochs. \\[default: the preset's]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size. \\[default: the preset's]"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for init, data order, binarisation and noise. \\[default: the preset's]"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory. \\[default: runs/<preset>]"),
    resume: bool = typer.Option(False, "--resume", metavar="", help="Continue the run in --out from its last.pt. \\[default: off]"),
    force: bool = typer.Option(False, "--force", metavar="", help="Start over in an existing run directory (deletes its run files). \\[default: off]"),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP + " \\[default: none]"),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help=QUIET_HELP),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """Train a model from a preset; writes config, metrics, last/best checkpoints and log.txt to the run directory.

    Multi-process: [bold]torchrun --nproc_per_node N -m robustvae train ...[/bold] trains with
    DistributedDataParallel; --batch-size stays the global batch.
    """
    from robustvae.registry import get_preset

    if preset is not None:
        get_preset(preset)  # a typo fails here, before torch is imported
    with _ctrl_c("train"):
        _train(preset, data, data_dir, epochs, steps, batch_size, seed, device, out, resume, force, set_, quiet, backend)


def _train(preset, data, data_dir, epochs, steps, batch_size, seed, device, out, resume, force, set_, quiet,
           backend) -> None:
    """The train command after its light checks (the options as the command takes them)."""
    from robustvae import api
    from robustvae.distributed import distributed

    out_dir = out or Path("runs") / (preset or api.DEFAULT_TRAIN_PRESET)
    cfg = None
    if resume and not force:
        saved = api.saved_config(out_dir)
        changed = [o for o, v in (("--preset", preset if preset != saved.name else None), ("--data", data),
                                  ("--data-dir", data_dir), ("--batch-size", batch_size), ("--seed", seed),
                                  ("--set", set_ or None)) if v is not None]
        if changed:
            raise RobustVAEError(
                f"--resume continues the saved config of {out_dir}; {', '.join(changed)} cannot change it "
                f"(only --steps/--epochs can); start a new run with another --out instead"
            )
    elif not resume:
        cfg = api.train_config(preset, data=data, data_dir=data_dir, epochs=epochs, steps=steps, batch_size=batch_size,
                               seed=seed, overrides=set_)
        steps = epochs = None  # already in the config
    with distributed(backend, device) as (dd, dev):
        if dd.is_main:
            _print_train_settings(cfg, out_dir, dev, resume, steps, epochs)
        res = api.train(cfg, out_dir, resume=resume, force=force, steps=steps, epochs=epochs, device=dev, quiet=quiet,
                        dist=dd)
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
        out_console.print(f"train: resuming {out_dir} with its saved config{'; ' + extra if extra else ''}; device {device}")
        return
    t = cfg.train
    length = f"{t.steps} steps" if t.steps is not None else f"{t.epochs} epochs"
    out_console.print(
        f"train {cfg.name}: data {cfg.data.name}, {length}, batch {t.batch_size}, lr {t.lr:g}, seed {t.seed}, "
        f"device {device}, out {out_dir} (every setting: {out_dir / 'config.json'})",
        markup=False, highlight=False, soft_wrap=True,
    )


@contextmanager
def _ctrl_c(command: str, after: str = ""):
    """A Ctrl-C that reaches the command (not handled deeper) becomes one 'stopped' line and exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        from robustvae.errors import Interrupted

        raise Interrupted(f"{command} interrupted by Ctrl-C{after}") from None


# --------------------------------------------------------------------------- eval


@app.command("eval")
def eval_(
    checkpoints: list[str] = typer.Argument(
        ..., help="Zoo name, checkpoint file, or run directory; give two (or more) to compare them side by side."
    ),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    iw_samples: Optional[int] = typer.Option(None, "--iw-samples", "-k", help="Importance samples K. \\[default: 1000 for binary data, 100 otherwise]"),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate a label-stratified subset of this many images, selected with --seed. \\[default: the whole split]"),
    batch_size: int = typer.Option(100, "--batch-size", help="Images per batch of the ELBO and the layer diagnostics."),
    max_batch_mib: Optional[int] = typer.Option(None, "--max-batch-mib", help="Memory budget of one importance-sampling pass (images x samples); the NLL does not depend on it. \\[default: 64 on CPU, 2048 on CUDA]"),
    weights: str = typer.Option("auto", "--weights", help="auto (EMA when present), ema or raw."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with the dataset files. \\[default: the checkpoint's]"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of the --limit selection, the importance samples and the ELBO's sample."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o",
        help="JSON output (progress lines go to the same name with .log, beside it). With several checkpoints, --out gets one file "
             "holding every result ({\"results\": [...]}). \\[default: eval-<split>.json next to each checkpoint]",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help=QUIET_HELP),
    estimator: str = typer.Option(
        "iwae", "--estimator",
        help="iwae (the true bound, every model), authors (Kuzina & Tomczak's estimate with analytic KLs, kuzina-* "
             "models; not a bound) or both, on the same images.",
    ),
) -> None:
    """NLL (importance-sampled bound), ELBO, bits/dim, KL and active units per layer.

    DCT-VAE's context is reported separately: its diffusion bound (nats) and the
    quantisation levels it uses (active units do not apply to a deterministic layer).
    The output names the image set (split, count, selection seed, hash of the pixels).
    """
    from robustvae.errors import require_positive

    require_positive(batch_size=batch_size, iw_samples=iw_samples, limit=limit, max_batch_mib=max_batch_mib)
    with _ctrl_c("eval", "; nothing written"):
        _eval(checkpoints, split, iw_samples, limit, batch_size, max_batch_mib, weights, data_dir, device, seed, out,
              quiet, estimator)


def _eval(checkpoints, split, iw_samples, limit, batch_size, max_batch_mib, weights, data_dir, device, seed, out,
          quiet, estimator="iwae") -> None:
    """The eval command after its light checks: load, evaluate each model on the same images, write, print."""
    from robustvae import api

    models = [api.load(c, device=device, weights=weights) for c in checkpoints]
    datasets = sorted({m.config.data.name for m in models})
    if len(datasets) > 1:
        raise RobustVAEError(
            f"cannot compare models trained on different datasets ({', '.join(datasets)}); "
            f"pass checkpoints of the same dataset"
        )
    dests = [out] * len(models) if out is not None else [Path(m.path).parent / f"eval-{split}.json" for m in models]
    ks = sorted({iw_samples or api.default_iw_samples(m) for m in models})
    out_console.print(
        f"eval of {len(models)} model(s) on {datasets[0]} {split}: "
        f"{f'{limit} images (label-stratified, seed {seed})' if limit else 'every image'}, K={'/'.join(map(str, ks))}, "
        f"estimator {estimator}, batch {batch_size}, --max-batch-mib {max_batch_mib or 'default'}, seed {seed}, "
        f"weights {weights}, device {device}", markup=False, highlight=False, soft_wrap=True)
    results = []
    for m, dest in zip(models, dests):
        dest.parent.mkdir(parents=True, exist_ok=True)
        res = api.evaluate(m, split=split, iw_samples=iw_samples, limit=limit, batch_size=batch_size, data_dir=data_dir,
                           seed=seed, device=device, quiet=quiet, estimator=estimator, max_batch_mib=max_batch_mib,
                           log_path=dest.with_suffix(".log")).record
        res["settings"]["weights"] = weights
        results.append(res)
    if len(results) == 1:
        _write_json(dests[0], results[0])
        _print_eval(results[0], dests[0])
        return
    if out is not None:
        _write_json(out, {"results": results})
    else:
        for res, dest in zip(results, dests):
            _write_json(dest, res)
    _print_comparison(results)
    out_console.print(f"saved {out if out is not None else ', '.join(map(str, dests))}")


def _write_json(dest: Path, obj: dict) -> None:
    from robustvae.io import write_json

    dest.parent.mkdir(parents=True, exist_ok=True)
    write_json(dest, obj)


def _layer_cells(row: dict) -> tuple[str, str]:
    """(KL cell, active-units cell) of one layer row; a context layer shows the levels it uses."""
    if row["active_units"] is None:
        return f"{row['kl_nats']:.3f} (context)", f"n/a: {row['levels_used']:.2f}/{row['levels']} levels used"
    return f"{row['kl_nats']:.3f}", str(row["active_units"])


def _image_set_text(res: dict) -> str:
    """Which images a result comes from: split, count, selection and a hash of the pixels."""
    s = res.get("image_set")
    if s is None:
        return f"{res['dataset']} {res['split']} ({res['images']} images)"
    how = f"label-stratified, selection seed {s['selection_seed']}" if s["selection_seed"] is not None else "whole split"
    return (f"{s['dataset']} {s['split']}: {s['images']:,} of {s['split_images']:,} images ({how}; "
            f"pixels sha256 {s['images_sha256'][:12]})")


def _print_eval(res: dict, dest: Path) -> None:
    table = Table(title=f"{res['model']} on {_image_set_text(res)}, K={res['iw_samples']}")
    for col in ("layer", "resolution", "units", "KL (nats)", "active units"):
        table.add_column(col, justify="right")
    for row in res["layers"]:
        table.add_row(str(row["layer"]), f"{row['resolution']}x{row['resolution']}", str(row["units"]), *_layer_cells(row))
    table.add_row("all", "", str(res["total_units"]), f"{res['kl_nats']:.3f}", str(res["active_units"]))
    out_console.print(table)
    context = f"context {res['context_nats']:.2f} nats | " if "context_nats" in res else ""
    out_console.print(
        f"{_nll_label(res)} {res['nll_nats']:.2f} nats ({res['nll_bpd']:.4f} bits/dim) | {_authors_cell(res)}-ELBO {res['nelbo_nats']:.2f} nats "
        f"({res['nelbo_bpd']:.4f} bits/dim) | {context}active units {res['active_units']}/{res['total_units']} | saved {dest}"
    )


def _nll_label(res: dict) -> str:
    """"NLL" for the bound (the default); the authors' estimate says so."""
    return "NLL (authors' estimate, not a bound)" if res.get("estimator") == "authors" else "NLL"


def _authors_cell(res: dict) -> str:
    if "nll_authors_nats" not in res:
        return ""
    return f"authors' estimate {res['nll_authors_nats']:.2f} nats ({res['nll_authors_bpd']:.4f} bits/dim) | "


def _print_comparison(results: list[dict]) -> None:
    """One column per model: the headline numbers, then KL and active units layer by layer."""
    first = results[0]
    table = Table(title=_image_set_text(first))
    table.add_column("", no_wrap=True)
    for r in results:
        table.add_column(f"{r['model']}\n{Path(r['checkpoint']).parent.name}/{Path(r['checkpoint']).name}", justify="right")

    def cell(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "-"

    table.add_row("importance samples K", *(str(r["iw_samples"]) for r in results))
    table.add_row("NLL (nats)", *(cell(r, "nll_nats", ".2f") for r in results))
    table.add_row("NLL (bits/dim)", *(cell(r, "nll_bpd", ".4f") for r in results))
    if any("estimator" in r for r in results):
        table.add_row("NLL estimator", *(r.get("estimator", "iwae") for r in results))
        table.add_row("authors' estimate (nats)", *(cell(r, "nll_authors_nats", ".2f") for r in results))
    table.add_row("-ELBO (nats)", *(cell(r, "nelbo_nats", ".2f") for r in results))
    table.add_row("KL, all layers (nats)", *(cell(r, "kl_nats", ".2f") for r in results))
    table.add_row("  context: diffusion bound", *(cell(r, "context_nats", ".2f") for r in results))
    table.add_row("active units", *(f"{r['active_units']}/{r['total_units']}" for r in results))
    for i in range(max(len(r["layers"]) for r in results)):
        kl, au = [], []
        for r in results:
            row = r["layers"][i] if i < len(r["layers"]) else None
            k_cell, a_cell = _layer_cells(row) if row else ("-", "-")
            kl.append(k_cell if row is None else f"{row['shape'][0]}x{row['resolution']}x{row['resolution']}: {k_cell}")
            au.append(a_cell if row is None or row["active_units"] is None else f"{a_cell}/{row['units']}")
        table.add_row(f"layer {i + 1} KL (nats)", *kl)
        table.add_row(f"layer {i + 1} active units", *au)
    out_console.print(table)


# --------------------------------------------------------------------------- sample

MIN_SAMPLE_PIXELS = 84  # each image of the grid is scaled up (nearest neighbour) to at least this size


@app.command()
def sample(
    checkpoint: str = typer.Argument(..., help="Zoo name, checkpoint file, or run directory."),
    n: int = typer.Option(64, "--n", help="Number of samples."),
    temperature: float = typer.Option(1.0, "--temperature", "-t", help="Prior temperature (of the Gaussian layers; DCT-VAE draws its context from the diffusion prior)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prior noise."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help="PNG grid to write (the settings go into its text chunks)."),
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
    out_console.print(f"sample: {n} images from {checkpoint} at temperature {temperature}, seed {seed}, device {device}"
                      f" -> {out}", markup=False, highlight=False, soft_wrap=True)
    with _ctrl_c("sample"):
        from robustvae import api

        imgs = api.sample(checkpoint, n, temperature=temperature, seed=seed, device=device)
        scale = _save_grid(imgs, out, settings)
    out_console.print(f"wrote {n} samples at temperature {temperature} to {out} (each {imgs.shape[-1] * scale} px, "
                      f"{scale}x nearest)")


def _save_grid(imgs, out: Path, settings: dict) -> int:
    """A square-ish grid of ``imgs`` (N, C, H, W) in [0, 1], scaled up by nearest neighbour; written atomically.

    Returns the scale factor.
    """
    import json
    import math
    import os

    import torch.nn.functional as F
    from PIL import Image, PngImagePlugin
    from torchvision.utils import make_grid

    scale = max(1, math.ceil(MIN_SAMPLE_PIXELS / max(imgs.shape[-2:])))
    big = F.interpolate(imgs, scale_factor=scale, mode="nearest")
    grid = make_grid(big, nrow=int(math.ceil(math.sqrt(len(imgs)))), padding=scale, pad_value=1.0)
    pixels = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    info = PngImagePlugin.PngInfo()
    info.add_text("robustvae-sample", json.dumps({**settings, "scale": scale}))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, out)
    return scale


# --------------------------------------------------------------------------- attack


@app.command()
def attack(
    models: list[str] = typer.Argument(None, help="Zoo names, checkpoint files or run directories."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Top-k layers under attack: 1,2 or 1-4 or all. [default: 1]"),
    eps: Optional[float] = typer.Option(None, "--eps", help="Budget on [0, 1] pixels. [default: 0.1]"),
    norm: Optional[str] = typer.Option(None, "--norm", help="linf or l2. [default: linf]"),
    restarts: Optional[int] = typer.Option(None, "--restarts", help="Random restarts per point. [default: 5]"),
    points: Optional[int] = typer.Option(None, "--points", help="Test points, stratified by label. [default: 50]"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimisation steps. [default: 50]"),
    objective: Optional[str] = typer.Option(None, "--objective", help="Objective (robustvae.attacks.OBJECTIVES): skl, kl_forward, kl_reverse, means, supervised, boundary (quantised context: margin to the nearest quantiser edge), recon or recon_l2 (the scored reconstruction's damage). [default: skl]"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", "--attack", help="Attack (robustvae.attacks.ATTACKS): pgd, sgd (the authors': lr 1.0, plateau), apgd (Croce & Hein 2020) or square (gradient-free); or auto, the fixed ensemble auto-v1 (robustvae.attacks.ENSEMBLES: worst case per point over its members, the same passes per point as one attack of --steps). [default: pgd]"),
    step_size: Optional[float] = typer.Option(None, "--step-size", help="PGD step or SGD learning rate. \\[default: 2.5 eps / steps for PGD, 1.0 for SGD]"),
    eot: Optional[int] = typer.Option(None, "--eot", help="Fixed draws of randomness the attack averages over (EOT): with --defence hmc --adaptive, N chain draws; without a defence, kuzina-ladder DCT-VAEs: the authors' context dither on, N draws (0 or none: off). \\[default: none: 4 chain draws; dither off]"),
    defence: Optional[str] = typer.Option(None, "--defence", help="Test-time defence every scored reconstruction goes through (robustvae.defences.DEFENCES): hmc (Kuzina, Welling & Tomczak 2022) or none. \\[default: none]"),
    adaptive: bool = typer.Option(False, "--adaptive/--no-adaptive", help="Attack through the defence (gradients through the chain, EOT over --eot draws) instead of attacking the model."),
    hmc_steps: Optional[int] = typer.Option(None, "--hmc-steps", help="HMC transitions per reconstruction, burn-in included. [default: 20]"),
    hmc_leapfrog: Optional[int] = typer.Option(None, "--hmc-leapfrog", help="Leapfrog steps per HMC transition. [default: 5]"),
    hmc_step_size: Optional[str] = typer.Option(None, "--hmc-step-size", help="auto (adapted per image during burn-in towards acceptance 0.9, from 0.1) or a fixed step. [default: auto]"),
    eps_sweep: Optional[str] = typer.Option(None, "--eps-sweep", help="Run the sweep at each of these budgets, e.g. 0.025,0.05,0.1,0.2,0.4,1.0 (instead of --eps). \\[default: none, --eps only]"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Prior temperature below layer k. [default: 0.1]"),
    recon: Optional[str] = typer.Option(None, "--recon", help="Reconstruction rule: default (posterior means, shared noise, best iterate) or authors (posterior samples, independent noise, last iterate). [default: default]"),
    temperature_convention: Optional[str] = typer.Option(None, "--temperature-convention", help="What --temperature scales: std or var. [default: std for the default rule, var for authors]"),
    straight_through: Optional[bool] = typer.Option(None, "--straight-through/--no-straight-through", help="DCT-VAE context: score quantised values with straight-through gradients. [default: off]"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of points, starts and noise. [default: 0]"),
    suite: Optional[Path] = typer.Option(None, "--suite", help="TOML file with the same settings (attacks/*.toml); options override it. \\[default: none]"),
    out: Path = typer.Option(Path("runs/attack"), "--out", "-o", help="Output directory (resumed when the settings match)."),
    shard: str = typer.Option("1/1", "--shard", help="Run slice i of N of the work units, e.g. 1/2."),
    max_batch_mib: Optional[int] = typer.Option(None, "--max-batch-mib", help="Memory budget of one batch. [default: 1024]"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with the dataset files. \\[default: the checkpoint's]"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """Latent attacks on the top-k layers: MS-SSIM of attacked vs clean reconstructions, as records.

    Multi-process: [bold]torchrun --nproc_per_node N -m robustvae attack ...[/bold] splits the
    work units (of --shard i/N, for several machines) over the processes; rank 0 merges the records.
    """
    from robustvae import api
    from robustvae.defences import defence_from_options
    from robustvae.distributed import distributed
    from robustvae.experiments.attack import parse_shard
    from robustvae.experiments.suite import attack_config

    suite_models, cfg = attack_config(
        suite, layers=layers, eps=eps, norm=norm, restarts=restarts, points=points, steps=steps, objective=objective,
        optimizer=optimizer, step_size=step_size, temperature=temperature, recon=recon,
        temperature_convention=temperature_convention, straight_through=straight_through,
        seed=seed, max_batch_mib=max_batch_mib, eps_sweep=eps_sweep)
    shard_t = parse_shard(shard)
    run_defence = defence_from_options(defence, adaptive=adaptive, eot=eot, hmc_steps=hmc_steps,
                                       hmc_leapfrog=hmc_leapfrog, hmc_step_size=hmc_step_size)
    names = list(models or []) or suite_models
    if not names:
        raise RobustVAEError("no model given: name zoo checkpoints, checkpoint files or run directories (or a --suite with models)")
    with distributed(backend, device) as (dd, dev):
        if dd.is_main:
            _print_attack_settings(names, cfg, out, dev)
        res = api.attack(names, cfg, out, device=dev, shard=shard_t, data_dir=data_dir, quiet=quiet,
                         command=["robustvae", *(sys.argv[1:])], dist=dd, defence=run_defence,
                         eot=0 if run_defence is not None else eot or 0,  # with a defence: its chain draws
                         adaptive=adaptive)
    if not dd.is_main:
        return
    from robustvae.reporting.tables import display_table

    _print_frame(display_table(res.table), "MS-SSIM(clean, attacked reconstruction): mean over points, 95 % bootstrap intervals")
    out_console.print(f"{len(res.records)} records in {out}")


def _print_attack_settings(names: list[str], cfg, out: Path, device) -> None:
    """Every setting of an attack run, on one line, before it starts."""
    import dataclasses

    fields = ", ".join(f"{k} {'default' if v is None else v}" for k, v in dataclasses.asdict(cfg).items())
    out_console.print(f"attack {', '.join(names)} on {device}, out {out}: {fields}", markup=False, highlight=False,
                      soft_wrap=True)


def _print_frame(cells, title: str) -> None:
    """A table of text cells (from robustvae.reporting.tables) as Markdown: nothing cut, at any width, in any log."""
    from robustvae.reporting.tables import markdown

    out_console.print(title, markup=False, highlight=False, soft_wrap=True)
    out_console.print(markdown(cells), markup=False, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- certify


def _eps_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise RobustVAEError(f"--eps expects comma-separated budgets such as 0.025,0.05,0.1,0.2, got {text!r}") from None


@app.command()
def certify(
    models: list[str] = typer.Argument(..., help="DCT-VAE zoo names, checkpoint files or run directories."),
    eps: str = typer.Option("0.025,0.05,0.1,0.2", "--eps", help="Comma-separated budgets on [0, 1] pixels."),
    norm: str = typer.Option("linf", "--norm", help="linf or l2."),
    points: int = typer.Option(50, "--points", help="Test points, stratified by label (the same as attack's with the same --seed)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the point selection and the prior noise."),
    time_limit: float = typer.Option(10.0, "--time-limit", help="Seconds per MILP of the optimal attack (two per point and eps)."),
    optimal: bool = typer.Option(True, "--optimal/--no-optimal", help="Run the optimal context attack (MILP); --no-optimal: radii and certificates only."),
    temperature: float = typer.Option(0.1, "--temperature", help="Prior temperature below layer 1 of the scored k = 1 reconstruction."),
    out: Path = typer.Option(Path("runs/certify"), "--out", "-o", help="Output directory (resumed when the settings match)."),
    force: bool = typer.Option(False, "--force", help="Start over: remove the earlier certification run in --out."),
    shard: str = typer.Option("1/1", "--shard", help="Run slice i of N of the work units, e.g. 1/2."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with the dataset files. \\[default: the checkpoint's]"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Exact analysis of DCT-VAE's quantised context: certified radius, certified fraction, optimal context attack."""
    from robustvae import api
    from robustvae.config import CertifyConfig
    from robustvae.experiments.attack import parse_shard
    from robustvae.reporting.certify import display_certify

    cfg = CertifyConfig(eps=_eps_list(eps), norm=norm, points=points, seed=seed, time_limit=time_limit,
                        optimal=optimal, temperature=temperature)
    res = api.certify_models(models, cfg, out, device=device, shard=parse_shard(shard), data_dir=data_dir,
                             force=force, quiet=quiet, command=["robustvae", *(sys.argv[1:])])
    _print_frame(display_certify(res.table), "context certification: certified fraction, median radius, "
                 "optimal attack (means over points)")
    out_console.print(f"{len(res.records)} records in {out}")


# --------------------------------------------------------------------------- compress


@app.command()
def compress(
    models: list[str] = typer.Argument(..., help="Zoo names, checkpoint files or run directories (all grey or all RGB)."),
    images: list[Path] = typer.Option([], "--images", help="A folder of PNG/JPEG files, or image files (repeatable). \\[required]"),
    layers: Optional[str] = typer.Option(None, "--layers", help="Top-k layers that carry the image: 1,2 or 1-4 or all. \\[required]"),
    temperature: float = typer.Option(0.1, "--temperature", help="Prior temperature of the layers below k."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prior noise and of the rate's posterior samples."),
    batch_size: int = typer.Option(64, "--batch-size", help="Patches per model pass."),
    max_pixels: int = typer.Option(4_000_000, "--max-pixels", help="Refuse images larger than this (width x height)."),
    out: Path = typer.Option(Path("runs/compress"), "--out", "-o", help="Output directory (must be new or empty)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier compression run in --out."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Appendix G: compress images patch by patch with the top k latent layers and compare with JPEG at the same PSNR."""
    from robustvae import api
    from robustvae.config import CompressConfig

    if layers is None:
        raise RobustVAEError("--layers is required: the top-k layers that carry the image, e.g. --layers 1,2 or 1-4 or all")
    cfg = CompressConfig(layers=layers, temperature=temperature, seed=seed, batch_size=batch_size, max_pixels=max_pixels)
    res = api.compress(models, list(images), cfg, out, device=device, force=force, quiet=quiet,
                       command=["robustvae", *(sys.argv[1:])])
    _print_compression_table(res.records)
    for line in res.warnings:
        out_console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    out_console.print(f"{len(res.records)} records, rate-distortion figure and side-by-side pictures in {out}")


def _print_compression_table(records) -> None:
    """Means over images per model and k, beside JPEG at the matched PSNR."""
    from robustvae.reporting.tables import display_compression, summary_table

    _print_frame(display_compression(summary_table(records)),
                 f"compression: means over {records.image.nunique()} image(s); BPP*: DCT-VAE context at its raw size; "
                 f"JPEG at the PSNR closest to the model's")


# --------------------------------------------------------------------------- report


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Directories written by robustvae attack (shards and runs merge) or robustvae compress."),
    out: Path = typer.Option(Path("reports/report"), "--out", "-o", help="Output directory of the report."),
    eval_files: list[Path] = typer.Option([], "--eval", help="JSON written by robustvae eval: NLL beside each model (repeatable). \\[default: none]"),
    notes: list[Path] = typer.Option([], "--notes", help="Text file shown near the top of the page (repeatable). \\[default: none]"),
    title: Optional[str] = typer.Option(None, "--title", help="Page title. \\[default: the models compared]"),
    force: bool = typer.Option(False, "--force", help="Replace a report already in --out."),
) -> None:
    """Figure 10, tables, checks, gallery (and a compression section) in one self-contained index.html; nothing is re-run."""
    from robustvae import api

    res = api.report(run_dirs, out, evals=eval_files, notes=notes, title=title, force=force)
    _print_report_summary(res.summary, out)


def _print_report_summary(summary: dict, out: Path) -> None:
    import pandas as pd

    from robustvae.reporting.tables import display_table

    if "compression" in summary:
        _print_compression_table(pd.DataFrame(summary["compression"]["records"]))
    if "certify" in summary:
        from robustvae.reporting.certify import display_certify

        _print_frame(display_certify(pd.DataFrame(summary["certify"]["table"])), "context certification")
    if "checks" in summary:  # attack runs among the inputs
        _print_frame(display_table(pd.DataFrame(summary["table"])), "MS-SSIM(clean, attacked reconstruction): mean over points, 95 % bootstrap intervals")
        failed = [c for c in summary["checks"] if not c["passed"]]
        out_console.print(f"checks: {summary['checks_passed']} passed, {summary['checks_failed']} failed")
        for c in failed[:10]:
            out_console.print(f"  FAIL {c['check']}: {c['scope']}: {c['detail']}")
        if len(failed) > 10:
            out_console.print(f"  ... and {len(failed) - 10} more (see the checks table)")
    out_console.print(f"report written to {out / 'index.html'} (and {len(summary['files']) - 1} more files)")


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    out: Path = typer.Option(Path("reports/demo"), "--out", "-o", help="Where the report (and runs/) go."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier demo in --out (only the files the demo writes)."),
    preset: list[str] = typer.Option([], "--preset", help="Presets to train and compare (repeatable). [default: vdvae-mnist-demo, dctvae-mnist-demo]"),
    train_steps: Optional[int] = typer.Option(None, "--train-steps", help="Training steps per model. [default: the presets']"),
    points: Optional[int] = typer.Option(None, "--points", help="Test points attacked. [default: 50]"),
    restarts: Optional[int] = typer.Option(None, "--restarts", help="Random restarts per point. [default: 5]"),
    attack_steps: Optional[int] = typer.Option(None, "--attack-steps", help="Attack optimisation steps. [default: 50]"),
    iw_samples: Optional[int] = typer.Option(None, "--iw-samples", help="Importance samples of the NLL. [default: 100]"),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Test images evaluated. [default: 200]"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads. [default: 1 unless OMP_NUM_THREADS is set; the models are tiny]"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Offline, in minutes: train a small VDVAE and DCT-VAE on real MNIST digits, evaluate, attack k = 1..L, report."""
    from robustvae.demo import DemoSettings, run_demo

    given = dict(presets=tuple(preset) or None, train_steps=train_steps, points=points, restarts=restarts,
                 attack_steps=attack_steps, iw_samples=iw_samples, eval_limit=eval_limit)
    settings = DemoSettings(**{k: v for k, v in given.items() if v is not None})
    summary = run_demo(out, settings, device=device, force=force, quiet=quiet, threads=threads)
    if not quiet:
        _print_report_summary(summary, out)


# --------------------------------------------------------------------------- zoo


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
    source: str = typer.Option("kuzina", "--from", help="Whose checkpoint: kuzina (AKuzina/dct_vae)."),
    preset: str = typer.Option(..., "--preset", "-p", help="The preset of its architecture, e.g. kuzina-dctvae-mnist."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the robustvae checkpoint (best.pt)."),
    force: bool = typer.Option(False, "--force", help="Replace the checkpoint in a non-empty --out."),
) -> None:
    """Convert the authors' checkpoint (weights only, no code runs) into a robustvae checkpoint with provenance."""
    from robustvae.zoo.kuzina import import_checkpoint

    dest = import_checkpoint(file, preset, out, source=source, force=force)
    out_console.print(f"imported {file} as {preset} into {dest}; evaluate it with: robustvae eval {out}")


@zoo_app.command("fetch")
def zoo_fetch(
    name: str = typer.Argument(..., help="A published checkpoint (robustvae zoo list), e.g. kuzina-dctvae-mnist."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the robustvae checkpoint (best.pt)."),
    force: bool = typer.Option(False, "--force", help="Replace the checkpoint in a non-empty --out."),
) -> None:
    """Download a published checkpoint (Google Drive, needs gdown) and import it."""
    from robustvae.zoo.kuzina import fetch

    dest = fetch(name, out, force=force)
    out_console.print(f"fetched and imported {name} into {dest}; evaluate it with: robustvae eval {out}")


# --------------------------------------------------------------------------- entry points


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

    rank = os.environ.get("RANK", "0") or "0"
    if rank == "0":
        print(message, file=sys.stderr)
    elif every_rank:
        print(f"rank {rank}: {message}", file=sys.stderr)


def run() -> None:
    sys.exit(main())
