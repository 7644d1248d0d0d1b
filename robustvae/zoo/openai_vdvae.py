"""openai/vdvae's published checkpoints: import them into robustvae checkpoints (docs/openai-vdvae.md).

Upstream saves ``torch.save(vae.state_dict())``: ``*-model.th`` (the trained weights) and
``*-model-ema.th`` (their exponential moving average, which upstream evaluates).
:func:`import_checkpoint` reads one with ``weights_only=True`` (no code runs) and memory-mapped,
checks every name and shape against the ``--hps`` configuration built on the meta device
(:mod:`robustvae.models.openai_vdvae.convert`) before any weight is allocated, then writes
``OUT/best.pt`` (the file's weights as the model's) with a ``provenance`` naming the source,
file, sha256, hps and upstream commit, plus ``OUT/imported.json`` with the same facts.
Nothing is written when anything is wrong.

:data:`robustvae.registry.PUBLISHED` lists upstream's EMA files with the URLs of its README
and the test NLL it reports; :func:`fetch` downloads one (checked against its sha256 when one
is recorded) and imports it.
"""

from __future__ import annotations

import os
from pathlib import Path


from robustvae.errors import CheckpointError, RobustVAEError
from robustvae.registry import OPENAI_HPS, PUBLISHED

SOURCE = "openai-vdvae"


def preset_of(hps: str) -> str:
    """``--hps`` name -> the robustvae preset of that configuration."""
    if hps not in OPENAI_HPS:
        raise RobustVAEError(f"unknown --hps {hps!r} for --from {SOURCE} (known: {', '.join(OPENAI_HPS)})")
    return f"openai-vdvae-{hps}"


def read_state_dict(path: str | os.PathLike) -> dict:
    """The file's state dict, memory-mapped, without executing code; one line on a wrong, truncated or unsafe file."""
    from robustvae.zoo import load_foreign

    state = load_foreign(path, mmap=True)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, not a state dict; it is not a model file of "
            f"openai/vdvae (*-model.th or *-model-ema.th)"
        )
    return state


def import_checkpoint(
    path: str | os.PathLike, preset: str, out: str | os.PathLike, *, force: bool = False, url: str | None = None
) -> Path:
    """Convert upstream's state-dict file ``path`` into ``out``/best.pt; returns that file.

    ``preset``: an openai-vdvae preset, ``openai-vdvae-HPS`` for upstream's ``--hps HPS`` (:func:`preset_of`).
    """
    from robustvae.models.openai_vdvae import UPSTREAM_COMMIT
    from robustvae.models.openai_vdvae.convert import load_upstream
    from robustvae.registry import get_preset
    from robustvae.zoo import import_target, sha256_file, write_import

    cfg = get_preset(preset)
    if cfg.model.arch != SOURCE:
        raise RobustVAEError(
            f"preset {preset!r} is not an openai-vdvae architecture; name upstream's configuration "
            f"with --hps ({', '.join(OPENAI_HPS)})"
        )
    hps = preset.removeprefix("openai-vdvae-") if preset.removeprefix("openai-vdvae-") in OPENAI_HPS else None
    out = import_target(out, force)
    model = load_upstream(read_state_dict(path), cfg.model, str(path))
    provenance = {
        "source": SOURCE,
        "file": Path(path).name,
        "sha256": sha256_file(path),
        "hps": hps,
        "preset": preset,
        "upstream_commit": UPSTREAM_COMMIT,
        "ema": False,
        "url": url,
    }
    return write_import(out, cfg, model, None, provenance)


def _http_download(url: str, dest: Path) -> None:
    from robustvae import io

    try:
        io.download(url, dest)
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise RobustVAEError(
            f"could not download {url}: {e}; download it by hand and run robustvae zoo import FILE "
            f"--from {SOURCE} --hps HPS"
        ) from None


def fetch(name: str, out: str | os.PathLike, *, force: bool = False, download=_http_download) -> Path:
    """Download a published checkpoint (:data:`robustvae.registry.PUBLISHED`) and import it into ``out``."""
    from robustvae.zoo import sha256_file

    entry = PUBLISHED.get(name)
    if entry is None or entry.source != SOURCE:
        known = ", ".join(n for n, p in PUBLISHED.items() if p.source == SOURCE)
        raise RobustVAEError(f"unknown openai/vdvae checkpoint {name!r} (known: {known})")
    from robustvae import io

    with io.temporary_dir() as tmp:
        dest = tmp / Path(entry.url).name
        download(entry.url, dest)
        if entry.sha256 and sha256_file(dest) != entry.sha256:
            raise CheckpointError(
                f"{entry.url} failed its sha256 check (expected {entry.sha256[:16]}...); the "
                f"download was deleted, try again"
            )
        return import_checkpoint(dest, entry.preset, out, force=force, url=entry.url)
