"""The authors' published DCT-VAE checkpoints (AKuzina/dct_vae): import them into robustvae checkpoints.

Their files are ``torch.save`` dicts holding ``model_state_dict`` (and
``ema_model_state_dict``, None in their runs). :func:`import_checkpoint` reads one with
``weights_only=True`` (no code runs; numpy scalars are the only non-tensor types allowed),
converts it strictly (:mod:`robustvae.models.kuzina.convert`) into the preset's model and
writes ``OUT/best.pt``, a robustvae checkpoint whose ``provenance`` names the source, the
file and its sha256, plus ``OUT/imported.json`` with the same facts.

:data:`robustvae.registry.PUBLISHED` lists the four checkpoints of their README with the test NLL they
report. Their sha256 is not known here (the files sit behind Google Drive links that
were never fetched), so no hash is pretended: an import records the hash of the file it
read, and :func:`fetch` downloads with the optional ``gdown`` package
(``pip install "robustvae[kuzina]"``) before importing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from robustvae.errors import CheckpointError, RobustVAEError
from robustvae.registry import PUBLISHED

SOURCES = ("kuzina",)


def _safe_types() -> list:
    """Numpy scalar and dtype types: plain data that their training loop may have saved next to the weights."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    return [core.multiarray.scalar, np.dtype, *{type(np.dtype(t)) for t in ("float64", "float32", "int64")}]


def read_authors_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Their checkpoint dict, read without executing code; one line on a wrong, truncated or unsafe file."""
    from robustvae.zoo import load_foreign

    ckpt = load_foreign(path, safe_globals=_safe_types())
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
        found = ", ".join(sorted(map(str, ckpt))[:6]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} has no 'model_state_dict' (found: {found or 'nothing'}); it is not a checkpoint "
            f"of the authors' code (AKuzina/dct_vae)"
        )
    return ckpt


def _weights(state: Any, preset: str, where: str) -> torch.nn.Module:
    """The preset's model with their ``state`` converted and loaded; shapes checked on the meta device first."""
    from robustvae.models.kuzina.convert import convert_state_dict
    from robustvae.registry import build_model, get_preset
    from robustvae.zoo import build_checked, meta_model

    cfg = get_preset(preset).model
    converted = convert_state_dict(state, meta_model(lambda: build_model(cfg)), where)
    return build_checked(lambda: build_model(cfg), converted, where)


def import_checkpoint(
    path: str | os.PathLike,
    preset: str,
    out: str | os.PathLike,
    *,
    source: str = "kuzina",
    force: bool = False,
    url: str | None = None,
) -> Path:
    """Convert their checkpoint ``path`` for ``preset`` into ``out``/best.pt; returns that file."""
    from robustvae.registry import get_preset
    from robustvae.zoo import import_target, sha256_file, write_import

    if source not in SOURCES:
        raise RobustVAEError(f"unknown checkpoint source {source!r} (known: {', '.join(SOURCES)})")
    cfg = get_preset(preset)
    if cfg.model.arch != "kuzina-ladder":
        raise RobustVAEError(
            f"preset {preset!r} is not one of the authors' architectures; pick a kuzina-* preset (robustvae zoo list)"
        )
    out = import_target(out, force)
    ckpt = read_authors_checkpoint(path)
    model = _weights(ckpt["model_state_dict"], preset, f"{path} (model_state_dict)")
    ema_state = ckpt.get("ema_model_state_dict")
    ema = _weights(ema_state, preset, f"{path} (ema_model_state_dict)") if ema_state is not None else None
    provenance = {
        "source": source,
        "file": Path(path).name,
        "sha256": sha256_file(path),
        "preset": preset,
        "ema": ema is not None,
        "url": url,
    }
    return write_import(out, cfg, model, ema, provenance)


def _gdown_download(drive_id: str, dest: Path) -> None:
    try:
        import gdown
    except ImportError:
        raise RobustVAEError(
            'fetching from Google Drive needs gdown: pip install "robustvae[kuzina]" (or gdown); or '
            "download the file by hand and run robustvae zoo import FILE --from kuzina"
        ) from None
    if gdown.download(id=drive_id, output=str(dest), quiet=False) is None:
        raise RobustVAEError(
            f"could not download Google Drive file {drive_id}; download it by hand and run robustvae "
            f"zoo import FILE --from kuzina"
        )


def fetch(name: str, out: str | os.PathLike, *, force: bool = False, download=_gdown_download) -> Path:
    """Download a published checkpoint (:data:`robustvae.registry.PUBLISHED`) and import it into ``out`` (its sha256 lands in the provenance)."""
    if name not in PUBLISHED:
        raise RobustVAEError(f"unknown published checkpoint {name!r} (known: {', '.join(PUBLISHED)})")
    entry = PUBLISHED[name]
    from robustvae import io

    with io.temporary_dir() as tmp:
        dest = tmp / f"{name}.pth"
        download(entry.drive_id, dest)
        return import_checkpoint(dest, entry.preset, out, source=entry.source, force=force, url=entry.url)


def with_dither(model, draws: int = 8):
    """``model`` (a loaded kuzina model) with the authors' dither on in encode and reconstruct, averaged over
    ``draws`` fixed draws (EOT). The config says so, hence every run.json of an attack on it."""
    import dataclasses

    from robustvae.registry import build_model
    from robustvae.zoo import LoadedModel

    cfg = model.config
    if cfg is None or cfg.model.arch != "kuzina-ladder" or cfg.model.context == "none":
        raise RobustVAEError("only a kuzina-ladder DCT-VAE has a dithered context; load one with robustvae.load")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, context_dither=True, context_eot_draws=draws))
    net = build_model(cfg.model)
    net.load_state_dict(model.model.state_dict())
    return LoadedModel(net.to(next(model.model.parameters()).device).eval(), cfg, model.path, model.sha256)
