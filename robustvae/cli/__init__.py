"""The ``robustvae`` command line (typer + rich).

``main(argv)`` runs a command and returns its exit code, so tests call it directly.
Every user error prints one line ``error: <what is wrong and how to fix it>`` on
stderr and exits with code 2; nothing is overwritten on error.
"""

from __future__ import annotations

import sys
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
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset name (robustvae zoo list). Default: vdvae-mnist-tiny."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset, overriding the preset's (e.g. mnist-offline)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with (or for) the dataset files."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (overrides the preset)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimisation steps; overrides --epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size (overrides the preset)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for init, data order, binarisation and noise."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory. Default: runs/<preset>."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    force: bool = typer.Option(False, "--force", help="Start over in an existing run directory (deletes its run files)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """Train a model from a preset; writes config, metrics, last/best checkpoints to the run directory.

    Multi-process: [bold]torchrun --nproc_per_node N -m robustvae train ...[/bold] trains with
    DistributedDataParallel; --batch-size stays the global batch.
    """
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


# --------------------------------------------------------------------------- eval


@app.command("eval")
def eval_(
    checkpoints: list[str] = typer.Argument(
        ..., help="Zoo name, checkpoint file, or run directory; give two (or more) to compare them side by side."
    ),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    iw_samples: Optional[int] = typer.Option(None, "--iw-samples", "-k", help="Importance samples K (default 1000 for binary data, 100 otherwise)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate a stratified subset of this many images."),
    batch_size: int = typer.Option(100, "--batch-size"),
    weights: str = typer.Option("auto", "--weights", help="auto (EMA when present), ema or raw."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with the dataset files."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o",
        help="JSON output. Default: eval-<split>.json next to each checkpoint. With several checkpoints, "
             "--out gets one file holding every result ({\"results\": [...]}).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    estimator: str = typer.Option(
        "iwae", "--estimator",
        help="iwae (the true bound, every model), authors (Kuzina & Tomczak's estimate with analytic KLs, kuzina-* "
             "models; not a bound) or both, on the same images.",
    ),
) -> None:
    """NLL (importance-sampled bound), ELBO, bits/dim, KL and active units per layer.

    DCT-VAE's context is reported separately: its diffusion bound (nats) and the
    quantisation levels it uses (active units do not apply to a deterministic layer).
    """
    from robustvae import api

    for name, v in (("--batch-size", batch_size), ("--iw-samples", iw_samples), ("--limit", limit)):
        if v is not None and v < 1:
            raise RobustVAEError(f"{name} must be a positive integer, got {v}")
    models = [api.load(c, device=device, weights=weights) for c in checkpoints]
    datasets = sorted({m.config.data.name for m in models})
    if len(datasets) > 1:
        raise RobustVAEError(
            f"cannot compare models trained on different datasets ({', '.join(datasets)}); "
            f"pass checkpoints of the same dataset"
        )
    results = [api.evaluate(m, split=split, iw_samples=iw_samples, limit=limit, batch_size=batch_size,
                            data_dir=data_dir, seed=seed, device=device, quiet=quiet, estimator=estimator).record
               for m in models]
    if len(results) == 1:
        res = results[0]
        dest = out or (Path(res["checkpoint"]).parent / f"eval-{split}.json")
        _write_json(dest, res)
        _print_eval(res, dest)
        return
    if out is not None:
        _write_json(out, {"results": results})
        saved = str(out)
    else:
        paths = [Path(r["checkpoint"]).parent / f"eval-{split}.json" for r in results]
        for res, dest in zip(results, paths):
            _write_json(dest, res)
        saved = ", ".join(map(str, paths))
    _print_comparison(results)
    out_console.print(f"saved {saved}")


def _write_json(dest: Path, obj: dict) -> None:
    from robustvae.io import write_json

    dest.parent.mkdir(parents=True, exist_ok=True)
    write_json(dest, obj)


def _layer_cells(row: dict) -> tuple[str, str]:
    """(KL cell, active-units cell) of one layer row; a context layer shows the levels it uses."""
    if row["active_units"] is None:
        return f"{row['kl_nats']:.3f} (context)", f"n/a: {row['levels_used']:.2f}/{row['levels']} levels used"
    return f"{row['kl_nats']:.3f}", str(row["active_units"])


def _print_eval(res: dict, dest: Path) -> None:
    table = Table(title=f"{res['model']} on {res['dataset']} {res['split']} ({res['images']} images, K={res['iw_samples']})")
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
    table = Table(title=f"{first['dataset']} {first['split']} ({first['images']} images)")
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


@app.command()
def sample(
    checkpoint: str = typer.Argument(..., help="Zoo name, checkpoint file, or run directory."),
    n: int = typer.Option(64, "--n", help="Number of samples."),
    temperature: float = typer.Option(1.0, "--temperature", "-t", help="Prior temperature (of the Gaussian layers; DCT-VAE draws its context from the diffusion prior)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help="PNG grid to write."),
) -> None:
    """Draw ancestral samples (decoder mean images) and save them as a PNG grid."""
    import math

    from torchvision.utils import save_image

    from robustvae import api

    imgs = api.sample(checkpoint, n, temperature=temperature, seed=seed, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(imgs, out, nrow=int(math.ceil(math.sqrt(n))), padding=1)
    out_console.print(f"wrote {n} samples at temperature {temperature} to {out}")


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
    step_size: Optional[float] = typer.Option(None, "--step-size", help="PGD step (default 2.5 eps / steps) or SGD learning rate (default 1.0)."),
    eot: int = typer.Option(0, "--eot", help="kuzina-ladder DCT-VAEs: attack with the authors' context dither on, averaged over N fixed draws. [default: 0, dither off]"),
    eps_sweep: Optional[str] = typer.Option(None, "--eps-sweep", help="Run the sweep at each of these budgets, e.g. 0.025,0.05,0.1,0.2,0.4,1.0 (instead of --eps)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Prior temperature below layer k. [default: 0.1]"),
    recon: Optional[str] = typer.Option(None, "--recon", help="Reconstruction rule: default (posterior means, shared noise, best iterate) or authors (posterior samples, independent noise, last iterate). [default: default]"),
    temperature_convention: Optional[str] = typer.Option(None, "--temperature-convention", help="What --temperature scales: std or var. [default: std for the default rule, var for authors]"),
    straight_through: Optional[bool] = typer.Option(None, "--straight-through/--no-straight-through", help="DCT-VAE context: score quantised values with straight-through gradients. [default: off]"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of points, starts and noise. [default: 0]"),
    suite: Optional[Path] = typer.Option(None, "--suite", help="TOML file with the same settings (attacks/*.toml); options override it."),
    out: Path = typer.Option(Path("runs/attack"), "--out", "-o", help="Output directory (resumed when the settings match)."),
    shard: str = typer.Option("1/1", "--shard", help="Run slice i of N of the work units, e.g. 1/2."),
    max_batch_mib: Optional[int] = typer.Option(None, "--max-batch-mib", help="Memory budget of one batch. [default: 1024]"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with the dataset files."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """Latent attacks on the top-k layers: MS-SSIM of attacked vs clean reconstructions, as records.

    Multi-process: [bold]torchrun --nproc_per_node N -m robustvae attack ...[/bold] splits the
    work units (of --shard i/N, for several machines) over the processes; rank 0 merges the records.
    """
    from robustvae import api
    from robustvae.distributed import distributed
    from robustvae.experiments.attack import parse_shard
    from robustvae.experiments.suite import attack_config

    suite_models, cfg = attack_config(
        suite, layers=layers, eps=eps, norm=norm, restarts=restarts, points=points, steps=steps, objective=objective,
        optimizer=optimizer, step_size=step_size, temperature=temperature, recon=recon,
        temperature_convention=temperature_convention, straight_through=straight_through,
        seed=seed, max_batch_mib=max_batch_mib, eps_sweep=eps_sweep)
    shard_t = parse_shard(shard)
    names = list(models or []) or suite_models
    if not names:
        raise RobustVAEError("no model given: name zoo checkpoints, checkpoint files or run directories (or a --suite with models)")
    with distributed(backend, device) as (dd, dev):
        res = api.attack(names, cfg, out, device=dev, shard=shard_t, data_dir=data_dir, quiet=quiet,
                         command=["robustvae", *(sys.argv[1:])], dist=dd, eot=eot)
    if not dd.is_main:
        return
    from robustvae.reporting.tables import display_table

    _print_frame(display_table(res.table), "MS-SSIM(clean, attacked reconstruction): mean over points, 95 % bootstrap intervals")
    out_console.print(f"{len(res.records)} records in {out}")


def _print_frame(cells, title: str) -> None:
    """A table of text cells (from robustvae.reporting.tables) as Markdown: nothing cut, at any width, in any log."""
    from robustvae.reporting.tables import markdown

    out_console.print(title, markup=False, highlight=False, soft_wrap=True)
    out_console.print(markdown(cells), markup=False, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- compress


@app.command()
def compress(
    models: list[str] = typer.Argument(..., help="Zoo names, checkpoint files or run directories (all grey or all RGB)."),
    images: list[Path] = typer.Option([], "--images", help="A folder of PNG/JPEG files, or image files (repeatable)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Top-k layers that carry the image: 1,2 or 1-4 or all."),
    temperature: float = typer.Option(0.1, "--temperature", help="Prior temperature of the layers below k."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prior noise and of the rate's posterior samples."),
    batch_size: int = typer.Option(64, "--batch-size", help="Patches per model pass."),
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
    cfg = CompressConfig(layers=layers, temperature=temperature, seed=seed, batch_size=batch_size)
    res = api.compress(models, list(images), cfg, out, device=device, force=force, quiet=quiet,
                       command=["robustvae", *(sys.argv[1:])])
    _print_compression_table(res.records)
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
    eval_files: list[Path] = typer.Option([], "--eval", help="JSON written by robustvae eval: NLL beside each model (repeatable)."),
    notes: list[Path] = typer.Option([], "--notes", help="Text file shown near the top of the page (repeatable)."),
    title: Optional[str] = typer.Option(None, "--title", help="Page title. Default: the models compared."),
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
    from robustvae.training import Interrupted

    cmd = typer.main.get_command(app)
    try:
        # standalone mode: usage errors print typer's message and raise SystemExit(2)
        cmd.main(args=argv, prog_name="robustvae", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Interrupted as e:
        _print_once(f"stopped: {e}")
        return 130
    except RobustVAEError as e:
        _print_once(f"error: {e}", every_rank=getattr(e, "every_rank", False))
        return 2
    return 0


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
