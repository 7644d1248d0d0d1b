"""The authors' state dicts -> :class:`~robustvae.models.kuzina.KuzinaLadderVAE` state dicts, strictly.

Every key of theirs is used, or known (SPEC section 7 and keys.txt):

* shared: ``decoder.decoder_blocks.0.ctx_prior.model.*`` are the same tensors as
  ``decoder.z_L_prior.model.*`` (checked equal, loaded once);
* unused: ``s_to_p`` / ``s_to_q`` gates and skips (their blocks without residual),
  ``decoder.y_block.*``, ``dct_mean``, ``dct_std``;
* constants: the DCT bases ``dct.{basis,reverse}_function_{w,h}`` (checked against
  cos(pi k (n + 1/2) / N), then dropped: robustvae computes the transform itself).

Renamed: ``z_L_prior.model.`` -> ``z_L_prior.net.``, ``dct_scale`` -> ``codec.scale``,
and legacy weight norm's ``weight_g`` / ``weight_v`` -> ``parametrizations.weight.original0/1``.
Anything else, a missing key or a wrong shape is a :class:`~robustvae.errors.CheckpointError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from robustvae.errors import CheckpointError

SHARED = ("decoder.decoder_blocks.0.ctx_prior.model.", "decoder.z_L_prior.model.")
RENAMES = (
    ("decoder.z_L_prior.model.", "decoder.z_L_prior.net."),
    ("decoder.decoder_blocks.0.dct_scale", "decoder.decoder_blocks.0.codec.scale"),
)
WEIGHT_NORM = ((".weight_g", ".parametrizations.weight.original0"), (".weight_v", ".parametrizations.weight.original1"))
UNUSED = re.compile(
    r"decoder\.decoder_blocks\.\d+\.s_to_[pq]\.(beta|skip\.(weight|bias))"
    r"|decoder\.y_block\.\d+\.(weight|bias)"
    r"|decoder\.decoder_blocks\.0\.dct_(mean|std)"
)
BASIS = re.compile(r"decoder\.decoder_blocks\.0\.dct\.(basis|reverse)_function_([wh])")


def _basis(key: str, n: int) -> Tensor:
    """The constant their DCT module stores under ``key`` for images of side n."""
    k = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * k[:, None] * (k[None, :] + 0.5) / n)  # [k, n]
    return m if "basis" in key else m.T[:, 1:]  # reverse: [n, k - 1]


def classify(key: str) -> str:
    """``used``, ``shared``, ``unused`` or ``constant``: what becomes of one of their keys."""
    if key.startswith(SHARED[0]):
        return "shared"
    if UNUSED.fullmatch(key):
        return "unused"
    if BASIS.fullmatch(key):
        return "constant"
    return "used"


def rename(key: str) -> str:
    """Their name of a used tensor -> robustvae's."""
    for old, new in RENAMES:
        if key.startswith(old):
            key = new + key[len(old) :]
    for old, new in WEIGHT_NORM:
        if key.endswith(old):
            key = key[: -len(old)] + new
    return key


def their_name(key: str) -> str:
    """robustvae's name of a tensor -> the authors' (for messages about what their file lacks)."""
    for old, new in WEIGHT_NORM:
        if key.endswith(new):
            key = key[: -len(new)] + old
    for old, new in RENAMES:
        if key.startswith(new):
            key = old + key[len(new) :]
    return key


def _check_known(theirs: Mapping[str, Tensor], image_size: int, where: str) -> None:
    """Shared copies must be equal and the DCT bases the cosines they stand for."""
    for key, value in theirs.items():
        kind = classify(key)
        if kind == "shared":
            twin = SHARED[1] + key[len(SHARED[0]) :]
            if twin in theirs and not torch.equal(theirs[twin].cpu(), value.cpu()):
                raise CheckpointError(
                    f"{where}: {key} should be the same tensor as {twin} but differs; the file is "
                    f"not a checkpoint of the authors' code"
                )
        elif kind == "constant":
            ref = _basis(key, image_size)
            if tuple(value.shape) != tuple(ref.shape) or not torch.allclose(value.double().cpu(), ref, atol=1e-5):
                raise CheckpointError(
                    f"{where}: {key} is not the DCT basis of {image_size}x{image_size} images; pick "
                    f"the preset of the dataset the checkpoint was trained on"
                )


def convert_state_dict(theirs: Mapping[str, Tensor], model: nn.Module, where: str = "checkpoint") -> dict[str, Tensor]:
    """Their ``model_state_dict`` as ``model``'s state dict; one line naming the first problem otherwise."""
    if not isinstance(theirs, Mapping) or not all(isinstance(v, Tensor) for v in theirs.values()):
        raise CheckpointError(
            f"{where}: the state dict is not a mapping of names to tensors; the file is not a "
            f"checkpoint of the authors' code"
        )
    _check_known(theirs, model.cfg.image_size, where)
    own = model.state_dict()
    out = {rename(k): v for k, v in theirs.items() if classify(k) == "used"}
    missing = [k for k in own if k not in out]
    unknown = [k for k in out if k not in own]
    wrong = [k for k in own if k in out and tuple(out[k].shape) != tuple(own[k].shape)]
    if missing or unknown or wrong:
        first = their_name((missing + unknown + wrong)[0])
        raise CheckpointError(
            f"{where} does not fit preset architecture {model.arch} ({len(missing)} missing, {len(unknown)} unknown, "
            f"{len(wrong)} mis-shaped tensors; first: {first}); pick the preset of the checkpoint's dataset"
        )
    return {k: out[k].detach().to(device="cpu", dtype=own[k].dtype).contiguous() for k in own}
