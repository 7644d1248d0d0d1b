"""Does a model satisfy the contract (:class:`robustvae.models.contract.HierarchicalVAE`)? Exactly what is missing.

:func:`contract_problems` lists every problem of a model that robustvae did not build (a
user's own model, named ``module.path:factory``): missing attributes and methods, layer
descriptions that are not :class:`~robustvae.models.contract.LayerInfo` s, and, when
those are in place, a cheap behavioural probe on one dummy image of the model's shape
(in eval mode, without gradients except where it checks them): the shapes that
``encode``, ``reconstruct``, ``elbo``, ``log_importance_weights`` and ``sample`` return,
finite values, reconstructions in [0, 1], results fixed by the noise passed in, and
posteriors differentiable in the image. :func:`check_contract` raises all of them as
one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from robustvae.errors import RobustVAEError
from robustvae.models.contract import LayerInfo

METHODS = (
    "encode",
    "reconstruct",
    "elbo",
    "log_importance_weights",
    "iw_noise",
    "nll_iwae",
    "make_noise",
    "sample",
    "fit_data",
    "use_channels_last",
)
CFG_FIELDS = {"image_channels": int, "image_size": int, "likelihood": str, "binary": bool}
DOCS = "docs/own-model.md"


class ContractError(RobustVAEError):
    """A model does not offer what robustvae's consumers call."""


def check_contract(model: Any, name: str = "the model") -> Any:
    """Return ``model`` if it satisfies the contract, else raise :class:`ContractError` naming every problem."""
    problems = contract_problems(model)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ContractError(
            f"{name} does not satisfy robustvae's model contract "
            f"(robustvae.models.contract.HierarchicalVAE): {shown}; see {DOCS}"
        )
    return model


def contract_problems(model: Any) -> list[str]:
    """Every problem found, in the order a reader would fix them; empty when the model satisfies the contract."""
    problems = _structure(model)
    if problems:
        return problems  # the probe needs the structure in place
    was_training = model.training
    model.eval()
    try:
        return _probe(model)
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- structure


def _structure(model: Any) -> list[str]:
    if not isinstance(model, nn.Module):
        return [f"it is a {type(model).__name__}, not a torch.nn.Module"]
    out = []
    if not isinstance(getattr(model, "arch", None), str) or not model.arch:
        out.append("attribute 'arch' (a name for the architecture, a str) is missing")
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        out.append("attribute 'cfg' is missing (it needs image_channels, image_size, likelihood and binary)")
    else:
        for field, kind in CFG_FIELDS.items():
            value = getattr(cfg, field, None)
            if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 1)):
                out.append(
                    f"cfg.{field} is {'missing' if value is None else repr(value)} (a {kind.__name__}"
                    f"{' >= 1' if kind is int else ''} is needed)"
                )
    out += _layer_problems(getattr(model, "layers", None))
    shared = getattr(model, "iw_shared_noise", None)
    if not isinstance(shared, int) or isinstance(shared, bool) or shared < 0:
        out.append(
            "attribute 'iw_shared_noise' (how many leading iw_noise tensors are per image, an int >= 0) is missing"
        )
    out += [f"method '{m}' is missing" for m in METHODS if not callable(getattr(model, m, None))]
    if next(model.parameters(), None) is None:
        out.append("it has no parameters (robustvae finds a model's device from its first parameter)")
    if not any(p.startswith(("attribute 'cfg'", "cfg.", "attribute 'layers'", "layers")) for p in out):
        out += _sizes(model)  # they follow from cfg and layers
    return out


def _layer_problems(layers: Any) -> list[str]:
    if not isinstance(layers, list) or not layers:
        return ["attribute 'layers' (a list of robustvae.models.LayerInfo, top layer first) is missing or empty"]
    bad = [i for i, info in enumerate(layers, 1) if not isinstance(info, LayerInfo)]
    if bad:
        return [f"layers[{bad[0] - 1}] is a {type(layers[bad[0] - 1]).__name__}, not a robustvae.models.LayerInfo"]
    wrong = [f"{info.index} at position {i}" for i, info in enumerate(layers, 1) if info.index != i]
    return [f"layers must be numbered 1..L top first (index {wrong[0]})"] if wrong else []


def _sizes(model: nn.Module) -> list[str]:
    out = []
    c, s = model.cfg.image_channels, model.cfg.image_size
    for prop, want in (("num_layers", len(model.layers)), ("num_pixels", c * s * s)):
        try:
            got = getattr(model, prop)
        except Exception as e:  # noqa: BLE001 - a broken property is one of the problems listed
            got = f"an error ({_what(e)})"
        if got != want:
            out.append(f"{prop} is {got!r}, expected {want}")
    return out


# --------------------------------------------------------------------------- probe


def _what(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"


def _call(problems: list[str], what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, or None with the exception recorded as a problem."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any failure of the user's code is one of the problems listed
        problems.append(f"{what} raised {_what(e)}")
        return None


def _shape(problems: list[str], what: str, t: Any, shape: tuple[int, ...], unit: bool = False) -> bool:
    """Whether ``t`` is a finite tensor of ``shape`` (and in [0, 1] with ``unit``); else a problem is recorded."""
    if not isinstance(t, Tensor):
        problems.append(f"{what} returned a {type(t).__name__}, not a tensor")
    elif tuple(t.shape) != shape:
        problems.append(f"{what} has shape {tuple(t.shape)}, expected {shape}")
    elif not torch.isfinite(t).all():
        problems.append(f"{what} is not finite")
    elif unit and (t.min() < 0 or t.max() > 1):
        problems.append(
            f"{what} leaves [0, 1] (from {float(t.min()):.3g} to {float(t.max()):.3g}): it must be the "
            f"decoder's mean image"
        )
    else:
        return True
    return False


def _probe(model: nn.Module) -> list[str]:
    c, s = model.cfg.image_channels, model.cfg.image_size
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, c, s, s, generator=g)
    x = (x.round() if model.cfg.binary else x).to(dev)
    problems: list[str] = []
    with torch.no_grad():
        _probe_encode(model, x, problems)
        _probe_reconstruct(model, x, problems)
        _probe_likelihood(model, x, problems)
    _probe_gradient(model, x, problems)
    return problems


def _probe_encode(model: nn.Module, x: Tensor, problems: list[str]) -> None:
    qs = _call(problems, "encode(x)", lambda: model.encode(x))
    if qs is None:
        return
    if not isinstance(qs, (list, tuple)) or len(qs) != len(model.layers):
        problems.append(
            f"encode(x) returned {len(qs) if isinstance(qs, (list, tuple)) else type(qs).__name__} "
            f"posteriors, expected a list of {len(model.layers)} (one per layer, top first)"
        )
        return
    for i, (q, info) in enumerate(zip(qs, model.layers)):
        need = ("mean", "compare", "detach") + (("pre_quant",) if info.deterministic else ("logvar",))
        missing = [a for a in need if not hasattr(q, a)]
        if missing:
            problems.append(f"encode(x)[{i}] ({info.kind} layer) lacks {', '.join(missing)}")
            continue
        for a in need:
            if a in ("mean", "logvar", "pre_quant"):
                _shape(problems, f"encode(x)[{i}].{a}", getattr(q, a), (1, *info.shape))
    top = _call(problems, "encode(x, k=1)", lambda: model.encode(x, 1))
    if top is not None and len(top) != 1:
        problems.append(f"encode(x, k=1) returned {len(top)} posteriors, expected 1 (the top layer's)")


def _probe_reconstruct(model: nn.Module, x: Tensor, problems: list[str]) -> None:
    noise = _call(problems, "make_noise(1)", lambda: model.make_noise(1, torch.Generator().manual_seed(1)))
    if noise is None:
        return
    L = len(model.layers)
    for k in sorted({0, 1, L}):
        what = f"reconstruct(x, k={k}, temperature=0.1, noise=make_noise(1))"
        r = _call(problems, what, lambda k=k: model.reconstruct(x, k, 0.1, noise))
        if r is None or not _shape(problems, what, r, tuple(x.shape), unit=True):
            continue
        again = _call(problems, what, lambda k=k: model.reconstruct(x, k, 0.1, noise))
        if isinstance(again, Tensor) and again.shape == r.shape and not torch.allclose(r, again, atol=1e-5):
            problems.append(
                f"{what} differs between two calls with the same noise (attacks compare reconstructions "
                f"under shared noise: draw every random number from the noise passed in)"
            )
    smp = _call(problems, "sample(1, noise=make_noise(1))", lambda: model.sample(1, 1.0, noise))
    if smp is not None:
        _shape(problems, "sample(1, noise=make_noise(1))", smp, tuple(x.shape), unit=True)


def _probe_likelihood(model: nn.Module, x: Tensor, problems: list[str]) -> None:
    L = len(model.layers)
    res = _call(problems, "elbo(x)", lambda: model.elbo(x))
    if res is not None:
        for field, shape in (("kl", (1, L)), ("recon", (1,)), ("nelbo", (1,)), ("bpd", (1,))):
            if not hasattr(res, field):
                problems.append(f"elbo(x) lacks .{field} (return a robustvae.models.ELBOResult)")
            else:
                _shape(problems, f"elbo(x).{field}", getattr(res, field), shape)
    dev = x.device
    noise = _call(problems, "iw_noise(2)", lambda: model.iw_noise(2, torch.Generator().manual_seed(2)))
    if noise is not None:
        stacked = [t.unsqueeze(1).to(dev) for t in noise]  # one image: images on dim 1, as evaluation stacks them
        what = "log_importance_weights(x, 2, noise=iw_noise(2))"
        w = _call(problems, what, lambda: model.log_importance_weights(x, 2, noise=stacked))
        if w is not None and _shape(problems, what, w, (2, 1)):
            again = _call(problems, what, lambda: model.log_importance_weights(x, 2, noise=stacked))
            if isinstance(again, Tensor) and not torch.allclose(w, again, rtol=1e-4, atol=1e-3):
                problems.append(f"{what} differs between two calls with the same noise")
    nll = _call(problems, "nll_iwae(x, 2)", lambda: model.nll_iwae(x, 2))
    if nll is not None:
        _shape(problems, "nll_iwae(x, 2)", nll, (1,))


def _probe_gradient(model: nn.Module, x: Tensor, problems: list[str]) -> None:
    """The top posterior must carry gradients to the image: every gradient attack starts there."""
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        qs = _call(problems, "encode(x, k=1) with gradients", lambda: model.encode(xg, 1))
    if not qs or not isinstance(qs, (list, tuple)):
        return
    value = getattr(qs[0], "pre_quant" if model.layers[0].deterministic else "mean", None)
    if isinstance(value, Tensor) and not value.requires_grad:
        problems.append(
            "encode(x, k=1)[0] does not depend differentiably on x (attacks follow its gradient; do not "
            "detach or run it under no_grad)"
        )
