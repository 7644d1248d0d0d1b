"""The models an experiment runs on: loaded once, labelled uniquely, each with the images it runs on.

Those images are a dataset (the model's own, or ``data`` instead) or a user's own image
set (``images``: :class:`~robustvae.data.images.ImageSet`, checked against each model's
image shape). A model with no config (built in memory or by a ``module.path:factory``)
has no dataset of its own and needs one of the two.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from robustvae.config import Config, DataConfig
from robustvae.data import check_compatible
from robustvae.data.images import ImageSet, load_image_set, one_source
from robustvae.errors import RobustVAEError
from robustvae.zoo import LoadedModel, load

ModelSpec = str | nn.Module | LoadedModel  # a checkpoint file, run directory or module:factory; or a model
ImageSource = str | os.PathLike | np.ndarray | torch.Tensor | ImageSet  # a user's own images (robustvae.data.images)


@dataclass(frozen=True)
class Labelled:
    """A loaded model under the label that names it in records (unique within one experiment)."""

    label: str
    loaded: LoadedModel
    data: DataConfig | None  # where its points come from (None: a user's image set, or no images needed)
    images: ImageSet | None = None  # a user's own images instead of a dataset

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def config(self) -> Config | None:
        return self.loaded.config

    @property
    def path(self) -> str:
        return self.loaded.path

    @property
    def sha256(self) -> str:
        return self.loaded.sha256

    @property
    def source(self) -> str:
        """What records name where the points come from: the dataset, or ``images:<name>`` for a user's images."""
        return self.images.name if self.images is not None else self.data.name if self.data is not None else ""

    def source_info(self) -> dict[str, Any]:
        """What run.json says about the model's images: the dataset's name, or the image set's path, count and hash."""
        if self.images is not None:
            return {"image_set": self.images.info()}
        return {"data": self.data.name} if self.data is not None else {}


def _load(spec: ModelSpec, device: torch.device) -> LoadedModel:
    from robustvae.models.check import check_contract

    if isinstance(spec, LoadedModel):
        return dataclasses.replace(spec, model=spec.model.to(device).eval())
    if isinstance(spec, nn.Module):
        return LoadedModel.in_memory(check_contract(spec.to(device).eval(), "the model given"))
    return load(spec, device=device)


def source_settings(models: list[Labelled]) -> dict[str, Any]:
    """What a resumed run must match besides its models and settings: a user's image sets (by the hash of their
    pixels) and datasets given instead of a model's own; empty when every model runs on its own dataset."""
    out: dict[str, Any] = {}
    images = {m.label: m.images.sha256 for m in models if m.images is not None}
    data = {
        m.label: m.data.name
        for m in models
        if m.data is not None and (m.config is None or m.data.name != m.config.data.name)
    }
    if images:
        out["images"] = images
    if data:
        out["data"] = data
    return out


def load_models(
    specs: list[ModelSpec],
    device: torch.device,
    data: str | DataConfig | None = None,
    need_data: bool = True,
    images: ImageSource | None = None,
) -> list[Labelled]:
    """Checkpoint files, run directories, ``module.path:factory`` names or models in memory -> labelled
    models on ``device``.

    Labels are the config names (the architecture for a model without one), with
    ``#2``, ``#3``, ... for repeats. ``data`` overrides every model's dataset (checked
    against its image shape); ``images`` replaces it by a user's own images (a folder,
    an array file or an array: :func:`robustvae.data.images.load_image_set`). A model
    without a config has no dataset of its own, so with ``need_data`` it needs one of
    the two (a clear error otherwise).
    """
    if not specs:
        raise RobustVAEError(
            "no model given: name a zoo checkpoint, a checkpoint file, a run directory or a module.path:factory"
        )
    one_source(data, images)
    override = DataConfig(data) if isinstance(data, str) else data
    out: list[Labelled] = []
    seen: dict[str, int] = {}
    sets: dict[tuple[int, int], ImageSet] = {}  # one image set per image shape (usually one)
    for spec in specs:
        lm = _load(spec, device)
        c, s = lm.model.cfg.image_channels, lm.model.cfg.image_size
        if override is not None:
            check_compatible(override, c, s)
        dcfg = override or (lm.config.data if lm.config is not None else None)
        iset = None
        if images is not None:
            iset = sets[(c, s)] = sets.get((c, s)) or load_image_set(images, c, s)
            dcfg = None
        elif dcfg is None and need_data:
            raise RobustVAEError(
                f"{lm.path} has no dataset of its own (a model factory, or a model in memory): pass --data NAME "
                f"(e.g. mnist-offline; data= in Python) or --images PATH (images=)"
            )
        seen[lm.name] = seen.get(lm.name, 0) + 1
        label = lm.name if seen[lm.name] == 1 else f"{lm.name}#{seen[lm.name]}"
        out.append(Labelled(label, lm, dcfg, iset))
    return out
