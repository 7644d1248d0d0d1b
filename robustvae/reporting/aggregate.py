"""Aggregation of attack records: per point, per (model, k), and the sanity checks .

Restarts are aggregated per point first, in two views: the mean over restarts (a
typical attack) and the minimum MS-SSIM over restarts (the worst case). Points are
then averaged, with a 95 % percentile-bootstrap interval over points computed once,
by :func:`mean_interval` (``seaborn.algorithms.bootstrap`` with a fixed seed and
number of resamples); Figure 10 draws the table's numbers, so table and figure agree.
Floor and noise rows are averaged over their draws per point, then over points.
Non-finite MS-SSIM values are counted and left out of every mean.

The headline is the **paired drop** per point: the no-attack level (the same score
with delta = 0 under the same reconstruction rule and noise; exactly 1 under the
default rule) minus the attacked score, in both views, with its interval over points.
Under the authors' rule the raw score mixes the attack with what the top layers carry;
the drop does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from seaborn.algorithms import bootstrap
from seaborn.utils import ci

from robustvae.records import NOT_APPLICABLE
from robustvae.reporting.checklist import CheckList
from robustvae.reporting.load import CURVE_KEYS, PANEL_KEYS, RunSet
from robustvae.reporting.strength import strength_checks

N_BOOT = 1000
BOOT_SEED = 0
CI_LEVEL = 95
MONOTONE_TOL = 0.01  # an increase of MS-SSIM up to this much still counts as "monotone" (sampling noise)
CLIPPED_LIMIT = 0.05  # share of attack scores clipped at 0 (a negative MS-SSIM level) beyond which the check fails
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
    """Attack rows aggregated over restarts: one row per (curve, k, point) with ``mean``, ``worst``, ``restarts``
    (and ``members`` for an ensemble, whose views run over restarts and members),
    the point's ``no_attack`` level and the paired drops ``drop_mean`` / ``drop_worst`` (no-attack minus attacked).

    Records written before no-attack rows existed carry the default rule, whose no-attack
    level is 1 by construction (the same image under the same noise): that value is used.
    """
    keys = [*TABLE_KEYS, "point"]
    att = records[records.kind == "attack"]
    finite = att.msssim.where(np.isfinite(att.msssim.astype(float)))
    g = finite.groupby([att[c] for c in keys])
    cols = {"mean": g.mean(), "worst": g.min(), "restarts": att.groupby(keys).restart.nunique()}
    if "member" in att and att.member.notna().any():  # an ensemble: the worst case is over restarts and members
        cols["members"] = att.groupby(keys).member.nunique()
    out = pd.DataFrame(cols).reset_index()
    base = records[records.kind == "no_attack"]
    level = base.msssim.where(np.isfinite(base.msssim.astype(float))).groupby([base[c] for c in keys]).mean()
    out["no_attack"] = level.reindex(pd.MultiIndex.from_frame(out[keys])).to_numpy() if len(out) else []
    legacy = out.no_attack.isna() & (out.recon == "default") & base.empty
    out.loc[legacy, "no_attack"] = 1.0
    out["drop_mean"] = out.no_attack - out["mean"]
    out["drop_worst"] = out.no_attack - out.worst
    return out


def _baseline(records: pd.DataFrame, kind: str) -> pd.Series:
    """Floor or noise: mean over draws per point, then over points, per (curve, k)."""
    rows = records[records.kind == kind]
    return rows.groupby([*TABLE_KEYS, "point"]).msssim.mean().groupby(TABLE_KEYS).mean()


SCORE_COLUMNS = ("msssim", "msssim_input", "psnr", "delta_linf", "delta_l2", "final_loss")


def nonfinite_rows(records: pd.DataFrame) -> pd.Series:
    """Rows with a non-finite number, counted from the values (NaN, inf, or not a number at all), or flagged.

    Optional columns count where the row has a value (``psnr`` of a floor row is absent,
    not NaN), and a kind's not-applicable fields (:data:`robustvae.records.NOT_APPLICABLE`) not at all; a PSNR of +inf is a perfect match (identical images), not a failure. The
    writer's ``nonfinite`` flag is honoured but never trusted alone.
    """
    bad = records["nonfinite"].fillna(False).astype(bool) if "nonfinite" in records else pd.Series(False, records.index)
    for col in SCORE_COLUMNS:
        if col not in records:
            continue
        required = col in ("msssim", "msssim_input", "delta_linf", "delta_l2")
        values = pd.to_numeric(records[col], errors="coerce").astype(float)
        given = pd.Series(True, records.index) if required else records[col].notna()
        if "kind" in records:  # NaN by design where the field does not apply to the row's kind
            given &= ~records["kind"].isin([k for k, cols in NOT_APPLICABLE.items() if col in cols])
        finite = np.isfinite(values.to_numpy()) | ((values.to_numpy() == np.inf) if col == "psnr" else False)
        bad |= given & ~finite
    return bad


def summarise(records: pd.DataFrame, diagnostics: pd.DataFrame | None = None) -> pd.DataFrame:
    """The results table: one row per (dataset, norm, eps, model, k), numbers only.

    Columns: points, restarts (per point; the minimum when they differ), ``mean`` /
    ``worst`` with ``_lo`` / ``_hi`` interval bounds, the paired drops ``drop_mean`` /
    ``drop_worst`` with theirs, ``no_attack`` (mean level), ``noise``, ``floor``, ``unrelated``
    (the score of an unrelated test image's reconstruction: the ceiling of damage), the largest
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
        if "members" in g and g.members.max() > 0:  # an ensemble's curve (a single attack beside it has none)
            row["members"] = int(g.members.max())
        for view in VIEWS:
            row[view], row[f"{view}_lo"], row[f"{view}_hi"] = mean_interval(g[view])
        for view in VIEWS:
            row[f"drop_{view}"], row[f"drop_{view}_lo"], row[f"drop_{view}_hi"] = mean_interval(g[f"drop_{view}"])
        row["no_attack"] = float(g.no_attack.mean())
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    idx = pd.MultiIndex.from_frame(table[TABLE_KEYS])
    table["noise"] = _baseline(records, "noise").reindex(idx).to_numpy()
    table["floor"] = _baseline(records, "floor").reindex(idx).to_numpy()
    table["unrelated"] = _baseline(records, "unrelated").reindex(idx).to_numpy()  # another image's reconstruction
    g = att.groupby(TABLE_KEYS)
    table["checkpoint_sha256"] = g.checkpoint_sha256.first().reindex(idx).to_numpy()
    for col in ("model_label", "attack"):  # a curve's checkpoint label and attack configuration (reporting.load)
        if col in att:
            table[col] = g[col].first().reindex(idx).to_numpy()
    table["max_delta_linf"] = g.delta_linf.max().reindex(idx).to_numpy()
    table["max_delta_l2"] = g.delta_l2.max().reindex(idx).to_numpy()
    nonfinite = nonfinite_rows(records).groupby([records[c] for c in TABLE_KEYS]).sum()
    table["nonfinite"] = nonfinite.reindex(idx).fillna(0).astype(int).to_numpy()
    if diagnostics is not None and len(diagnostics):
        diag = diagnostics.set_index(["sha256", "layer"])
        at = pd.MultiIndex.from_arrays([table.checkpoint_sha256, table.k])
        table["layer_kl_nats"] = diag.kl_nats.reindex(at).to_numpy()
        table["layer_active_units"] = diag.active_units.reindex(at).to_numpy()
        table["layer_units"] = diag.units.reindex(at).to_numpy()
    return table


def diagnostics_frame(runs: RunSet, evals: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """Per-layer KL and active units of every attacked model, one row per (model, layer): from run.json (on the
    attacked split), else from a ``robustvae eval`` result of the same checkpoint (``source`` says which)."""
    by_sha = {e.get("checkpoint_sha256"): e for e in evals or []}
    rows = []
    for m in runs.model_infos():
        layers, source = m.get("layer_diagnostics") or [], "run.json"
        if not layers and m.get("sha256") in by_sha:
            layers, source = by_sha[m["sha256"]].get("layers") or [], "eval"
        for d in layers:
            rows.append(
                {
                    "model": m["label"],
                    "sha256": m.get("sha256", ""),
                    "layer": d["layer"],
                    "resolution": d.get("resolution"),
                    "units": d.get("units"),
                    "kl_nats": d.get("kl_nats"),
                    "active_units": d.get("active_units"),
                    "kind": d.get("kind", "gaussian"),
                    "levels": d.get("levels"),
                    "levels_used": d.get("levels_used"),
                    "source": source,
                }
            )
    cols = [
        "model",
        "sha256",
        "layer",
        "resolution",
        "units",
        "kl_nats",
        "active_units",
        "kind",
        "levels",
        "levels_used",
        "source",
    ]
    df = pd.DataFrame(rows, columns=cols).drop_duplicates(["sha256", "layer"])
    # a label shared by two checkpoints (e.g. in two runs) gets the hash's start, so figures keep them apart
    shared = df.groupby("model").sha256.transform("nunique") > 1
    df.loc[shared, "model"] = df.model[shared] + " @" + df.sha256[shared].str[:8]
    df["active_units"] = pd.to_numeric(df.active_units, errors="coerce")
    df["active_fraction"] = df.active_units / pd.to_numeric(df.units, errors="coerce")
    return df


def _curve_name(key: tuple) -> str:
    dataset, norm, eps, recon, model = key
    rule = "" if recon == "default" else f", {recon} rule"
    return f"{model} ({dataset}, {norm} eps {eps:g}{rule})"


def checks(runs: RunSet, table: pd.DataFrame) -> pd.DataFrame:
    """The protocol's sanity evidence, one row per check and scope: ``passed`` plus the numbers behind it, in a text
    that says what was found (differently on pass and fail; :class:`~robustvae.reporting.checklist.CheckList`).

    Damage is not expected to be monotone in k under this protocol (the top k layers are
    attacked and the same k come from the posterior, so at k = L everything comes from
    x + delta's posterior, near x's): there is no such check. It is monotone in eps.
    """
    df = runs.records
    out = CheckList()
    _budget_checks(out.add, df)
    # paired per point: how much lower the attack's MS-SSIM (mean over restarts) is than the noise's
    noise = df[df.kind == "noise"].groupby([*TABLE_KEYS, "point"]).msssim.mean().rename("noise")
    paired = per_point(df).join(noise, on=[*TABLE_KEYS, "point"])
    _noise_checks(out.add, paired)
    _damage_checks(out.add, paired, _floor_spread(df))
    for key, g in table.groupby(["dataset", "norm", "recon", "model", "k"]):
        if g.eps.nunique() > 1:
            dataset, norm, recon, model, k = key
            rule = "" if recon == "default" else f", {recon} rule"
            _monotone(
                out.add,
                "damage monotone in eps",
                f"{model} ({dataset}, {norm}{rule}) k={k}",
                g.sort_values("eps"),
                "eps",
                "eps",
            )
    bad = nonfinite_rows(df)
    for key, g in df.groupby(CURVE_KEYS):
        n = int(bad[g.index].sum())
        out.add(
            "no non-finite rows",
            _curve_name(key),
            n == 0,
            n,
            0,
            f"all {len(g)} rows have finite scores",
            f"{n} of {len(g)} rows have a non-finite score (left out of every mean)",
        )
    _clipped_checks(out.add, df)
    _restart_checks(out.add, df)
    _planned_units(out.add, runs)
    for run in runs.runs:
        done, total = run.info.get("units_done") or 0, run.info.get("units_total") or 0  # null: not recorded
        status = run.info.get("status") or "?"
        out.add(
            "run complete",
            f"{run.dir}/{run.name}",
            status == "complete" and done == total,
            done,
            total,
            f"run complete: {done} of {total} units done, {run.records} records",
            f"run not complete: status {status}, {done} of {total} units done, {run.records} records; "
            f"resume the attack to finish it",
        )
    for row in strength_checks(df):
        out.rows.append(row)
    return out.frame()


def _budget_checks(add: Callable[..., None], df: pd.DataFrame) -> None:
    """Per curve: the largest perturbation of every attack and noise row is within eps (a NaN size is no evidence)."""
    for key, g in df[df.kind.isin(["attack", "noise"])].groupby(CURVE_KEYS):
        eps, norm = key[2], key[1]
        name = "L-inf" if norm == "linf" else "L2"
        size = pd.to_numeric(g.delta_linf if norm == "linf" else g.delta_l2, errors="coerce").astype(float)
        unknown = int((~np.isfinite(size.to_numpy())).sum())
        worst = math.inf if unknown else float(size.max())
        add(
            "budget respected",
            _curve_name(key),
            worst <= eps * (1 + 1e-5) + 1e-7,
            worst,
            eps,
            f"every delta within the budget: max {name} norm {worst:.6g} <= eps {eps:g} over {len(g)} attack and "
            f"noise rows",
            f"budget unverifiable: {unknown} of {len(g)} attack and noise rows have a non-finite size"
            if unknown
            else f"budget exceeded: max {name} norm {worst:.6g} > eps {eps:g} over {len(g)} attack and noise rows",
        )


def _noise_checks(add: Callable[..., None], paired: pd.DataFrame) -> None:
    """Per (curve, k): the attack's MS-SSIM is below that of random noise of the same budget, paired per point."""
    for key, g in paired.groupby(TABLE_KEYS):
        scope = f"{_curve_name(key[:-1])} k={key[-1]}"
        if g.noise.isna().all():
            add("attack beats noise", scope, False, math.nan, 0.0, "", "no evidence: no noise rows (noise_draws = 0)")
            continue
        gain, lo, hi = mean_interval(g.noise - g["mean"])
        numbers = (
            f"noise minus attack MS-SSIM, paired per point: {gain:+.4f} [{lo:+.4f}, {hi:+.4f}] "
            f"(attack {g['mean'].mean():.4f}, noise {g.noise.mean():.4f})"
        )
        add(
            "attack beats noise",
            scope,
            (gain if math.isnan(lo) else lo) > 0,
            gain,
            0.0,
            f"attack beats noise: {numbers}, interval above 0",
            f"attack does not beat noise of the same budget: {numbers}, interval not above 0",
        )


def _clipped_checks(add: Callable[..., None], df: pd.DataFrame) -> None:
    """Per curve: how many attack scores are exactly 0, where MS-SSIM clips a negative level to 0 (as pytorch-msssim
    does): a clipped score is a bound, not a measurement, and means over many of them hide differences."""
    att = df[df.kind == "attack"]
    for key, g in att.groupby(CURVE_KEYS):
        scores = pd.to_numeric(g.msssim, errors="coerce")
        n = int((scores == 0).sum())
        share = n / max(len(g), 1)
        add(
            "few MS-SSIM scores clipped at 0",
            _curve_name(key),
            share <= CLIPPED_LIMIT,
            share,
            CLIPPED_LIMIT,
            f"{n} of {len(g)} attack scores are clipped at 0 ({share:.1%} <= {CLIPPED_LIMIT:.0%})",
            f"{n} of {len(g)} attack scores are clipped at 0 ({share:.1%} > {CLIPPED_LIMIT:.0%}): a negative "
            f"structure term was clipped, so those scores bound the damage instead of measuring it",
        )


def _restart_checks(add: Callable[..., None], df: pd.DataFrame) -> None:
    """Per curve: every (k, point) (and ensemble member) has the configured number of restarts."""
    att = df[df.kind == "attack"]
    for key, g in att.groupby(CURVE_KEYS):
        by_member = ["member"] if "member" in g and g.member.notna().any() else []  # an ensemble: restarts per member
        per = g.groupby(["k", "point", *by_member]).size()
        want = g.restarts_configured.iloc[0]
        want = float(want) if want is not None and not pd.isna(want) else float(per.max())
        add(
            "restarts per point as configured",
            _curve_name(key),
            bool((per == want).all()),
            float(per.min()),
            want,
            f"every one of {len(per)} (k, point) pairs has the configured {want:g} restarts",
            f"{per.min()}..{per.max()} restarts per point over {len(per)} (k, point) pairs; configured {want:g}",
        )


def _planned_units(add: Callable[..., None], runs: RunSet) -> None:
    """Every work unit of each sweep's plan (``run.json`` settings.units) has rows among the runs given.

    Shards of one sweep share its plan; a lone shard (or a run stopped early) fails,
    naming the first missing unit and the shards to add.
    """
    plans: dict[tuple[str, ...], list[Any]] = {}
    for run in runs.runs:
        units = run.info.get("settings", {}).get("units")
        if isinstance(units, list) and units:
            plans.setdefault(tuple(map(str, units)), []).append(run)
    present = {str(u) for frame in (runs.records, runs.targeted) if "unit" in frame for u in frame["unit"]}
    for plan, members in plans.items():
        missing = [u for u in plan if u not in present]
        shards = sorted({str(r.info.get("settings", {}).get("shard", "1/1")) for r in members})
        n = shards[0].split("/")[-1] if shards else "1"
        hint = (
            f"; only shard(s) {', '.join(shards)} of {n} given: add the other shards' directories"
            if n != "1" and len(shards) < int(n)
            else "; resume the attack to finish it"
        )
        add(
            "every planned unit present",
            f"{members[0].dir}/{members[0].name}",
            not missing,
            len(plan) - len(missing),
            len(plan),
            f"all {len(plan)} planned units have records",
            f"{len(plan) - len(missing)} of {len(plan)} planned units have records"
            + (f" (first missing: {missing[0]}){hint}" if missing else ""),
        )


def _floor_spread(records: pd.DataFrame) -> pd.Series:
    """Per (curve, k): how much the floor score itself scatters (pooled within-point standard deviation of its draws;
    across points when there is one draw per point), the noise level a measurable attack must exceed."""
    floor = records[records.kind == "floor"]
    if floor.empty:
        return pd.Series(dtype=float)
    keys = [*TABLE_KEYS, "point"]
    within = floor.groupby(keys).msssim.var(ddof=1).groupby(TABLE_KEYS).mean() ** 0.5
    across = floor.groupby(keys).msssim.mean().groupby(TABLE_KEYS).std(ddof=1)
    return within.where(within.notna(), across)


def _damage_checks(add: Callable[..., None], paired: pd.DataFrame, spread: pd.Series) -> None:
    """Per (curve, k): the attack is below its no-attack level (paired interval above 0), and its drop is larger
    than the floor's spread (an attack that does nothing fails here loudly)."""
    for key, g in paired.groupby(TABLE_KEYS):
        scope = f"{_curve_name(key[:-1])} k={key[-1]}"
        drop, lo, hi = mean_interval(g.drop_mean)
        if math.isnan(drop):
            add("attack below the no-attack level", scope, False, math.nan, 0.0, "", "no evidence: no no-attack rows")
        else:
            numbers = (
                f"no-attack minus attacked MS-SSIM (mean over restarts), paired per point: {drop:+.4f} "
                f"[{lo:+.4f}, {hi:+.4f}] (no-attack {g.no_attack.mean():.4f})"
            )
            add(
                "attack below the no-attack level",
                scope,
                (drop if math.isnan(lo) else lo) > 0,
                drop,
                0.0,
                f"attack below the no-attack level: {numbers}, interval above 0",
                f"attack not below the no-attack level: {numbers}, interval not above 0",
            )
        limit = float(spread.get(key, math.nan))
        floor = "the floor's spread (the scatter of clean-vs-clean scores under other prior noise)"
        add(
            "attack did measurable damage",
            scope,
            not math.isnan(limit) and drop > limit,
            drop,
            limit,
            f"attack did measurable damage: mean paired drop {drop:+.4f} > {limit:.4f}, {floor}",
            "no evidence: no floor rows with a spread (floor_draws = 0)"
            if math.isnan(limit)
            else f"no measurable damage: mean paired drop {drop:+.4f} <= {limit:.4f}, {floor}: the attack moves the "
            f"score no more than prior noise does",
        )


def notes(table: pd.DataFrame) -> list[str]:
    """Per (model, k) whose layer k is collapsed (a Gaussian layer with no active unit): robustness is trivial there."""
    out = []
    if "layer_active_units" not in table:
        return out
    for _, r in table.iterrows():
        if not pd.isna(r.layer_active_units) and r.layer_active_units == 0:
            out.append(
                f"{r.model} k={int(r.k)}: layer {int(r.k)} is collapsed (0/{int(r.layer_units)} active units); "
                f"robustness of that layer is trivial (it carries no information about x)"
            )
    return list(dict.fromkeys(out))  # once per model and k, whatever the number of panels


def _monotone(add: Callable[..., None], check: str, scope: str, g: pd.DataFrame, by: str, name: str) -> None:
    """Worst-case MS-SSIM should not rise (beyond :data:`MONOTONE_TOL`) as ``by`` grows."""
    values = g.worst.to_numpy(dtype=float)
    rise = float(np.nanmax(np.diff(values))) if len(values) > 1 else 0.0
    listing = ", ".join(f"{name}={v:g}: {w:.4f}" for v, w in zip(g[by], values))
    add(
        check,
        scope,
        rise <= MONOTONE_TOL,
        rise,
        MONOTONE_TOL,
        f"damage grows with {name}: worst-case MS-SSIM rises by at most {rise:+.4f} <= {MONOTONE_TOL}; {listing}",
        f"damage shrinks as {name} grows: worst-case MS-SSIM rises by {rise:+.4f} > {MONOTONE_TOL} (a weaker attack "
        f"at the larger budget); {listing}",
    )


def layer_atlas(table: pd.DataFrame, diag: pd.DataFrame) -> pd.DataFrame:
    """Per panel, model and layer l: the layer's KL and utilisation beside the damage of attacking it.

    ``drop`` is the paired drop (mean over restarts) at k = l, ``marginal`` what adding
    layer l to the attacked set changes: drop at k = l minus drop at k = l - 1 (0 at
    k = 0). A reader sees whether robustness tracks utilisation: a collapsed layer should
    add nothing. Missing k values give NaN.
    """
    cols = [
        *PANEL_KEYS,
        "model",
        "layer",
        "kind",
        "units",
        "kl_nats",
        "active_units",
        "levels_used",
        "levels",
        "drop",
        "marginal",
    ]
    if table.empty or diag.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, g in table.groupby([*PANEL_KEYS, "model"]):
        drops = dict(zip(g.k.astype(int), g.drop_mean))
        layers = diag[diag.sha256 == g.checkpoint_sha256.iloc[0]].sort_values("layer")
        for _, d in layers.iterrows():
            layer = int(d.layer)
            below = 0.0 if layer == 1 else drops.get(layer - 1, math.nan)
            drop = drops.get(layer, math.nan)
            rows.append(
                {
                    **dict(zip([*PANEL_KEYS, "model"], key)),
                    "layer": layer,
                    "kind": d.kind,
                    "units": d.units,
                    "kl_nats": d.kl_nats,
                    "active_units": d.active_units,
                    "levels_used": d.levels_used,
                    "levels": d.levels,
                    "drop": drop,
                    "marginal": drop - below,
                }
            )
    return pd.DataFrame(rows, columns=cols)
