"""Aggregation of attack records: per point, per (model, k), and the sanity checks (GUIDE section 5).

Restarts are aggregated per point first, in two views: the mean over restarts (a
typical attack) and the minimum MS-SSIM over restarts (the worst case). Points are
then averaged, with a 95 % percentile-bootstrap interval over points computed once,
by :func:`mean_interval` (``seaborn.algorithms.bootstrap`` with a fixed seed and
number of resamples); Figure 10 draws the table's numbers, so table and figure agree.
Floor and noise rows are averaged over their draws per point, then over points.
Non-finite MS-SSIM values are counted and left out of every mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from seaborn.algorithms import bootstrap
from seaborn.utils import ci

from robustvae.reporting.load import CURVE_KEYS, RunSet

N_BOOT = 1000
BOOT_SEED = 0
CI_LEVEL = 95
MONOTONE_TOL = 0.01  # an increase of MS-SSIM up to this much still counts as "monotone" (sampling noise)
VIEWS = {"mean": "mean over restarts", "worst": "worst case over restarts"}
TABLE_KEYS = [*CURVE_KEYS, "k"]


def mean_interval(values: pd.Series | np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): the finite values' mean and its 95 % bootstrap interval (NaN for fewer than 2 values).

    The values are sorted first, as ``seaborn.lineplot`` sorts them before resampling (it
    drew Figure 10's error bars once): with the same seed, the same resamples and numbers.
    """
    v = np.sort(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    if len(v) == 1:
        return float(v[0]), math.nan, math.nan
    boots = bootstrap(v, func="mean", n_boot=N_BOOT, seed=BOOT_SEED)
    lo, hi = ci(boots, CI_LEVEL)
    return float(v.mean()), float(lo), float(hi)


def per_point(records: pd.DataFrame) -> pd.DataFrame:
    """Attack rows aggregated over restarts: one row per (curve, k, point) with ``mean``, ``worst`` and ``restarts``."""
    att = records[records.kind == "attack"]
    finite = att.msssim.where(np.isfinite(att.msssim.astype(float)))
    g = finite.groupby([att[c] for c in [*TABLE_KEYS, "point"]])
    out = pd.DataFrame({"mean": g.mean(), "worst": g.min(), "restarts": att.groupby([*TABLE_KEYS, "point"]).size()})
    return out.reset_index()


def _baseline(records: pd.DataFrame, kind: str) -> pd.Series:
    """Floor or noise: mean over draws per point, then over points, per (curve, k)."""
    rows = records[records.kind == kind]
    return rows.groupby([*TABLE_KEYS, "point"]).msssim.mean().groupby(TABLE_KEYS).mean()


def summarise(records: pd.DataFrame, diagnostics: pd.DataFrame | None = None) -> pd.DataFrame:
    """The results table: one row per (dataset, norm, eps, model, k), numbers only.

    Columns: points, restarts (per point; the minimum when they differ), ``mean`` /
    ``worst`` with ``_lo`` / ``_hi`` interval bounds, ``noise``, ``floor``, the largest
    attack perturbation in both norms, non-finite rows (all kinds), and with
    ``diagnostics`` the KL and active units of layer k (a collapsed layer is trivially
    robust).
    """
    pp = per_point(records)
    att = records[records.kind == "attack"]
    rows = []
    for key, g in pp.groupby(TABLE_KEYS, sort=True):
        row: dict[str, Any] = dict(zip(TABLE_KEYS, key))
        row["points"] = int(len(g))
        row["restarts"] = int(g.restarts.min())
        for view in VIEWS:
            row[view], row[f"{view}_lo"], row[f"{view}_hi"] = mean_interval(g[view])
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    idx = pd.MultiIndex.from_frame(table[TABLE_KEYS])
    table["noise"] = _baseline(records, "noise").reindex(idx).to_numpy()
    table["floor"] = _baseline(records, "floor").reindex(idx).to_numpy()
    g = att.groupby(TABLE_KEYS)
    table["checkpoint_sha256"] = g.checkpoint_sha256.first().reindex(idx).to_numpy()
    table["max_delta_linf"] = g.delta_linf.max().reindex(idx).to_numpy()
    table["max_delta_l2"] = g.delta_l2.max().reindex(idx).to_numpy()
    table["nonfinite"] = records.groupby(TABLE_KEYS).nonfinite.sum().reindex(idx).fillna(0).astype(int).to_numpy()
    if diagnostics is not None and len(diagnostics):
        diag = diagnostics.set_index(["sha256", "layer"])
        at = pd.MultiIndex.from_arrays([table.checkpoint_sha256, table.k])
        table["layer_kl_nats"] = diag.kl_nats.reindex(at).to_numpy()
        table["layer_active_units"] = diag.active_units.reindex(at).to_numpy()
        table["layer_units"] = diag.units.reindex(at).to_numpy()
    return table


def diagnostics_frame(runs: RunSet) -> pd.DataFrame:
    """Per-layer KL and active units of every attacked model (from run.json), one row per (model, layer)."""
    rows = []
    for m in runs.model_infos():
        for d in m.get("layer_diagnostics") or []:
            rows.append({"model": m["label"], "sha256": m.get("sha256", ""), "layer": d["layer"],
                         "resolution": d.get("resolution"), "units": d.get("units"), "kl_nats": d.get("kl_nats"),
                         "active_units": d.get("active_units"), "kind": d.get("kind", "gaussian"),
                         "levels": d.get("levels"), "levels_used": d.get("levels_used")})
    cols = ["model", "sha256", "layer", "resolution", "units", "kl_nats", "active_units", "kind", "levels", "levels_used"]
    df = pd.DataFrame(rows, columns=cols).drop_duplicates(["sha256", "layer"])
    # a label shared by two checkpoints (e.g. in two runs) gets the hash's start, so figures keep them apart
    shared = df.groupby("model").sha256.transform("nunique") > 1
    df.loc[shared, "model"] = df.model[shared] + " @" + df.sha256[shared].str[:8]
    df["active_units"] = pd.to_numeric(df.active_units, errors="coerce")
    df["active_fraction"] = df.active_units / pd.to_numeric(df.units, errors="coerce")
    return df


def _curve_name(key: tuple) -> str:
    dataset, norm, eps, model = key
    return f"{model} ({dataset}, {norm} eps {eps:g})"


def checks(runs: RunSet, table: pd.DataFrame) -> pd.DataFrame:
    """GUIDE section 5's sanity evidence, one row per check and scope: ``passed`` plus the numbers behind it."""
    df = runs.records
    out: list[dict[str, Any]] = []

    def add(check: str, scope: str, passed: bool, value: float, limit: float, detail: str) -> None:
        out.append({"check": check, "scope": scope, "passed": bool(passed), "value": float(value),
                    "limit": float(limit), "detail": detail})

    for key, g in df[df.kind.isin(["attack", "noise"])].groupby(CURVE_KEYS):
        eps, norm = key[2], key[1]
        size = g.delta_linf if norm == "linf" else g.delta_l2
        worst = float(size.max())
        add("budget respected", _curve_name(key), worst <= eps * (1 + 1e-5) + 1e-7, worst, eps,
            f"max {'L-inf' if norm == 'linf' else 'L2'} norm of delta over {len(g)} attack and noise rows")
    # paired per point: how much lower the attack's MS-SSIM (mean over restarts) is than the noise's
    noise = df[df.kind == "noise"].groupby([*TABLE_KEYS, "point"]).msssim.mean().rename("noise")
    paired = per_point(df).join(noise, on=[*TABLE_KEYS, "point"])
    for key, g in paired.groupby(TABLE_KEYS):
        scope = f"{_curve_name(key[:-1])} k={key[-1]}"
        if g.noise.isna().all():
            add("attack beats noise", scope, False, math.nan, 0.0, "no noise rows (noise_draws = 0): no evidence")
            continue
        gain, lo, hi = mean_interval(g.noise - g["mean"])
        add("attack beats noise", scope, (gain if math.isnan(lo) else lo) > 0, gain, 0.0,
            f"noise minus attack MS-SSIM, paired per point: {gain:+.4f} [{lo:+.4f}, {hi:+.4f}] "
            f"(attack {g['mean'].mean():.4f}, noise {g.noise.mean():.4f}); passes when the interval is above 0")
    for key, g in table.groupby(CURVE_KEYS):
        if len(g) > 1:
            _monotone(add, "damage monotone in k", _curve_name(key), g.sort_values("k"), "k", "k")
    for key, g in table.groupby(["dataset", "norm", "model", "k"]):
        if g.eps.nunique() > 1:
            dataset, norm, model, k = key
            _monotone(add, "damage monotone in eps", f"{model} ({dataset}, {norm}) k={k}", g.sort_values("eps"), "eps", "eps")
    for key, g in df.groupby(CURVE_KEYS):
        n = int(g.nonfinite.sum())
        add("no non-finite rows", _curve_name(key), n == 0, n, 0, f"{n} of {len(g)} rows have a non-finite score")
    att = df[df.kind == "attack"]
    for key, g in att.groupby(CURVE_KEYS):
        per = g.groupby(["k", "point"]).size()
        want = g.restarts_configured.iloc[0]
        want = float(want) if want is not None and not pd.isna(want) else float(per.max())
        add("restarts per point as configured", _curve_name(key), bool((per == want).all()), float(per.min()), want,
            f"{per.min()}..{per.max()} restarts per point over {len(per)} (k, point) pairs; configured {want:g}")
    for run in runs.runs:
        done, total = run.info.get("units_done", 0), run.info.get("units_total", 0)
        status = run.info.get("status", "?")
        add("run complete", f"{run.dir}/{run.name}", status == "complete" and done == total, done, total,
            f"status {status}, {done} of {total} units done, {run.records} records")
    return pd.DataFrame(out, columns=["check", "scope", "passed", "value", "limit", "detail"])


def _monotone(add: Callable[..., None], check: str, scope: str, g: pd.DataFrame, by: str, name: str) -> None:
    """Worst-case MS-SSIM should not rise (beyond :data:`MONOTONE_TOL`) as ``by`` grows."""
    values = g.worst.to_numpy(dtype=float)
    rise = float(np.nanmax(np.diff(values))) if len(values) > 1 else 0.0
    listing = ", ".join(f"{name}={v:g}: {w:.4f}" for v, w in zip(g[by], values))
    add(check, scope, rise <= MONOTONE_TOL, rise, MONOTONE_TOL,
        f"largest rise of worst-case MS-SSIM {rise:+.4f} (allowed {MONOTONE_TOL}); {listing}")
