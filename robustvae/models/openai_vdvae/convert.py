"""openai/vdvae's state dicts -> :class:`~robustvae.models.openai_vdvae.OpenAIVDVAE` state dicts, strictly.

Upstream saves ``vae.state_dict()`` (``*-model.th``) and the EMA copy's (``*-model-ema.th``),
with every key prefixed ``module.`` when the model was wrapped for data-parallel training.
Every key is renamed one to one (:func:`rename`), nothing is dropped:

* ``encoder.in_conv.*``, ``encoder.enc_blocks.*`` -> ``in_conv.*``, ``enc_blocks.*``
* ``decoder.dec_blocks.{i}.enc.*`` (the posterior net) -> ``dec_blocks.{i}.posterior.*``;
  ``prior``, ``z_proj``, ``resnet`` keep their names under ``dec_blocks.{i}``
* ``decoder.bias_xs.{j}`` -> ``bias.{r}``, r the j-th smallest resolution that has one
* ``decoder.gain``, ``decoder.bias`` -> ``gain``, ``shift``; ``decoder.out_net.out_conv.*`` -> ``out_conv.*``

:func:`check_state_dict` compares names and shapes with the model built on the meta device
(no memory is allocated for it), so a wrong file fails before any weight is materialised.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from robustvae.config import ModelConfig
from robustvae.errors import CheckpointError

PREFIX = "module."
_BIAS = re.compile(r"decoder\.bias_xs\.(\d+)")
_RENAMES = (  # (theirs, ours) prefixes, tried in order
    ("encoder.", ""),
    ("decoder.out_net.", ""),
    ("decoder.gain", "gain"),
    ("decoder.bias", "shift"),
    ("decoder.", ""),
)
_POSTERIOR = re.compile(r"(dec_blocks\.\d+\.)enc\.")


def bias_resolutions(cfg: ModelConfig) -> list[int]:
    """Resolutions with a learnt decoder start, in upstream's ``bias_xs`` order (ascending)."""
    top = cfg.bias_max_res
    return sorted(r for r in {r for r, _ in cfg.latents} if top is None or r <= top)


def rename(key: str, cfg: ModelConfig) -> str | None:
    """Upstream's name of a tensor -> robustvae's (None: not a name upstream's model has)."""
    m = _BIAS.fullmatch(key)
    if m:
        res = bias_resolutions(cfg)
        j = int(m.group(1))
        return f"bias.{res[j]}" if j < len(res) else None
    if key.startswith("decoder.bias_xs"):
        return None
    for theirs, ours in _RENAMES:
        if key == theirs or (theirs.endswith(".") and key.startswith(theirs)):
            key = ours + key[len(theirs) :]
            break
    else:
        return None
    return _POSTERIOR.sub(r"\1posterior.", key)


def their_name(key: str, cfg: ModelConfig) -> str:
    """robustvae's name of a tensor -> upstream's (for messages about what a file lacks)."""
    if key.startswith("bias."):
        return f"decoder.bias_xs.{bias_resolutions(cfg).index(int(key[5:]))}"
    if key in ("gain", "shift"):
        return {"gain": "decoder.gain", "shift": "decoder.bias"}[key]
    if key.startswith("out_conv."):
        return "decoder.out_net." + key
    if key.startswith(("in_conv.", "enc_blocks.")):
        return "encoder." + key
    return "decoder." + re.sub(r"(dec_blocks\.\d+\.)posterior\.", r"\1enc.", key)


def strip_prefix(state: Mapping[str, object], where: str) -> dict[str, object]:
    """Upstream's keys without the data-parallel ``module.`` prefix (on every key or on none)."""
    prefixed = [k for k in state if str(k).startswith(PREFIX)]
    if prefixed and len(prefixed) != len(state):
        first = next(k for k in state if not str(k).startswith(PREFIX))
        raise CheckpointError(
            f"{where}: some keys start with '{PREFIX}' and some do not (first without: {first}); "
            f"the file is not a state dict saved by openai/vdvae"
        )
    return {str(k)[len(PREFIX) :]: v for k, v in state.items()} if prefixed else dict(state)


def check_state_dict(theirs: Mapping[str, object], cfg: ModelConfig, where: str = "checkpoint") -> dict[str, Tensor]:
    """Their state dict (``module.`` stripped) renamed to ours, after checking every name and shape against the
    model ``cfg`` describes, built on the meta device; one line naming the first problem otherwise."""
    from robustvae.registry import build_model

    if not isinstance(theirs, Mapping) or not theirs:
        raise CheckpointError(
            f"{where} holds no state dict (found {type(theirs).__name__}); it is not a model file of "
            f"openai/vdvae (*-model.th or *-model-ema.th)"
        )
    theirs = strip_prefix(theirs, where)
    bad = next((k for k, v in theirs.items() if not isinstance(v, Tensor) or not v.is_floating_point()), None)
    if bad is not None:
        raise CheckpointError(
            f"{where}: {bad} is not a floating-point tensor; the file is not a model state dict of "
            f"openai/vdvae (an optimizer state, *-opt.th, perhaps)"
        )
    with torch.device("meta"):
        own = build_model(cfg).state_dict()
    ours = {}
    for key, value in theirs.items():
        name = rename(key, cfg)
        if name is None or name not in own:
            raise CheckpointError(
                f"{where}: unexpected key {key} (this --hps has {len(own)} tensors and no such "
                f"name); the file was made with other hyperparameters: pick its --hps"
            )
        ours[name] = value
    missing = [k for k in own if k not in ours]
    if missing:
        raise CheckpointError(
            f"{where}: missing key {their_name(missing[0], cfg)} ({len(missing)} of {len(own)} "
            f"missing); the file is incomplete or made with other hyperparameters: pick its --hps"
        )
    for k, v in own.items():
        if tuple(ours[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{where}: {their_name(k, cfg)} has shape {tuple(ours[k].shape)}, this --hps needs "
                f"{tuple(v.shape)}; the file was made with other hyperparameters: pick its --hps"
            )
    return ours


def load_upstream(theirs: Mapping[str, object], cfg: ModelConfig, where: str = "checkpoint") -> nn.Module:
    """The model ``cfg`` describes with their weights (float32), checked strictly before it is allocated."""
    from robustvae.registry import build_model

    ours = check_state_dict(theirs, cfg, where)
    model = build_model(cfg)
    model.load_state_dict({k: v.to(dtype=torch.float32) for k, v in ours.items()}, strict=True)
    return model
