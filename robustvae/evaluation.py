"""Likelihood and posterior-collapse diagnostics of a trained model.

* ELBO with analytic per-layer KLs (one posterior sample per image);
* NLL by importance sampling with K samples: -log mean_k exp(log p(x, z_k) - log q(z_k | x)),
  a true upper bound on -log p(x) (not the analytic-KL estimate, which is not a bound).
  Images and samples are batched
  together in passes sized to a memory budget (``max_batch_mib``, measured per pass
  row by :func:`bytes_per_row`); the noise of image i comes from its own generator,
  seeded by (seed, i), so the NLL does not depend on the budget or the batch size;
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
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode  # bytes_per_row: the tensors a pass holds
from torch.utils._pytree import tree_leaves

from robustvae.errors import Interrupted, RobustVAEError, require_positive
from robustvae.models.distributions import level_index
from robustvae.progress import Progress, clock, make_progress

ACTIVE_THRESHOLD = 0.01
# on CPU, passes above ~64 MiB (about 120 importance samples of vdvae-mnist) were slower (python -m benchmarks.eval)
DEFAULT_MAX_BATCH_MIB = {"cpu": 64, "cuda": 2048}
ETA_NOTE_S = 10.0  # a run expected to take longer prints its ETA after the first pass


@torch.no_grad()
def posterior_mean_variance(
    model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device
) -> list[torch.Tensor]:
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
        row = {
            "layer": info.index,
            "resolution": info.resolution,
            "shape": list(info.shape),
            "units": info.dims,
            "kl_nats": float(kl[j] / n),
            "active_units": au[j],
        }
        if info.deterministic:
            used = context_levels_used(model, x, batch_size, device)
            row.update(
                kind=info.kind,
                active_units=None,
                levels=info.levels,
                levels_used=float(used.double().mean()),
                varying_units=int((used > 1).sum()),
            )
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- importance-sampled NLL


class _LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by tensors that ops create while it is active (any device)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, tensors alive]
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ARG002
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage().data_ptr()
                entry = self.live.setdefault(key, [t.untyped_storage().nbytes(), 0])
                if entry[1] == 0:
                    self.now += entry[0]
                    self.peak = max(self.peak, self.now)
                entry[1] += 1
                weakref.finalize(t, self._free, key)
        return out


@torch.no_grad()
def bytes_per_row(model: nn.Module, x1: torch.Tensor) -> int:
    """Memory one more importance sample of one image adds to a pass (measured on ``x1``, one image)."""
    peaks = []
    for k in (2, 4):
        noise = [t.unsqueeze(1).to(x1.device) for t in model.iw_noise(k, torch.Generator().manual_seed(0))]
        with torch.inference_mode(), _LiveBytes() as live:
            model.log_importance_weights(x1, k, noise=noise)
        peaks.append(live.peak)
    return max((peaks[1] - peaks[0]) // 2, 1)


@dataclass(frozen=True)
class Chunk:
    """One pass: importance samples ``samples`` of the images ``images`` (positions in x)."""

    images: range
    samples: range

    @property
    def rows(self) -> int:
        return len(self.images) * len(self.samples)


def plan_chunks(n: int, k: int, rows: int) -> list[Chunk]:
    """Passes of at most ``rows`` rows (image x sample), as even as possible: whole images when K fits."""
    if rows >= k:
        groups = math.ceil(n / (rows // k))
        per = math.ceil(n / groups)
        return [Chunk(range(a, min(a + per, n)), range(k)) for a in range(0, n, per)]
    size = math.ceil(k / math.ceil(k / rows))
    return [Chunk(range(i, i + 1), range(a, min(a + size, k))) for i in range(n) for a in range(0, k, size)]


def image_generator(seed: int, index: int) -> torch.Generator:
    """The generator of image ``index``'s importance samples: seeded by (seed, index) alone."""
    state = np.random.SeedSequence([seed % 2**64, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class _Noise:
    """Each image's importance-sampling noise, drawn once from its own generator and kept while a pass needs it."""

    def __init__(self, model: nn.Module, k: int, seed: int, device: torch.device):
        self.model, self.k, self.seed, self.device = model, k, seed, device
        self.per_image = model.iw_shared_noise  # leading iw_noise tensors shared by an image's samples
        self.cache: dict[int, list[torch.Tensor]] = {}

    def __call__(self, chunk: Chunk) -> list[torch.Tensor]:
        self.cache = {
            i: self.cache.get(i) or self.model.iw_noise(self.k, image_generator(self.seed, i)) for i in chunk.images
        }
        parts = zip(*(self.cache[i] for i in chunk.images))
        s = slice(chunk.samples.start, chunk.samples.stop)
        return [
            torch.stack(p, 1)[s if j >= self.per_image else slice(None)].to(self.device) for j, p in enumerate(parts)
        ]


def _passes(
    model: nn.Module, x: torch.Tensor, chunks: list[Chunk], noise: _Noise
) -> Iterator[tuple[Chunk, torch.Tensor]]:
    """(chunk, log weights (samples, images)) per pass."""
    for c in chunks:
        xb = x[c.images.start : c.images.stop].to(noise.device)
        with torch.inference_mode():
            w = model.log_importance_weights(xb, len(c.samples), noise=noise(c)).double().cpu()
        yield c, w


def iwae_nll(
    model: nn.Module,
    x: torch.Tensor,
    k: int,
    *,
    device: torch.device,
    seed: int,
    max_batch_mib: int,
    progress: Progress,
    label: str = "eval",
) -> torch.Tensor:
    """Per-image importance-sampled NLL in nats, in passes sized to ``max_batch_mib``; Ctrl-C raises Interrupted."""
    n = x.shape[0]
    rows = max(1, int(max_batch_mib * 2**20 / (1.1 * bytes_per_row(model, x[:1].to(device)))))
    chunks = plan_chunks(n, k, rows)
    total = n * k
    logw = torch.full((k, n), float("nan"), dtype=torch.float64)
    progress.note(
        f"{label}: {total:,} importance samples (K={k} x {n} images) in {len(chunks)} passes of up to "
        f"{max(c.rows for c in chunks):,} (--max-batch-mib {max_batch_mib})"
    )
    task = progress.add_task(f"{label} NLL (K={k})", total=total, info="", unit="samples")
    done, t0, nll_sum = 0, time.perf_counter(), 0.0
    try:
        for i, (c, w) in enumerate(_passes(model, x, chunks, _Noise(model, k, seed, device))):
            logw[c.samples.start : c.samples.stop, c.images.start : c.images.stop] = w
            done += c.rows
            if c.samples.stop == k:  # these images have all their samples: their NLL, once, for the display
                nll_sum += float(_nll(logw[:, c.images.start : c.images.stop]).sum())
            finished = c.images.stop if c.samples.stop == k else c.images.start
            progress.update(task, advance=c.rows, info=f"NLL {nll_sum / finished:.2f}" if finished else "")
            eta = (time.perf_counter() - t0) * (total - done) / done
            if i == 0 and eta > ETA_NOTE_S:
                progress.note(
                    f"{label}: about {clock(eta)} to go at {done / (time.perf_counter() - t0):,.0f} samples/s;"
                    f" Ctrl-C stops cleanly"
                )
    except KeyboardInterrupt:
        raise Interrupted(
            f"{label} interrupted by Ctrl-C after {done:,} of {total:,} importance samples; nothing written"
        ) from None
    return _nll(logw)


def _nll(logw: torch.Tensor) -> torch.Tensor:
    """Per image, -log of the mean importance weight: log weights (K, images) -> (images,)."""
    return -(torch.logsumexp(logw, 0) - math.log(logw.shape[0]))


def _nelbo(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device, seed: int) -> torch.Tensor:
    """Per-image -ELBO (one posterior sample per image from torch's generator, seeded, batch by batch)."""
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(device)
            out[i : i + len(xb)] = model.elbo(xb).nelbo.double().cpu()
    return out


def default_max_batch_mib(device: torch.device) -> int:
    """The memory budget of one importance-sampling pass when none is given."""
    return DEFAULT_MAX_BATCH_MIB["cuda" if device.type == "cuda" else "cpu"]


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
            raise RobustVAEError(
                f"--estimator {name} is not offered by {model.arch} models (they offer "
                f"{', '.join(offered)}); use --estimator iwae"
            )
    return names


@torch.no_grad()
def _family_nll(
    model: nn.Module,
    x: torch.Tensor,
    name: str,
    iw_samples: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    progress: Progress,
    label: str,
) -> torch.Tensor:
    """Per image, a family's own estimate (``ESTIMATORS[name]``), batch by batch from torch's generator, seeded."""
    n = x.shape[0]
    chunk = max(1, min(iw_samples, 2000 // max(batch_size, 1)))  # about 2,000 images per forward pass
    out = torch.zeros(n, dtype=torch.float64)
    devices = [device.index or 0] if device.type == "cuda" else []
    task = progress.add_task(f"{label} {name} (K={iw_samples})", total=n, info="", unit="images")
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for i in range(0, n, batch_size):
                xb = x[i : i + batch_size].to(device)
                out[i : i + len(xb)] = getattr(model, ESTIMATORS[name])(xb, iw_samples, chunk).double().cpu()
                progress.update(task, advance=len(xb), info=f"NLL {out[: i + len(xb)].mean():.2f}")
    except KeyboardInterrupt:
        raise Interrupted(f"{label} interrupted by Ctrl-C in the {name} estimate; nothing written") from None
    return out


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
    max_batch_mib: int | None = None,
    log_path: str | Path | None = None,
    label: str = "eval",
) -> dict[str, Any]:
    """ELBO, NLL, per-layer KL and active units of ``model`` on images ``x`` in [0, 1] (see the module docstring).

    ``estimator``: ``iwae`` (the true bound, every model), a family's own (``authors``:
    Kuzina & Tomczak's estimate, not a bound) or ``both`` on the same images (``nll_nats``
    is then the bound, ``nll_authors_nats`` the other). A non-default estimator is
    recorded as ``estimator``; the default record is unchanged.
    ``batch_size`` batches the ELBO, the diagnostics and a family's own estimate;
    ``max_batch_mib`` (default :func:`default_max_batch_mib`) sizes the importance-sampling
    passes of the bound; ``log_path`` receives the progress lines.
    """
    names = estimators_of(model, estimator)
    require_positive(iw_samples=iw_samples, batch_size=batch_size, max_batch_mib=max_batch_mib)
    model = model.to(device).eval()
    budget = max_batch_mib or default_max_batch_mib(device)
    nelbo = _nelbo(model, x, batch_size, device, seed)
    nll: dict[str, torch.Tensor] = {}
    with make_progress(quiet, log_path) as progress:
        for name in names:
            nll[name] = (
                iwae_nll(
                    model, x, iw_samples, device=device, seed=seed, max_batch_mib=budget, progress=progress, label=label
                )
                if name == "iwae"
                else _family_nll(model, x, name, iw_samples, batch_size, device, seed, progress, label)
            )
    layers = layer_diagnostics(model, x, batch_size, device, seed)
    return _record(model, x.shape[0], iw_samples, nelbo, nll, layers, estimator)


def _record(
    model: nn.Module,
    n: int,
    iw_samples: int,
    nelbo: torch.Tensor,
    nll: dict[str, torch.Tensor],
    layers: list[dict[str, Any]],
    estimator: str = "iwae",
) -> dict[str, Any]:
    """The result dict: means over the images, bits per dimension, the context apart, per-layer rows.

    ``nll``: per estimator name, the first is ``nll_nats``, the others ``nll_<name>_nats``.
    """
    to_bpd = 1.0 / (model.num_pixels * math.log(2))
    extra: dict[str, float] = {}
    context = [row for row in layers if row["active_units"] is None]
    gaussian = [row for row in layers if row["active_units"] is not None]
    if context:
        extra["context_nats"] = float(sum(row["kl_nats"] for row in context))
        extra["gaussian_kl_nats"] = float(sum(row["kl_nats"] for row in gaussian))
    names = list(nll)
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
