"""Targeted attacks in the report: how far x + delta's reconstruction moves towards a target image's.

A targeted run (``--objective target``, ``target_recon``, or the earlier ``supervised``)
records per attack row ``msssim_target``, the MS-SSIM between the attacked
reconstruction and the target's under the same prior noise, and
``msssim_target_before``, the same for the clean reconstruction. Per point the strongest
row over restarts (and ensemble members) is the one with the highest ``msssim_target``
(:data:`robustvae.records.TARGETED`); per (panel, model, k, attack):

* ``msssim_target``: its mean over points, with a 95 % bootstrap interval;
* ``before``: the mean clean level, and ``gain`` = msssim_target - before (paired per point);
* ``success``: the share of points whose attacked reconstruction is closer to the target's
  than to the clean reconstruction (``msssim_target > msssim`` on the strongest row);
* ``msssim``: that row's MS-SSIM to the clean reconstruction (the damage the targeted
  attack does on the way);
* ``untargeted_worst``: beside it, the mean worst case of an untargeted run of the same
  model, k and budget when one is in the report (NaN otherwise).

Rows of targeted runs written before ``msssim_target`` was recorded are counted and left out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from robustvae.records import TARGETED
from robustvae.reporting.aggregate import CI_LEVEL, TABLE_KEYS, mean_interval, per_point
from robustvae.reporting.tables import number, with_interval

ATTACK_KEYS = ["optimizer", "objective"]
KEYS = [*TABLE_KEYS, *ATTACK_KEYS]
COLUMNS = [
    *KEYS,
    "points",
    "msssim_target",
    "msssim_target_lo",
    "msssim_target_hi",
    "before",
    "gain",
    "gain_lo",
    "gain_hi",
    "success",
    "msssim",
    "untargeted_worst",
]


def scored_rows(targeted: pd.DataFrame) -> pd.DataFrame:
    """The attack rows of targeted runs that carry ``msssim_target`` (rows written before it existed are not)."""
    if targeted.empty or "msssim_target" not in targeted:
        return targeted.iloc[:0]
    att = targeted[targeted.kind == "attack"]
    return att[att.msssim_target.notna()]


def strongest_per_point(targeted: pd.DataFrame) -> pd.DataFrame:
    """Per (panel, model, k, attack, point): the row with the highest ``msssim_target`` over restarts and members,
    with ``success`` (closer to the target's reconstruction than to the clean one) and ``gain``."""
    att = scored_rows(targeted)
    cols = [
        *KEYS,
        "point",
        "target_point",
        "restart",
        "member",
        "msssim_target",
        "msssim_target_before",
        "msssim",
        "gain",
        "success",
    ]
    if att.empty:
        return pd.DataFrame(columns=cols)
    att = att.assign(**{c: att[c].astype(float) for c in ("msssim_target", "msssim_target_before", "msssim")})
    best = att.loc[TARGETED.strongest(att, [*KEYS, "point"]).to_numpy()].copy()
    if "member" not in best:
        best["member"] = None
    best["gain"] = best.msssim_target - best.msssim_target_before
    best["success"] = best.msssim_target > best.msssim
    return best[cols].reset_index(drop=True)


def targeted_table(
    targeted: pd.DataFrame, untargeted: pd.DataFrame | None = None, versions: dict[str, str | None] | None = None
) -> pd.DataFrame:
    """Targeted success per (panel, model, k, attack), beside the untargeted worst case where ``untargeted``
    (the records of untargeted runs) has the same model, k and budget. ``versions``: per run directory the
    ensemble version its run.json names, shown instead of ``auto``. Empty without scored targeted rows."""
    if versions and len(targeted):
        targeted = targeted.assign(optimizer=[versions.get(r) or o for r, o in zip(targeted.run, targeted.optimizer)])
    best = strongest_per_point(targeted)
    if best.empty:
        return pd.DataFrame(columns=COLUMNS)
    worst = pd.Series(dtype=float)
    if untargeted is not None and len(untargeted) and (untargeted.kind == "attack").any():
        worst = per_point(untargeted).groupby(TABLE_KEYS).worst.mean()
    rows = []
    for key, g in best.groupby(KEYS, sort=True):
        row = dict(zip(KEYS, key))
        row["points"] = len(g)
        row["msssim_target"], row["msssim_target_lo"], row["msssim_target_hi"] = mean_interval(g.msssim_target)
        row["before"] = float(g.msssim_target_before.mean())
        row["gain"], row["gain_lo"], row["gain_hi"] = mean_interval(g.gain)
        row["success"] = float(g.success.mean())
        row["msssim"] = float(g.msssim.mean())
        row["untargeted_worst"] = float(worst.get(tuple(key[: len(TABLE_KEYS)]), math.nan))
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def unscored_rows(targeted: pd.DataFrame) -> int:
    """Attack rows of targeted runs without ``msssim_target`` (written before it was recorded)."""
    if targeted.empty:
        return 0
    att = targeted[targeted.kind == "attack"]
    return int(att.msssim_target.isna().sum()) if "msssim_target" in att else len(att)


def display_targeted(table: pd.DataFrame) -> pd.DataFrame:
    """The targeted table as text cells."""
    ci = f"{CI_LEVEL}% CI"
    out = pd.DataFrame()
    out["dataset"], out["norm"], out["eps"] = table.dataset, table.norm, table.eps.map(lambda v: f"{v:g}")
    out["model"], out["k"] = table.model, table.k.astype(int)
    out["attack"] = table.optimizer + " / " + table.objective
    out["points"] = table.points
    out[f"MS-SSIM to target [{ci}]"] = [
        with_interval(v, lo, hi)
        for v, lo, hi in zip(table.msssim_target, table.msssim_target_lo, table.msssim_target_hi)
    ]
    out["before attack"] = table.before.map(number)
    out[f"gain [{ci}]"] = [with_interval(v, lo, hi) for v, lo, hi in zip(table.gain, table.gain_lo, table.gain_hi)]
    out["success"] = table.success.map(lambda v: number(v, ".0%") if not pd.isna(v) else "-")
    out["MS-SSIM to clean rec."] = table.msssim.map(number)
    out["untargeted worst case"] = table.untargeted_worst.map(number)
    return out.reset_index(drop=True)


def targeted_figure(table: pd.DataFrame):
    """Targeted success against eps: per model a panel, mean MS-SSIM to the target (solid) and before the attack
    (dotted) against eps, one colour per k; markers name the attack when there are several."""
    from robustvae.reporting.figures import new_figure, palette

    models = sorted(table.model.unique())
    fig = new_figure(3.2 * len(models), 2.8)
    axes = np.atleast_1d(fig.subplots(1, len(models), squeeze=False)[0])
    ks = sorted(table.k.astype(int).unique())
    colours = dict(zip(ks, palette([f"k={k}" for k in ks]).values()))
    for ax, model in zip(axes, models):
        for (k, attack), g in table[table.model == model].groupby(
            [table.k.astype(int), table.optimizer + " / " + table.objective]
        ):
            g = g.sort_values("eps")
            ax.plot(g.eps, g.msssim_target, marker="o", color=colours[k], label=f"k={k} {attack}")
            ax.plot(g.eps, g.before, linestyle=":", color=colours[k])
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("eps")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("MS-SSIM(rec(x + delta), rec(target))\n(dotted: before the attack)", fontsize=8)
    return fig
