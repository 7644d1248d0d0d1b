"""The models an experiment runs on: loaded once, labelled uniquely, each with the dataset it belongs to."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from robustvae.config import Config, DataConfig
from robustvae.errors import RobustVAEError
from robustvae.zoo import LoadedModel, load

ModelSpec = str | nn.Module | LoadedModel  # a zoo name, checkpoint file or run directory; or a model in memory


@dataclass(frozen=True)
class Labelled:
    """A loaded model under the label that names it in records (unique within one experiment)."""

    label: str
    loaded: LoadedModel
    data: DataConfig | None  # where its points come from (None: the experiment needs no dataset)

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


def _load(spec: ModelSpec, device: torch.device) -> LoadedModel:
    if isinstance(spec, LoadedModel):
        return dataclasses.replace(spec, model=spec.model.to(device).eval())
    if isinstance(spec, nn.Module):
        return LoadedModel.in_memory(spec.to(device).eval())
    return load(spec, device=device)


def load_models(specs: list[ModelSpec], device: torch.device, data: str | DataConfig | None = None,
                need_data: bool = True) -> list[Labelled]:
    """Zoo names, checkpoint files, run directories or models in memory -> labelled models on ``device``.

    Labels are the config names (the architecture for a model without one), with
    ``#2``, ``#3``, ... for repeats. ``data`` overrides every model's dataset; a model
    in memory without a config has none of its own, so with ``need_data`` it needs
    ``data`` (a clear error otherwise).
    """
    if not specs:
        raise RobustVAEError("no model given: name a zoo checkpoint, a checkpoint file or a run directory")
    override = DataConfig(data) if isinstance(data, str) else data
    out: list[Labelled] = []
    seen: dict[str, int] = {}
    for spec in specs:
        lm = _load(spec, device)
        dcfg = override or (lm.config.data if lm.config is not None else None)
        if dcfg is None and need_data:
            raise RobustVAEError(
                "a model given in memory carries no dataset; pass data='mnist-offline' (or another dataset name), "
                "or load it with robustvae.load(checkpoint)"
            )
        seen[lm.name] = seen.get(lm.name, 0) + 1
        label = lm.name if seen[lm.name] == 1 else f"{lm.name}#{seen[lm.name]}"
        out.append(Labelled(label, lm, dcfg))
    return out
