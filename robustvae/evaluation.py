"""Likelihood and posterior-collapse diagnostics of a trained model.

* ELBO with analytic per-layer KLs (one posterior sample per image);
* NLL by importance sampling with K samples: -log mean_k exp(log p(x, z_k) - log q(z_k | x)),
  a true upper bound on -log p(x) (not the analytic-KL estimate, which is not a bound);
* active units (Burda et al.): a latent unit is active when the variance over data
  points of its posterior mean exceeds 0.01; posterior means come from
  ``model.encode`` (higher layers at their posterior means).

A deterministic layer (``LayerInfo.deterministic``: DCT-VAE's context) cannot
collapse and active units do not apply to it: its row reports
``active_units: None`` and instead ``levels`` (2^b), ``levels_used`` (the mean over
its coefficients of the number of distinct quantisation levels taken on the images)
and ``varying_units`` (coefficients taking more than one level). Its ``kl_nats`` is
the diffusion prior's bound on -log p(context), also reported as ``context_nats``
beside ``gaussian_kl_nats``; ``active_units`` and ``total_units`` count Gaussian
layers only. Models without a context report exactly the keys they always did.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustvae.errors import RobustVAEError
from robustvae.models.distributions import level_index
from robustvae.progress import make_progress

ACTIVE_THRESHOLD = 0.01


@torch.no_grad()
def posterior_mean_variance(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    """Per layer, the variance over the images of ``x`` of each unit's posterior mean (flattened)."""
    sums: list[torch.Tensor] | None = None
    sq: list[torch.Tensor] = []
    for i in range(0, x.shape[0], batch_size):
        qs = model.encode(x[i : i + batch_size].to(device))
        means = [q.mean.flatten(1).double() for q in qs]
        if sums is None:
            sums = [m.sum(0) for m in means]
            sq = [(m**2).sum(0) for m in means]
        else:
            for j, m in enumerate(means):
                sums[j] += m.sum(0)
                sq[j] += (m**2).sum(0)
    n = x.shape[0]
    return [(s2 / n - (s / n) ** 2).clamp(min=0).float().cpu() for s, s2 in zip(sums or [], sq)]


def active_units(variances: list[torch.Tensor], threshold: float = ACTIVE_THRESHOLD) -> list[int]:
    return [int((v > threshold).sum()) for v in variances]


@torch.no_grad()
def context_levels_used(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Per unit of the quantised top layer (layer 1), how many distinct levels it takes over ``x``."""
    levels = model.layers[0].levels
    seen: torch.Tensor | None = None
    for i in range(0, x.shape[0], batch_size):
        y = model.encode(x[i : i + batch_size].to(device), 1)[0].mean.flatten(1)
        hit = torch.nn.functional.one_hot(level_index(y, levels), levels).amax(0).bool().cpu()
        seen = hit if seen is None else seen | hit
    assert seen is not None
    return seen.sum(1)


@torch.no_grad()
def layer_diagnostics(
    model: nn.Module, x: torch.Tensor, batch_size: int = 100, device: torch.device = torch.device("cpu"), seed: int = 0
) -> list[dict[str, Any]]:
    """Per layer (top first): shape, units, mean KL in nats (one seeded posterior sample) and active units.

    A context layer (DCT-VAE) has no active units (``None``); it reports how many of its
    quantiser levels each coefficient uses instead.
    """
    model = model.to(device).eval()
    kl = torch.zeros(model.num_layers, dtype=torch.float64)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i in range(0, x.shape[0], batch_size):
            kl += model.elbo(x[i : i + batch_size].to(device)).kl.double().sum(0).cpu()
    au = active_units(posterior_mean_variance(model, x, batch_size, device))
    n = x.shape[0]
    rows = []
    for j, info in enumerate(model.layers):
        row = {"layer": info.index, "resolution": info.resolution, "shape": list(info.shape), "units": info.dims,
               "kl_nats": float(kl[j] / n), "active_units": au[j]}
        if info.deterministic:
            used = context_levels_used(model, x, batch_size, device)
            row.update(kind=info.kind, active_units=None, levels=info.levels,
                       levels_used=float(used.double().mean()), varying_units=int((used > 1).sum()))
        rows.append(row)
    return rows


ESTIMATORS = {"iwae": "nll_iwae", "authors": "nll_authors"}  # estimator -> the model method that computes it
ESTIMATOR_CHOICES = ("iwae", "authors", "both")


def estimators_of(model: nn.Module, estimator: str) -> list[str]:
    """The estimators ``estimator`` names (``both``: iwae, then authors), checked against what the model offers.

    Every model offers ``iwae`` (the true bound); a family lists more in its ``estimators`` attribute.
    """
    if estimator not in ESTIMATOR_CHOICES:
        raise RobustVAEError(f"--estimator must be one of {', '.join(ESTIMATOR_CHOICES)}, got {estimator!r}")
    names = ["iwae", "authors"] if estimator == "both" else [estimator]
    offered = getattr(model, "estimators", ("iwae",))
    for name in names:
        if name not in offered:
            raise RobustVAEError(f"--estimator {name} is not offered by {model.arch} models (they offer "
                                 f"{', '.join(offered)}); use --estimator iwae")
    return names


@torch.no_grad()
def _likelihoods(model: nn.Module, x: torch.Tensor, names: list[str], iw_samples: int, batch_size: int,
                 device: torch.device, seed: int, quiet: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per image: -ELBO and each estimator's NLL, with seeded noise that leaves the global RNG untouched."""
    n = x.shape[0]
    # keep about 2,000 images per forward pass when importance sampling
    chunk = max(1, min(iw_samples, 2000 // max(batch_size, 1)))
    nelbo = torch.zeros(n, dtype=torch.float64)
    nll = {name: torch.zeros(n, dtype=torch.float64) for name in names}
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), make_progress(quiet) as progress:
        torch.manual_seed(seed)
        task = progress.add_task(f"eval (K={iw_samples})", total=n, info="")
        for i in range(0, n, batch_size):
            xb = x[i : i + batch_size].to(device)
            nelbo[i : i + len(xb)] = model.elbo(xb).nelbo.double().cpu()
            for name, out in nll.items():
                out[i : i + len(xb)] = getattr(model, ESTIMATORS[name])(xb, iw_samples, chunk).double().cpu()
            progress.update(task, advance=len(xb), info=f"NLL {nll[names[0]][: i + len(xb)].mean():.2f}")
    return nelbo, nll


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    x: torch.Tensor,
    *,
    iw_samples: int = 1000,
    batch_size: int = 100,
    device: torch.device = torch.device("cpu"),
    seed: int = 0,
    quiet: bool = False,
    estimator: str = "iwae",
) -> dict[str, Any]:
    """ELBO, NLL, per-layer KL and active units of ``model`` on images ``x`` in [0, 1] (see the module docstring).

    ``estimator``: ``iwae`` (the true bound, every model), a family's own (``authors``:
    Kuzina & Tomczak's estimate, not a bound) or ``both`` on the same images (``nll_nats``
    is then the bound, ``nll_authors_nats`` the other). A non-default estimator is
    recorded as ``estimator``; the default record is unchanged.
    """
    names = estimators_of(model, estimator)
    model = model.to(device).eval()
    n = x.shape[0]
    npix = model.num_pixels
    nelbo, nll = _likelihoods(model, x, names, iw_samples, batch_size, device, seed, quiet)
    layers = layer_diagnostics(model, x, batch_size, device, seed)
    to_bpd = 1.0 / (npix * math.log(2))
    extra: dict[str, float] = {}
    context = [row for row in layers if row["active_units"] is None]
    gaussian = [row for row in layers if row["active_units"] is not None]
    if context:
        extra["context_nats"] = float(sum(row["kl_nats"] for row in context))
        extra["gaussian_kl_nats"] = float(sum(row["kl_nats"] for row in gaussian))
    for name in names[1:]:
        extra.update({f"nll_{name}_nats": float(nll[name].mean()), f"nll_{name}_bpd": float(nll[name].mean() * to_bpd)})
    first = nll[names[0]]
    return {
        "images": n,
        "iw_samples": iw_samples,
        **({"estimator": estimator} if estimator != "iwae" else {}),
        "nelbo_nats": float(nelbo.mean()),
        "elbo_nats": float(-nelbo.mean()),
        "nll_nats": float(first.mean()),
        "nelbo_bpd": float(nelbo.mean() * to_bpd),
        "nll_bpd": float(first.mean() * to_bpd),
        "kl_nats": float(sum(row["kl_nats"] for row in layers)),
        **extra,
        "active_units": int(sum(row["active_units"] for row in gaussian)),
        "total_units": int(sum(row["units"] for row in gaussian)),
        "layers": layers,
    }
