"""Checkpoints and the model zoo.

A checkpoint is a plain dict saved with ``torch.save`` and always read back with
``weights_only=True``: loading never executes code from the file. It holds the
resolved config (as a JSON-able dict), the weights (and EMA weights), and for
training runs the optimiser, scheduler, step and RNG states. Files are written
atomically (temporary file + rename) so a crash never leaves half a checkpoint.

``load(name_or_path)`` returns a :class:`LoadedModel`: a ready model in eval mode with
its config and provenance (file and sha256), from a zoo name (fetched once into
torch.hub's cache and verified by sha256), a checkpoint file, or a run directory (its
``best.pt``, else ``last.pt``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustvae.config import Config
from robustvae.errors import CheckpointError, ConfigError
from robustvae.registry import ARCHITECTURES, PRESETS, PUBLISHED, ZOO, ZooEntry, build_model

FORMAT = "robustvae-checkpoint"
FORMAT_VERSION = 1


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path`` (:func:`robustvae.io.atomic_file`)."""
    from robustvae.io import atomic_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        torch.save(obj, f)


def make_checkpoint(cfg: Config, model: nn.Module, ema: nn.Module | None = None, **state: Any) -> dict[str, Any]:
    """The checkpoint dict for ``model`` built from ``cfg``; ``state`` adds training state."""
    from robustvae import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "robustvae_version": __version__,
        "arch": cfg.model.arch,
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        **state,
    }


def load_foreign(path: str | os.PathLike, *, safe_globals: list | tuple = (), mmap: bool = False) -> Any:
    """Another code base's ``torch.save`` file, read without executing code (``weights_only``; ``safe_globals`` are
    the plain-data types also allowed), memory-mapped when ``mmap`` and the file's format allows it; one line on
    a missing, wrong, truncated or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; download the checkpoint first (robustvae zoo list shows the links)")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as e:  # mmap needs torch's zip format (PyTorch >= 1.6 writes it): older files load whole
                if not mmap or "mmap" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt and unsafe files all land here
        raise CheckpointError(
            f"cannot read {path}: it is truncated, corrupt, not a torch file, or holds objects that safe loading "
            f"refuses ({type(e).__name__}); download it again"
        ) from None


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint file (weights only; never executes code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated or unsafe files all land here
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is corrupt, truncated, not a torch file, or holds pickled "
            f"objects that safe loading refuses ({type(e).__name__}); re-create it with robustvae train"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a robustvae checkpoint (no '{FORMAT}' marker); re-create it with robustvae train")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}, newer than this robustvae reads ({FORMAT_VERSION}); "
            f"upgrade robustvae"
        )
    arch = ckpt.get("arch")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{path} was made by architecture {arch!r}, unknown here (known: {', '.join(sorted(ARCHITECTURES))}); "
            f"upgrade robustvae"
        )
    return ckpt


def config_of(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> Config:
    try:
        return Config.from_dict(ckpt["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} holds an invalid config ({e}); was it made by another robustvae version?") from None


def load_weights(model: nn.Module, state: dict[str, Any], path: str | os.PathLike = "checkpoint") -> None:
    """Load a state dict, turning shape/key mismatches into one clear line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        detail = (
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped tensors"
            f" (first: {(missing + unexpected + wrong)[0]})"
        )
        raise CheckpointError(
            f"{path} does not fit the architecture its config describes ({detail}); "
            f"it was made by a different architecture or robustvae version"
        )
    model.load_state_dict(state)


def model_from_checkpoint(
    ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint", weights: str = "auto"
) -> tuple[nn.Module, Config]:
    """Build the model a checkpoint describes and load its weights (EMA ones when present).

    ``weights`` is ``auto`` (EMA when the checkpoint has it), ``ema`` or ``raw``.
    """
    cfg = config_of(ckpt, path)
    if weights not in ("auto", "ema", "raw"):
        raise ConfigError(f"weights must be auto, ema or raw, got {weights!r}")
    if weights == "ema" and ckpt.get("ema") is None:
        raise CheckpointError(f"{path} has no EMA weights (train.ema_decay was 0); use weights='raw'")
    model = build_model(cfg.model)
    use_ema = weights == "ema" or (weights == "auto" and ckpt.get("ema") is not None)
    load_weights(model, ema_weights(ckpt["ema"]) if use_ema else ckpt["model"], path)
    return model, cfg


def ema_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The model's weights from a checkpoint's ``ema`` entry.

    Training keeps its EMA in ``torch.optim.swa_utils.AveragedModel``, whose state dict
    prefixes every tensor with ``module.`` and adds the ``n_averaged`` counter; the
    checkpoint stores it as is (a resumed run restores it whole). A plain state dict
    (imported checkpoints) is returned unchanged.
    """
    if "n_averaged" not in state and not all(k.startswith("module.") for k in state):
        return state
    return {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}


def resolve_path(name_or_path: str | os.PathLike) -> Path:
    """A zoo name, a checkpoint file or a run directory -> a local checkpoint file."""
    s = str(name_or_path)
    if s in ZOO:
        return fetch(ZOO[s])
    p = Path(s).expanduser()
    if p.is_dir():
        for cand in ("best.pt", "last.pt"):
            if (p / cand).is_file():
                return p / cand
        raise CheckpointError(f"run directory {p} holds no best.pt or last.pt; train it first (robustvae train --out {p})")
    if p.is_file():
        return p
    if s in PRESETS:
        fetch_hint = f", or fetch the authors' weights: robustvae zoo fetch {s} --out runs/{s}" if s in PUBLISHED else ""
        raise CheckpointError(
            f"{s!r} is a preset, not a trained checkpoint; train it with: robustvae train --preset {s} --out runs/{s}"
            f"{fetch_hint}"
        )
    known = ", ".join(sorted(ZOO)) or "none registered"
    raise CheckpointError(f"{s!r} is neither a zoo checkpoint (known: {known}) nor an existing checkpoint file or run directory")


@dataclass(frozen=True)
class LoadedModel:
    """A model (:class:`~robustvae.models.contract.HierarchicalVAE`) with its config and where it came from.

    ``config`` is None for a model built in memory without one (it then has no
    dataset of its own); ``path`` is ``"<in memory>"`` and ``sha256`` empty for such models.
    """

    model: nn.Module
    config: Config | None
    path: str
    sha256: str

    @property
    def name(self) -> str:
        """The config's name (the preset it was trained from), else the architecture."""
        return self.config.name if self.config is not None else self.model.arch

    @classmethod
    def in_memory(cls, model: nn.Module, config: Config | None = None) -> LoadedModel:
        """Wrap a model that was not loaded from a file."""
        return cls(model, config, "<in memory>", "")


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", weights: str = "auto") -> LoadedModel:
    """A ready model in eval mode, with its config and provenance, from a zoo name, checkpoint file or run directory.

    ``weights``: ``auto`` (EMA weights when the checkpoint has them), ``ema`` or ``raw``.
    """
    path = resolve_path(name_or_path)
    ckpt = read_checkpoint(path)
    model, cfg = model_from_checkpoint(ckpt, path, weights)
    return LoadedModel(model.to(device).eval(), cfg, str(path), sha256_file(path))


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / "robustvae"


def fetch(entry: ZooEntry) -> Path:
    """Download a zoo checkpoint into torch.hub's cache once; verify its sha256 every time."""
    dst = cache_dir() / f"{entry.name}-{entry.sha256[:12]}.pt"
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(entry.url, str(dst), hash_prefix=None, progress=True)
        except Exception as e:  # noqa: BLE001 - network errors come in many types
            raise CheckpointError(f"could not download zoo checkpoint {entry.name!r} from {entry.url}: {e}") from None
    digest = sha256_file(dst)
    if digest != entry.sha256:
        dst.unlink(missing_ok=True)
        raise CheckpointError(
            f"zoo checkpoint {entry.name!r} failed its sha256 check (expected {entry.sha256[:16]}..., "
            f"got {digest[:16]}...); the corrupt download was deleted, try again"
        )
    return dst


def list_entries() -> list[dict[str, str]]:
    """Rows for ``robustvae zoo list``: every preset and every zoo checkpoint."""
    from robustvae.registry import PRESET_NOTES

    rows = [
        {"name": n, "kind": "preset", "model": c.model.arch, "data": c.data.name,
         "layers": str(c.model.num_layers), "about": PRESET_NOTES.get(n, "")}
        for n, c in PRESETS.items()
    ]
    for n, e in ZOO.items():
        c = PRESETS[e.preset]
        cached = (cache_dir() / f"{e.name}-{e.sha256[:12]}.pt").is_file()
        rows.append({"name": n, "kind": "checkpoint" + (" (cached)" if cached else ""), "model": c.model.arch,
                     "data": c.data.name, "layers": str(c.model.num_layers), "about": e.description or e.url})
    for p in PUBLISHED.values():
        c = PRESETS[p.preset]
        rows.append({"name": p.name, "kind": "published (zoo fetch)", "model": c.model.arch, "data": c.data.name,
                     "layers": str(c.model.num_layers), "about": f"their test NLL {p.reported_nll} {p.unit}; {p.url}"})
    return rows
