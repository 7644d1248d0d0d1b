"""robustvae eval: NLL, ELBO, KL and active units per layer, one model or several side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from robustvae.cli.common import (
    DATA_HELP,
    DEVICE_HELP,
    IMAGES_HELP,
    QUIET_HELP,
    THREADS,
    app,
    ctrl_c,
    out_console,
    write_json_file,
)
from robustvae.device import cpu_threads
from robustvae.errors import RobustVAEError


@app.command("eval")
def eval_(
    checkpoints: list[str] = typer.Argument(
        ...,
        help="Checkpoint file, run directory, or module.path:factory (your own model, "
        "docs/own-model.md); give two (or more) to compare them side by side.",
    ),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    images: Optional[Path] = typer.Option(None, "--images", help=IMAGES_HELP),
    iw_samples: Optional[int] = typer.Option(
        None, "--iw-samples", "-k", help="Importance samples K. \\[default: 1000 for binary data, 100 otherwise]"
    ),
    limit: Optional[int] = typer.Option(
        None,
        "--limit",
        help="Evaluate a label-stratified subset of this many images, selected with --seed (--images: the first N in file order). \\[default: the whole split]",
    ),
    batch_size: int = typer.Option(100, "--batch-size", help="Images per batch of the ELBO and the layer diagnostics."),
    max_batch_mib: Optional[int] = typer.Option(
        None,
        "--max-batch-mib",
        help="Memory budget of one importance-sampling pass (images x samples); the NLL does not depend on it. \\[default: 64 on CPU, 2048 on CUDA]",
    ),
    weights: str = typer.Option("auto", "--weights", help="auto (EMA when present), ema or raw."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Folder with the dataset files. \\[default: the checkpoint's]"
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the --limit selection, the importance samples and the ELBO's sample."
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="JSON output (progress lines go to the same name with .log, beside it). With several checkpoints, --out gets one file "
        'holding every result ({"results": [...]}); needed for a module:factory model. \\[default: '
        "eval-<split>.json next to each checkpoint; eval-<data>-<split>.json with --data, "
        "eval-images-<name>.json with --images]",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help=QUIET_HELP),
    estimator: str = typer.Option(
        "iwae",
        "--estimator",
        help="iwae (the true bound, every model), authors (Kuzina & Tomczak's estimate with analytic KLs, kuzina-* "
        "models; not a bound) or both, on the same images.",
    ),
    threads: Optional[int] = THREADS,
) -> None:
    """NLL (importance-sampled bound), ELBO, bits/dim, KL and active units per layer.

    DCT-VAE's context is reported separately: its diffusion bound (nats) and the
    quantisation levels it uses (active units do not apply to a deterministic layer).
    The output names the image set (split, count, selection seed, hash of the pixels).
    """
    from robustvae.errors import require_positive

    require_positive(batch_size=batch_size, iw_samples=iw_samples, limit=limit, max_batch_mib=max_batch_mib)
    with ctrl_c("eval", "; nothing written"), cpu_threads(threads):
        _eval(
            checkpoints,
            split,
            iw_samples,
            limit,
            batch_size,
            max_batch_mib,
            weights,
            data_dir,
            device,
            seed,
            out,
            quiet,
            estimator,
            data,
            images,
        )


def _eval(
    checkpoints,
    split,
    iw_samples,
    limit,
    batch_size,
    max_batch_mib,
    weights,
    data_dir,
    device,
    seed,
    out,
    quiet,
    estimator="iwae",
    data=None,
    images=None,
) -> None:
    """The eval command after its light checks: load, evaluate each model on the same images, write, print."""
    from robustvae import api, io
    from robustvae.data.images import one_source

    one_source(data, images)
    models = [api.load(c, device=device, weights=weights) for c in checkpoints]
    image_set = api.load_images(images, models[0]) if images is not None else None
    source = _source(models, data, image_set)
    dests = _destinations(models, out, split, data, image_set)
    ks = sorted({iw_samples or api.default_iw_samples(m) for m in models})
    what = "the first" if image_set is not None else "label-stratified, seed"
    out_console.print(
        f"eval of {len(models)} model(s) on {source}{'' if image_set else f' {split}'}: "
        f"{f'{limit} images ({what} {limit if image_set else seed})' if limit else 'every image'}, "
        f"K={'/'.join(map(str, ks))}, estimator {estimator}, batch {batch_size}, --max-batch-mib "
        f"{max_batch_mib or 'default'}, seed {seed}, weights {weights}, device {device}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    results = []
    for m, dest in zip(models, dests):
        io.make_dirs(dest.parent)
        res = api.evaluate(
            m,
            split=split,
            iw_samples=iw_samples,
            limit=limit,
            batch_size=batch_size,
            data_dir=data_dir,
            seed=seed,
            device=device,
            quiet=quiet,
            estimator=estimator,
            max_batch_mib=max_batch_mib,
            log_path=dest.with_suffix(".log"),
            data=data,
            images=image_set,
        ).record
        res["settings"]["weights"] = weights
        results.append(res)
    if len(results) == 1:
        write_json_file(dests[0], results[0])
        _print_eval(results[0], dests[0])
        return
    if out is not None:
        write_json_file(out, {"results": results})
    else:
        for res, dest in zip(results, dests):
            write_json_file(dest, res)
    _print_comparison(results)
    out_console.print(f"saved {out if out is not None else ', '.join(map(str, dests))}")


def _source(models, data: str | None, image_set) -> str:
    """Where the evaluated images come from (one place for every model: they are compared on the same images)."""
    if image_set is not None:
        return image_set.describe()
    if data is not None:  # checked here, before any output folder is made
        from robustvae.config import DataConfig
        from robustvae.data import check_compatible

        for m in models:
            check_compatible(DataConfig(data), m.model.cfg.image_channels, m.model.cfg.image_size)
        return data
    missing = [m.path for m in models if m.config is None]
    if missing:
        raise RobustVAEError(
            f"{missing[0]} has no dataset of its own (a model factory): pass --data NAME (e.g. "
            f"mnist-offline) or --images PATH"
        )
    datasets = sorted({m.config.data.name for m in models})
    if len(datasets) > 1:
        raise RobustVAEError(
            f"cannot compare models trained on different datasets ({', '.join(datasets)}); "
            f"pass checkpoints of the same dataset, or evaluate all of them on one with --data"
        )
    return datasets[0]


def _destinations(models, out: Path | None, split: str, data: str | None, image_set) -> list[Path]:
    """Where each result goes: --out, else beside its checkpoint (named by the images), never beside no file."""
    if out is not None:
        return [out] * len(models)
    factory = [m.path for m in models if m.sha256_of != "file"]
    if factory:
        raise RobustVAEError(f"{factory[0]} is not a checkpoint file to write beside: pass --out FILE.json")
    name = (
        f"eval-images-{Path(image_set.path).stem}.json"
        if image_set is not None
        else f"eval-{data}-{split}.json"
        if data is not None
        else f"eval-{split}.json"
    )
    return [Path(m.path).parent / name for m in models]


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
    if "pixels_sha256" in s:  # a user's own images
        return (
            f"{s['path']}: {s['images']:,} of {s['split_images']:,} images ({s['selection']}; pixels sha256 "
            f"{s['images_sha256'][:12]})"
        )
    how = (
        f"label-stratified, selection seed {s['selection_seed']}" if s["selection_seed"] is not None else "whole split"
    )
    return (
        f"{s['dataset']} {s['split']}: {s['images']:,} of {s['split_images']:,} images ({how}; "
        f"pixels sha256 {s['images_sha256'][:12]})"
    )


def _print_eval(res: dict, dest: Path) -> None:
    table = Table(title=f"{res['model']} on {_image_set_text(res)}, K={res['iw_samples']}")
    for col in ("layer", "resolution", "units", "KL (nats)", "active units"):
        table.add_column(col, justify="right")
    for row in res["layers"]:
        table.add_row(
            str(row["layer"]), f"{row['resolution']}x{row['resolution']}", str(row["units"]), *_layer_cells(row)
        )
    table.add_row("all", "", str(res["total_units"]), f"{res['kl_nats']:.3f}", str(res["active_units"]))
    out_console.print(table)
    context = f"context {res['context_nats']:.2f} nats | " if "context_nats" in res else ""
    out_console.print(
        f"{_nll_label(res)} {res['nll_nats']:.2f} nats ({res['nll_bpd']:.4f} bits/dim) | {_authors_cell(res)}-ELBO {res['nelbo_nats']:.2f} nats "
        f"({res['nelbo_bpd']:.4f} bits/dim) | {context}active units {res['active_units']}/{res['total_units']} | saved {dest}"
    )


def _nll_label(res: dict) -> str:
    """ "NLL" for the bound (the default); the authors' estimate says so."""
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
        where = Path(r["checkpoint"]) if r.get("sha256_of", "file") == "file" else None
        table.add_column(r["model"] + (f"\n{where.parent.name}/{where.name}" if where else ""), justify="right")

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
