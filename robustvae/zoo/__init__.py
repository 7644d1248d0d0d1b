"""Checkpoints and the model zoo.

A checkpoint is a plain dict saved with ``torch.save`` and always read back with
``weights_only=True``: loading never executes code from the file. It holds the
resolved config (as a JSON-able dict), the weights (and EMA weights), and for
training runs the optimiser, scheduler, step and RNG states. Files are written
atomically (temporary file + rename) so a crash never leaves half a checkpoint.

``load(name_or_path)`` returns a :class:`LoadedModel`: a ready model in eval mode with
its config and provenance (file and sha256), from a checkpoint file, a run directory
(its ``best.pt``, else ``last.pt``), or a user's own model named ``module.path:factory``
(:mod:`robustvae.zoo.factory`). Checkpoints published by others are fetched and
imported into a run directory first (``robustvae zoo fetch``, :mod:`robustvae.zoo.kuzina`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustvae.config import Config
from robustvae.errors import CheckpointError, ConfigError
from robustvae.registry import ARCHITECTURES, PRESETS, PUBLISHED, build_model

FORMAT = "robustvae-checkpoint"
FORMAT_VERSION = 1


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_save(obj: Any, path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path`` (:func:`robustvae.io.atomic_file`;
    ``root``: the output folder below which no link is written through)."""
    from robustvae.io import atomic_file

    with atomic_file(path, root=root) as f:
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


IMPORT_FILES = ("best.pt", "imported.json")  # what a `zoo import` writes into --out (and --force replaces)


def import_target(out: str | os.PathLike, force: bool) -> Path:
    """Check a `zoo import`'s ``out`` before anything is read: a usable folder (no file, no link), empty unless
    ``force``."""
    from robustvae.errors import RobustVAEError
    from robustvae.experiments.rundir import RunDir

    run = RunDir(out)
    run.check_usable()
    if run.entries() and not force:
        raise RobustVAEError(f"{out} is not empty; pass --force to replace its checkpoint, or pick another --out")
    return Path(out)


def write_import(
    out: str | os.PathLike, cfg: Config, model: nn.Module, ema: nn.Module | None, provenance: dict[str, Any]
) -> Path:
    """Write an imported checkpoint (``best.pt``, with its ``provenance``) and ``imported.json`` into ``out``; with
    ``--force`` the old files stay until both new ones are written. Returns ``out``/best.pt."""
    from robustvae import io
    from robustvae.experiments.rundir import RunDir

    out = Path(out)
    with RunDir(out).locked(), io.replace_outputs(out, IMPORT_FILES) as new:
        atomic_save(make_checkpoint(cfg, model, ema, provenance=provenance), new / "best.pt", root=new)
        io.write_json(new / "imported.json", provenance, root=new)
    return out / "best.pt"


def load_foreign(path: str | os.PathLike, *, safe_globals: list | tuple = (), mmap: bool = False) -> Any:
    """Another code base's ``torch.save`` file, read without executing code (``weights_only``; ``safe_globals`` are
    the plain-data types also allowed), memory-mapped when ``mmap`` and the file's format allows it; one line on
    a missing, wrong, truncated or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path} does not exist; download the checkpoint first (robustvae zoo list shows the links)"
        )
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except (
                RuntimeError
            ) as e:  # mmap needs torch's zip format (PyTorch >= 1.6 writes it): older files load whole
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
        raise CheckpointError(
            f"{path} is not a robustvae checkpoint (no '{FORMAT}' marker); re-create it with robustvae train"
        )
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
        raise CheckpointError(
            f"{path} holds an invalid config ({e}); was it made by another robustvae version?"
        ) from None


# The model a checkpoint describes may hold derived tensors that the file does not store (non-persistent
# buffers: diffusion schedules, quantiser levels); they may add this much memory to the tensors present.
DERIVED_ALLOWANCE_BYTES = 16 << 20


class _TooBig(Exception):
    """Raised inside a meta-device build that already registers more than the file holds (stops it early)."""


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def meta_model(
    build: Callable[[], nn.Module], state: Mapping[str, Any] | None = None, where: str | os.PathLike = "checkpoint"
) -> nn.Module:
    """``build()`` on the ``meta`` device: every parameter and buffer has its shape, none has memory.

    With ``state`` (the tensors a file holds) the build is stopped as soon as it has
    registered far more tensors, or bytes, than ``state`` holds (a config that describes a
    giant model is refused in time proportional to the file, not to the config).
    """
    from torch.nn.modules import module as torch_module

    limit_count = limit_bytes = None
    if state is not None:
        limit_count = 2 * len(state) + 64  # weight norm and similar register a tensor more than once
        limit_bytes = (
            2 * sum(_nbytes(v) for v in state.values() if isinstance(v, torch.Tensor)) + DERIVED_ALLOWANCE_BYTES
        )
    seen = {"count": 0, "bytes": 0}

    def count(module, name, tensor):  # noqa: ANN001 - torch's hook signature
        if limit_count is None or tensor is None:
            return None
        seen["count"] += 1
        seen["bytes"] += _nbytes(tensor)
        if seen["count"] > limit_count or seen["bytes"] > limit_bytes:
            raise _TooBig(f"a {type(module).__name__}.{name} of shape {_shape(tensor.shape)}")
        return None

    hooks = [
        torch_module.register_module_parameter_registration_hook(count),
        torch_module.register_module_buffer_registration_hook(count),
    ]
    try:
        with torch.device("meta"):
            return build()
    except _TooBig as e:
        held = f"{len(state)} tensors ({_mib(sum(_nbytes(v) for v in state.values() if isinstance(v, torch.Tensor)))})"
        raise CheckpointError(
            f"{where} does not fit the architecture its config describes: the config makes a model far larger than "
            f"the {held} present (the build was stopped at {e}); the config does not belong to these weights"
        ) from None
    finally:
        for h in hooks:
            h.remove()


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def state_problem(meta: nn.Module, state: Mapping[str, Any]) -> str | None:
    """What keeps ``state`` from loading into the meta-device model ``meta`` (key, type, shape, size); else None.

    Compares every parameter and persistent buffer's shape with the tensor stored
    under its name, then the model's total size (derived buffers included) with the
    tensors present (:data:`DERIVED_ALLOWANCE_BYTES` allowed on top).
    """
    own = meta.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = (missing + unexpected)[0]
        what = "missing" if missing and first == missing[0] else "not part of the model"
        return f"{len(missing)} missing and {len(unexpected)} unexpected tensors (first: {first}, {what})"
    for k, t in own.items():
        v = state[k]
        if not isinstance(v, torch.Tensor):
            return f"entry {k} is a {type(v).__name__}, not a tensor"
        if tuple(v.shape) != tuple(t.shape):
            return (
                f"tensor {k} has shape {_shape(v.shape)} in the file, but the stored config makes it {_shape(t.shape)}"
            )
        if v.is_floating_point() != t.is_floating_point():
            return f"tensor {k} is {v.dtype} in the file, the model needs {t.dtype}"
    present = sum(_nbytes(v) for v in state.values())
    needed = sum(_nbytes(t) for t in meta.parameters()) + sum(_nbytes(b) for b in meta.buffers())
    if needed > sum(_nbytes(t) for t in own.values()) + DERIVED_ALLOWANCE_BYTES:
        name, big = max(((n, b) for n, b in meta.named_buffers() if n not in own), key=lambda nb: _nbytes(nb[1]))
        return (
            f"the stored config makes the model {_mib(needed)}, beyond the {_mib(present)} of tensors present "
            f"(derived buffer {name}: {_shape(big.shape)})"
        )
    return None


def _shape(shape) -> str:  # noqa: ANN001
    return "x".join(map(str, shape)) or "scalar"


def check_state(
    build: Callable[[], nn.Module], state: Mapping[str, Any], where: str | os.PathLike = "checkpoint"
) -> None:
    """Refuse ``state`` unless it fits the model ``build()`` makes, decided on the meta device (no memory spent).

    A one-line :class:`~robustvae.errors.CheckpointError` names the first tensor that is
    missing, unexpected or mis-shaped, or the size the config would need beyond the
    tensors present.
    """
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{where}: the weights are not a mapping of names to tensors; re-create the checkpoint")
    problem = state_problem(meta_model(build, state, where), state)
    if problem:
        raise CheckpointError(
            f"{where} does not fit the architecture its config describes: {problem}; it was made by a different "
            f"architecture or robustvae version, or its config was changed"
        )


def build_checked(
    build: Callable[[], nn.Module], state: Mapping[str, Any], where: str | os.PathLike = "checkpoint"
) -> nn.Module:
    """The model ``build()`` makes, with ``state`` loaded: shapes and sizes are checked before any memory is spent.

    The one loader of weights from files for every model family: ``build`` is a
    zero-argument function that constructs the family's module (it is called twice,
    first on the ``meta`` device, where the shapes and the total size are compared with
    ``state`` (:func:`check_state`), then for real), and ``state`` its state dict (the
    converted one, for an imported checkpoint). Derived buffers that the state dict does
    not hold are computed by ``build`` itself.
    """
    check_state(build, state, where)
    model = build()
    model.load_state_dict(dict(state))
    return model


def load_weights(model: nn.Module, state: dict[str, Any], path: str | os.PathLike = "checkpoint") -> None:
    """Load a state dict into an existing model, turning key and shape mismatches into one clear line."""
    problem = state_problem(model, state) if isinstance(state, Mapping) else "the weights are not a mapping"
    if problem:
        raise CheckpointError(
            f"{path} does not fit the architecture its config describes: {problem}; it was made by "
            f"a different architecture or robustvae version"
        )
    model.load_state_dict(state)


def model_from_checkpoint(
    ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint", weights: str = "auto"
) -> tuple[nn.Module, Config]:
    """Build the model a checkpoint describes and load its weights (EMA ones when present).

    ``weights`` is ``auto`` (EMA when the checkpoint has it), ``ema`` or ``raw``. The
    stored config is checked against the stored tensors on the meta device before the
    model takes any memory (:func:`build_checked`).
    """
    cfg = config_of(ckpt, path)
    if weights not in ("auto", "ema", "raw"):
        raise ConfigError(f"weights must be auto, ema or raw, got {weights!r}")
    if weights == "ema" and ckpt.get("ema") is None:
        raise CheckpointError(f"{path} has no EMA weights (train.ema_decay was 0); use weights='raw'")
    use_ema = weights == "ema" or (weights == "auto" and ckpt.get("ema") is not None)
    state = ckpt["ema"] if use_ema else ckpt.get("model")
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{path}: its {'ema' if use_ema else 'model'} weights are not a state dict; re-create the checkpoint"
        )
    model = build_checked(lambda: build_model(cfg.model), ema_weights(state) if use_ema else state, path)
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
    return {k[len("module.") :]: v for k, v in state.items() if k.startswith("module.")}


def resolve_path(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint file or a run directory -> a local checkpoint file."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.is_dir():
        for cand in ("best.pt", "last.pt"):
            if (p / cand).is_file():
                return p / cand
        raise CheckpointError(
            f"run directory {p} holds no best.pt or last.pt; train it first (robustvae train --out {p})"
        )
    if p.is_file():
        return p
    if s in PRESETS:
        fetch_hint = (
            f", or fetch the authors' weights: robustvae zoo fetch {s} --out runs/{s}" if s in PUBLISHED else ""
        )
        raise CheckpointError(
            f"{s!r} is a preset, not a trained checkpoint; train it with: robustvae train --preset {s} --out runs/{s}"
            f"{fetch_hint}"
        )
    raise CheckpointError(
        f"{s!r} is neither an existing checkpoint file or run directory nor a model factory "
        f"(module.path:factory); a published checkpoint (robustvae zoo list) is fetched into a run "
        f"directory first: robustvae zoo fetch NAME --out DIR"
    )


@dataclass(frozen=True)
class LoadedModel:
    """A model (:class:`~robustvae.models.contract.HierarchicalVAE`) with its config and where it came from.

    ``config`` is None for a model built in memory or by a user's factory (it then has no
    dataset of its own). ``sha256_of`` says what ``sha256`` hashes: ``file`` (the checkpoint
    file at ``path``), ``state_dict`` (a factory's model: its weights,
    :func:`robustvae.zoo.factory.state_dict_sha256`; ``path`` is the ``module.path:factory``)
    or ``none`` (a model in memory: ``path`` is ``"<in memory>"``, ``sha256`` empty).
    """

    model: nn.Module
    config: Config | None
    path: str
    sha256: str
    sha256_of: str = "file"

    @property
    def name(self) -> str:
        """The config's name (the preset it was trained from); a factory's model: its ``module.path:factory``; else
        the architecture."""
        if self.config is not None:
            return self.config.name
        return self.path if self.sha256_of == "state_dict" else self.model.arch

    @classmethod
    def in_memory(cls, model: nn.Module, config: Config | None = None) -> LoadedModel:
        """Wrap a model that was not loaded from a file."""
        return cls(model, config, "<in memory>", "", "none")


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", weights: str = "auto") -> LoadedModel:
    """A ready model in eval mode, with its config and provenance, from a checkpoint file, run directory
    or ``module.path:factory`` (a user's own model, :mod:`robustvae.zoo.factory`).

    ``weights``: ``auto`` (EMA weights when the checkpoint has them), ``ema`` or ``raw`` (a factory's model has
    the weights its factory gives it: ``auto`` or ``raw``).
    """
    from robustvae.zoo import factory

    if factory.is_factory(name_or_path):
        if weights == "ema":
            raise CheckpointError(
                f"{name_or_path} is a model factory, with no EMA weights; use weights='auto' or 'raw'"
            )
        model = factory.build(str(name_or_path), device)
        return LoadedModel(model, None, str(name_or_path), factory.state_dict_sha256(model), "state_dict")
    path = resolve_path(name_or_path)
    ckpt = read_checkpoint(path)
    model, cfg = model_from_checkpoint(ckpt, path, weights)
    return LoadedModel(model.to(device).eval(), cfg, str(path), sha256_file(path))


def list_entries() -> list[dict[str, str]]:
    """Rows for ``robustvae zoo list``: every preset and every published checkpoint."""
    from robustvae.registry import PRESET_NOTES

    rows = [
        {
            "name": n,
            "kind": "preset",
            "model": c.model.arch,
            "data": c.data.name,
            "layers": str(c.model.num_layers),
            "about": PRESET_NOTES.get(n, ""),
        }
        for n, c in PRESETS.items()
    ]
    for p in PUBLISHED.values():
        c = PRESETS[p.preset]
        rows.append(
            {
                "name": p.name,
                "kind": "published (zoo fetch)",
                "model": c.model.arch,
                "data": c.data.name,
                "layers": str(c.model.num_layers),
                "about": f"their test NLL {p.reported_nll} {p.unit}; {p.url}",
            }
        )
    return rows
