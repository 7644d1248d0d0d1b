"""The compression experiment (Appendix G): how much of an image the top k latent layers carry, against JPEG.

Every image is cut into patches of the model's input size (:mod:`.images`); each patch
is reconstructed from the posterior means of the top k layers with the layers below
drawn from the prior at ``temperature`` (``model.reconstruct``; binary-data models
return their Bernoulli likelihood's mean, i.e. pixel probabilities used as grey
values, never a sample); the patches are stitched back, rounded to 8 bits (the image
one would save) and scored against the image with PSNR and MS-SSIM (:mod:`.jpeg`).

Rate: the KL terms of the top k layers from ``model.elbo`` (analytic Gaussian KLs at one
seeded posterior sample: an unbiased estimate of the expected code length of those
latents under the prior), summed over the image's patches (padding included: it is
coded too), in bits, over the H x W pixel positions of the image: ``bpp``. For DCT-VAE,
layer 1 is the context: ``bpp`` counts its bits under the diffusion prior (the bound
``elbo().kl[:, 0]``), and ``bpp_context_raw`` (the seed's BPP*) counts instead the
quantised context's raw size, C x c x c coefficients x b bits, plus the same Gaussian
KLs. The JPEG baseline: for each image and k, the quality whose PSNR is closest to the
model's, with its real file size.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustvae.compression import jpeg
from robustvae.compression.images import InputImage, patch_count, patchify, read_images, stitch, to_uint8
from robustvae.config import CompressConfig, parse_layers, to_dict
from robustvae.errors import RobustVAEError
from robustvae.progress import make_progress
from robustvae.results import safe_name, write_json
from robustvae.seeding import derive_seed

RUN_KIND = "compress"
OUTPUTS = ("records.csv", "jpeg.csv", "run.json", "rd.png", "rd.pdf", "side-by-side", "images")


def context_raw_bits(model: nn.Module) -> float:
    """Bits of one patch's quantised context stored as it is (C x c x c coefficients x b bits); 0 without a context."""
    if model.layers[0].kind != "context":
        return 0.0
    return model.layers[0].dims * math.log2(model.codec.levels)


@torch.no_grad()
def code_patches(
    model: nn.Module, patches: torch.Tensor, ks: list[int], cfg: CompressConfig, device: torch.device,
    advance=lambda n: None,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Reconstructions per k of ``patches`` (N, C, P, P) and each patch's per-layer rate in bits (N, L).

    Batches of ``cfg.batch_size`` patches; the prior noise (shared by every k) and the
    rate's posterior samples come from ``cfg.seed``; ``advance(n)`` reports progress.
    """
    n = patches.shape[0]
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "prior noise"))
    recs = {k: torch.empty(patches.shape) for k in ks}
    bits = torch.empty(n, model.num_layers)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(cfg.seed, "rate"))
        for i in range(0, n, cfg.batch_size):
            xb = patches[i : i + cfg.batch_size].to(device)
            noise = model.make_noise(xb.shape[0], gen)
            for k in ks:
                recs[k][i : i + xb.shape[0]] = model.reconstruct(xb, k, cfg.temperature, noise).float().cpu()
            bits[i : i + xb.shape[0]] = model.elbo(xb).kl.float().cpu() / math.log(2)
            advance(xb.shape[0])
    return recs, bits


def code_images(
    model: nn.Module, images: list[InputImage], ks: list[int], cfg: CompressConfig, device: torch.device,
    advance=lambda n: None,
) -> tuple[list[dict[int, np.ndarray]], list[torch.Tensor], list[int], float]:
    """Per image: its 8-bit reconstruction per k, per-layer bits summed over its patches, and its patch count.

    The patches of all images go through the model together (batched across images);
    the last item is the seconds the model passes took.
    """
    size = model.cfg.image_size
    cut = [patchify(im.tensor(), size) for im in images]
    t0 = time.perf_counter()
    recs, bits = code_patches(model, torch.cat([p for p, _ in cut]), ks, cfg, device, advance)
    seconds = time.perf_counter() - t0
    out_recs, out_bits, counts = [], [], []
    start = 0
    for im, (p, grid) in zip(images, cut):
        stop = start + p.shape[0]
        out_recs.append({k: to_uint8(stitch(recs[k][start:stop], grid, im.height, im.width)) for k in ks})
        out_bits.append(bits[start:stop].sum(0))
        counts.append(p.shape[0])
        start = stop
    return out_recs, out_bits, counts, seconds


def _model_rows(label: str, model: nn.Module, sha: str, im: InputImage, ks: list[int], recs: dict[int, np.ndarray],
                layer_bits: torch.Tensor, patches: int, cfg: CompressConfig) -> list[dict[str, Any]]:
    """One record per k for one model and image (JPEG columns are filled in later)."""
    ps, ms = jpeg.score(im.pixels, [recs[k] for k in ks])
    pixels = im.height * im.width
    has_context = model.layers[0].kind == "context"
    raw = context_raw_bits(model) * patches
    rows = []
    for k, p, m in zip(ks, ps, ms):
        used = layer_bits[:k].double()
        gaussian = float(used[1:].sum()) if has_context else float(used.sum())
        context = float(used[0]) if has_context else math.nan
        bits = gaussian + (context if has_context else 0.0)
        rows.append({
            "image": im.name, "width": im.width, "height": im.height, "channels": int(im.pixels.shape[0]),
            "conversion": im.conversion, "model": label, "arch": model.arch, "checkpoint_sha256": sha, "k": k,
            "patch_size": model.cfg.image_size, "patches": patches, "temperature": cfg.temperature, "seed": cfg.seed,
            "psnr": p, "msssim": m, "msssim_impl": jpeg.msssim_impl(im.height, im.width),
            "bits": bits, "bpp": bits / pixels, "gaussian_bits": gaussian,
            "context_bits_prior": context, "context_bits_raw": raw if has_context else math.nan,
            "bpp_context_raw": (raw + gaussian) / pixels if has_context else math.nan,
        })
    return rows


def _check_out(out: Path, force: bool) -> None:
    """Refuse a file, or a non-empty directory without ``force``, as ``out``."""
    if out.exists() and not out.is_dir():
        raise RobustVAEError(f"--out {out} is a file; pass a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RobustVAEError(f"{out} already exists and is not empty; pass --force to replace a compression run there")


def _clear_out(out: Path) -> None:
    """Remove what an earlier compression run wrote into ``out`` (and nothing else)."""
    for name in OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def run_compression(
    models: list[str | nn.Module],
    images: list[str | os.PathLike],
    config: CompressConfig,
    out: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    force: bool = False,
    quiet: bool = True,
    command: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compress ``images`` with every model and JPEG; write the run into ``out``; return (records, JPEG sweep).

    Everything is read and checked before anything is written, so a bad input leaves
    ``out`` as it was.
    """
    from robustvae.attacks.engine import load_models
    from robustvae.results import git_commit, versions
    from robustvae.device import resolve_device

    out = Path(out)
    dev = resolve_device(device)
    if not models:
        raise RobustVAEError("no model given: name a zoo checkpoint, a checkpoint file or a run directory")
    _check_out(out, force)
    loaded = load_models(list(models), dev)
    channels = {lm.model.cfg.image_channels for lm in loaded}
    if len(channels) > 1:
        raise RobustVAEError("the models take grey and RGB images; compress grey and colour models in separate runs")
    ks = {lm.label: parse_layers(config.layers, lm.model.num_layers, lm.label) for lm in loaded}
    patch = max(lm.model.cfg.image_size for lm in loaded)
    imgs, skipped = read_images(list(images), channels.pop(), patch)

    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    recs: dict[str, list[dict[int, np.ndarray]]] = {}
    timing = {}
    total = sum(patch_count(im.height, im.width, lm.model.cfg.image_size) for lm in loaded for im in imgs)
    with make_progress(quiet) as progress:
        task = progress.add_task("compress", total=total, info="model passes")
        for lm in loaded:
            r, bits, counts, seconds = code_images(lm.model, imgs, ks[lm.label], config, dev,
                                                   lambda n: progress.update(task, advance=n, info=lm.label))
            recs[lm.label] = r
            timing[lm.label] = (sum(counts), seconds)
            for im, rec, b, c in zip(imgs, r, bits, counts):
                rows += _model_rows(lm.label, lm.model, lm.sha256, im, ks[lm.label], rec, b, c, config)
        jtask = progress.add_task("JPEG", total=len(imgs), info=f"qualities {jpeg.QUALITIES[0]}-{jpeg.QUALITIES[-1]}")
        sweeps = {}
        for im in imgs:
            sweeps[im.name] = jpeg.sweep(im.pixels)
            progress.update(jtask, advance=1, info=im.name)
    records = pd.DataFrame(rows)
    matched = [sweeps[r["image"]].closest(r["psnr"]) for r in rows]
    for col, attr in (("jpeg_quality", "qualities"), ("jpeg_psnr", "psnr"), ("jpeg_msssim", "msssim"), ("jpeg_bpp", "bpp")):
        records[col] = [getattr(sweeps[r["image"]], attr)[i] for r, i in zip(rows, matched)]
    sweep_rows = pd.DataFrame([row for im in imgs for row in _sweep_rows(im, sweeps[im.name])])
    wall = time.perf_counter() - t0

    info = {
        "kind": RUN_KIND, "command": command or sys.argv, "settings": to_dict(config), "jpeg": jpeg.SETTINGS,
        "versions": {**versions(), **_extra_versions()}, "git_commit": git_commit(), "device": str(dev),
        "torch_threads": torch.get_num_threads(), "wall_time_s": wall, "skipped_files": skipped,
        "images": [{"name": im.name, "path": im.path, "width": im.width, "height": im.height, "mode": im.mode,
                    "conversion": im.conversion, "sha256": im.sha256} for im in imgs],
        "models": [_model_info(lm, ks[lm.label], *timing[lm.label]) for lm in loaded],
    }
    _check_out(out, force)  # again: the directory may have been filled meanwhile
    _clear_out(out)
    _write_run(out, records, sweep_rows, imgs, recs, sweeps)
    write_json(out / "run.json", info)  # last: a run.json means the run is complete
    return records, sweep_rows


def _sweep_rows(im: InputImage, sweep: jpeg.Sweep) -> list[dict[str, Any]]:
    """jpeg.csv's rows of one image: one per quality."""
    impl = jpeg.msssim_impl(im.height, im.width)
    return [{"image": im.name, "width": im.width, "height": im.height, "channels": int(im.pixels.shape[0]), "quality": q,
             "bytes": len(f), "bpp": b, "psnr": p, "msssim": m, "msssim_impl": impl}
            for q, f, b, p, m in zip(sweep.qualities, sweep.files, sweep.bpp, sweep.psnr, sweep.msssim)]


def _write_run(out: Path, records: pd.DataFrame, sweep_rows: pd.DataFrame, imgs: list[InputImage],
               recs: dict[str, list[dict[int, np.ndarray]]], sweeps: dict[str, jpeg.Sweep]) -> None:
    """records.csv, jpeg.csv, the figure, and per image its reconstructions, matched JPEG files and side-by-side."""
    from robustvae.report.compression import rd_figure, side_by_side_figure

    out.mkdir(parents=True, exist_ok=True)
    records.to_csv(out / "records.csv", index=False)
    sweep_rows.to_csv(out / "jpeg.csv", index=False)
    fig = rd_figure(records, sweep_rows)
    for fmt in ("png", "pdf"):
        fig.savefig(out / f"rd.{fmt}", format=fmt, dpi=130)
    (out / "side-by-side").mkdir()
    for i, im in enumerate(imgs):
        d = out / "images" / safe_name(im.name)
        d.mkdir(parents=True)
        mine = records[records.image == im.name]
        panels = []
        for _, r in mine.iterrows():
            rec = recs[r.model][i][r.k]
            jpg = sweeps[im.name].files[sweeps[im.name].qualities.index(int(r.jpeg_quality))]
            _save_png(rec, d / f"{safe_name(r.model)}-k{r.k}.png")
            (d / f"jpeg-q{int(r.jpeg_quality)}.jpg").write_bytes(jpg)
            panels.append((r, rec, jpeg.decode(jpg)))
        side_by_side_figure(im.name, im.pixels, panels).savefig(out / "side-by-side" / f"{safe_name(im.name)}.png", dpi=90)


def _model_info(lm: Any, ks: list[int], patches: int, seconds: float) -> dict[str, Any]:
    """What run.json says about one model: where it came from, what it coded, how fast."""
    model = lm.model
    return {"label": lm.label, "path": lm.path, "sha256": lm.sha256, "arch": model.arch,
            "config": to_dict(model.config) if hasattr(model, "config") else None, "num_layers": model.num_layers,
            "layers": ks, "patch_size": model.cfg.image_size, "context_bits_raw_per_patch": context_raw_bits(model) or None,
            "patches": patches, "model_seconds": seconds, "patches_per_s": patches / max(seconds, 1e-9),
            "reconstructions_per_s": patches * len(ks) / max(seconds, 1e-9)}


def _extra_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"pillow": version("pillow")}


def _save_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(path)
