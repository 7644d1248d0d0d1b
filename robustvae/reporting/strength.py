"""Evidence of attack strength, from the records alone (nothing is re-run), and the failure flags it raises.

An MS-SSIM under attack is an upper bound on robustness that only a strong attack makes
tight. Four views of the same records show whether it is tight:

* :func:`iterations`: damage against iterations. Attack rows carry ``curve``, the
  MS-SSIM of the best iterate after n steps, recorded during the run; per (curve, k,
  member) the mean over points of the worst case over restarts at each n.
* :func:`restarts`: damage against restarts, the mean over points of the best of the
  first r restarts (over every member of an ensemble), r = 1..R.
* :func:`eps_damage`: damage against eps (an eps sweep: ``--eps-sweep``) beside the
  ``unrelated`` level, the MS-SSIM between the reconstructions of two unrelated test images.
* :func:`member_wins`: for an ensemble (``--attack auto``), which member gave each point's
  strongest attack (the worst case; for a targeted ensemble the highest ``msssim_target``,
  :func:`robustvae.records.selection`), how often per model and k.

:func:`strength_checks` turns them into flags, rows of the report's checks (``passed``
False when a flag fires), each with its number: a vanishing start gradient, the
gradient-free member winning, doubling the steps still paying, the largest eps short of
the unrelated level, the last restart still paying, and straight-through against plain
quantiser gradients disagreeing: an ensemble's context-boundary member runs both ways on
the first points (records' ``gradient_check``), and the mean MS-SSIM of the two ways may
differ by at most ``STRAIGHT_THROUGH_LIMIT``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from robustvae.records import selection
from robustvae.reporting.checklist import CheckList
from robustvae.reporting.load import CURVE_KEYS

KEYS = [*CURVE_KEYS, "k"]
GRAD_TOL = 1e-10  # a start gradient norm below this counts as vanished
VANISHING_LIMIT = 0.05  # share of rows with a vanished gradient that raises the flag
MSSSIM_FLOOR = 0.0  # MS-SSIM's minimum (pytorch-msssim clamps each scale at 0): a row there cannot do better
GRADIENT_FREE_LIMIT = 0.05  # share of points a gradient-free member may win
DOUBLING_LIMIT = 0.01  # MS-SSIM gained from steps/2 to steps that says "more steps needed"
RESTART_LIMIT = 0.01  # MS-SSIM gained by the last restart that says "more restarts needed"
UNRELATED_TOL = 0.05  # the largest eps must bring the worst case within this of the unrelated level
STRAIGHT_THROUGH_LIMIT = 0.02  # MS-SSIM between straight-through and plain gradients that flags a disagreement
GRADIENT_FREE = ("square",)  # members whose name starts with one of these use no gradient


def _attack_rows(records: pd.DataFrame) -> pd.DataFrame:
    att = records[records.kind == "attack"].copy()
    att["member"] = att["member"].astype(object).where(att["member"].notna(), "") if "member" in att else ""
    att["msssim"] = pd.to_numeric(att.msssim, errors="coerce")
    return att


def iterations(records: pd.DataFrame) -> pd.DataFrame:
    """Per (curve, k, member, steps): the mean over points of the worst case over restarts of the best-so-far
    MS-SSIM after ``steps`` steps (``member`` empty for a single attack). Empty without recorded curves."""
    att = _attack_rows(records)
    cols = [*KEYS, "member", "steps", "worst", "points"]
    if "curve" not in att or att.curve.isna().all():
        return pd.DataFrame(columns=cols)
    rows = []
    for _, r in att[att.curve.notna()].iterrows():
        for step, v in r.curve.items():
            rows.append({**{c: r[c] for c in [*KEYS, "member", "point"]}, "steps": int(step), "v": float(v)})
    long = pd.DataFrame(rows)
    per_point = long.groupby([*KEYS, "member", "steps", "point"]).v.min()
    g = per_point.groupby([*KEYS, "member", "steps"])
    return pd.DataFrame({"worst": g.mean(), "points": g.size()}).reset_index()[cols]


def restarts(records: pd.DataFrame) -> pd.DataFrame:
    """Per (curve, k, r): the mean over points of the best (lowest) MS-SSIM of the first r restarts, r = 1..R,
    over every member of an ensemble."""
    att = _attack_rows(records)
    rows = []
    for key, g in att.groupby(KEYS):
        by_point = g.pivot_table(index="point", columns="restart", values="msssim", aggfunc="min").sort_index(axis=1)
        best = by_point.cummin(axis=1)
        for r, col in enumerate(best.columns, 1):
            rows.append(
                {
                    **dict(zip(KEYS, key)),
                    "r": r,
                    "worst": float(best[col].mean()),
                    "last_is_best": float((by_point.idxmin(axis=1) == by_point.columns[-1]).mean()),
                }
            )
    return pd.DataFrame(rows, columns=[*KEYS, "r", "worst", "last_is_best"])


def member_wins(records: pd.DataFrame) -> pd.DataFrame:
    """Per (curve, k, member) of an ensemble: on how many points (and what share) that member gave the worst case
    over members and restarts. Ties go to the member listed first. Empty for single attacks."""
    att = _attack_rows(records)
    att = att[att.member != ""]
    cols = [*KEYS, "member", "wins", "share", "points"]
    if att.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, g in att.groupby(KEYS):
        order = list(dict.fromkeys(g.member))
        g = g.sort_values("member", key=lambda m: m.map(order.index), kind="stable")  # ties: the first member
        targeted = "msssim_target" in g and g.msssim_target.notna().any()
        winner = g.member[selection(targeted).strongest(g, ["point"]).to_numpy()]
        for m in order:
            wins = int((winner == m).sum())
            rows.append(
                {**dict(zip(KEYS, key)), "member": m, "wins": wins, "share": wins / len(winner), "points": len(winner)}
            )
    return pd.DataFrame(rows, columns=cols)


def eps_damage(records: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, norm, recon, model, k, eps): the mean worst-case MS-SSIM and the unrelated-images level."""
    att = _attack_rows(records)
    worst = att.groupby([*KEYS, "point"]).msssim.min().groupby(KEYS).mean().rename("worst")
    unrel = records[records.kind == "unrelated"]
    level = pd.to_numeric(unrel.msssim, errors="coerce").groupby([unrel[c] for c in KEYS]).mean().rename("unrelated")
    out = pd.concat([worst, level], axis=1).reset_index()
    keys = ["dataset", "norm", "recon", "model", "k", "eps"]
    return out.dropna(subset=["worst"])[keys + ["worst", "unrelated"]].sort_values(keys).reset_index(drop=True)


def _scope(key: tuple) -> str:
    d = dict(zip(KEYS, key))
    rule = "" if d["recon"] == "default" else f", {d['recon']} rule"
    return f"{d['model']} ({d['dataset']}, {d['norm']} eps {d['eps']:g}{rule}) k={d['k']}"


def strength_checks(records: pd.DataFrame) -> list[dict[str, Any]]:
    """The failure flags as check rows (``check``, ``scope``, ``passed``, ``value``, ``limit``, ``detail``)."""
    out = CheckList()
    att = _attack_rows(records)
    for fn in (_vanishing, _gradient_free, _doubling, _last_restart, _straight_through):
        fn(out.add, att, records)
    _unrelated(out.add, records)
    return out.rows


def _vanishing(add: Callable[..., None], att: pd.DataFrame, records: pd.DataFrame) -> None:
    if "grad_norm" not in att:
        return
    grad = att[att.grad_norm.notna()]
    for key, g in grad.groupby([*KEYS, "member"]):
        vanished = g.grad_norm.astype(float) < GRAD_TOL
        at_floor = vanished & (g.msssim <= MSSSIM_FLOOR)  # nothing left to gain: the start already scored the minimum
        share = float((vanished & ~at_floor).mean())
        who = f" {key[-1]}" if key[-1] else ""
        floor = (
            f"; {int(at_floor.sum())} more at MS-SSIM 0, the metric's minimum, not counted" if at_floor.any() else ""
        )
        numbers = (
            f"{share:.1%} of {len(g)} attack rows start with an objective gradient norm below {GRAD_TOL:g} "
            f"(median {g.grad_norm.astype(float).median():.3g}){floor}"
        )
        add(
            "no vanishing gradient",
            _scope(key[:-1]) + who,
            share <= VANISHING_LIMIT,
            share,
            VANISHING_LIMIT,
            f"gradients present: {numbers}, <= {VANISHING_LIMIT:.0%}",
            f"vanishing gradient: {numbers}, > {VANISHING_LIMIT:.0%}: a vanished gradient masks the attack",
        )


def _gradient_free(add: Callable[..., None], att: pd.DataFrame, records: pd.DataFrame) -> None:
    wins = member_wins(records)
    for key, g in wins.groupby(KEYS):
        free = g[g.member.str.startswith(GRADIENT_FREE)]
        share = float(free.share.sum())
        numbers = (
            f"{', '.join(free.member) or 'no gradient-free member'} gave the worst case on "
            f"{int(free.wins.sum())} of {int(g.points.iloc[0])} points ({share:.0%})"
        )
        add(
            "gradient-free member rarely wins",
            _scope(key),
            share <= GRADIENT_FREE_LIMIT,
            share,
            GRADIENT_FREE_LIMIT,
            f"gradient members win: {numbers}, <= {GRADIENT_FREE_LIMIT:.0%}",
            f"gradient-free member wins often: {numbers}, > {GRADIENT_FREE_LIMIT:.0%}: when random search beats the "
            "gradient members, their gradients are masked",
        )


def _doubling(add: Callable[..., None], att: pd.DataFrame, records: pd.DataFrame) -> None:
    it = iterations(records)
    for key, g in it.groupby([*KEYS, "member"]):
        steps = int(g.steps.max())
        half = g[g.steps == max(steps // 2, 1)]
        if steps < 2 or half.empty:
            continue
        at_half, at_end = float(half.worst.iloc[0]), float(g[g.steps == steps].worst.iloc[0])
        gain = at_half - at_end
        who = f" {key[-1]}" if key[-1] else ""
        numbers = (
            f"mean worst-case MS-SSIM {at_half:.4f} after {max(steps // 2, 1)} steps, {at_end:.4f} after "
            f"{steps}: doubling the steps gained {gain:+.4f}"
        )
        add(
            "more steps no longer pay",
            _scope(key[:-1]) + who,
            gain <= DOUBLING_LIMIT,
            gain,
            DOUBLING_LIMIT,
            f"converged: {numbers} <= {DOUBLING_LIMIT}",
            f"not converged: {numbers} > {DOUBLING_LIMIT}; more steps would still add damage",
        )


def _last_restart(add: Callable[..., None], att: pd.DataFrame, records: pd.DataFrame) -> None:
    rs = restarts(records)
    for key, g in rs.groupby(KEYS):
        if len(g) < 2:
            continue
        g = g.sort_values("r")
        gain = float(g.worst.iloc[-2] - g.worst.iloc[-1])
        numbers = (
            f"mean best-of-r MS-SSIM {g.worst.iloc[-2]:.4f} at r={len(g) - 1}, {g.worst.iloc[-1]:.4f} at "
            f"r={len(g)}: the last restart gained {gain:+.4f} (best on {g.last_is_best.iloc[-1]:.0%} of points)"
        )
        add(
            "more restarts no longer pay",
            _scope(key),
            gain <= RESTART_LIMIT,
            gain,
            RESTART_LIMIT,
            f"restarts saturated: {numbers} <= {RESTART_LIMIT}",
            f"more restarts still pay: {numbers} > {RESTART_LIMIT}",
        )


def _straight_through(add: Callable[..., None], att: pd.DataFrame, records: pd.DataFrame) -> None:
    if "gradient_check" not in att:
        return
    both = att[att.gradient_check.apply(lambda c: isinstance(c, dict))]
    for key, g in both.groupby([*KEYS, "member"]):
        st = float(g.gradient_check.apply(lambda c: c["straight_through"]).mean())
        plain = float(g.gradient_check.apply(lambda c: c["plain"]).mean())
        gap = abs(st - plain)
        numbers = (
            f"{key[-1]} on {len(g)} points: mean MS-SSIM {st:.4f} with straight-through gradients, {plain:.4f} "
            f"with plain ones (difference {gap:.4f})"
        )
        add(
            "straight-through and plain gradients agree",
            _scope(key[:-1]),
            gap <= STRAIGHT_THROUGH_LIMIT,
            gap,
            STRAIGHT_THROUGH_LIMIT,
            f"agree: {numbers} <= {STRAIGHT_THROUGH_LIMIT}",
            f"disagree: {numbers} > {STRAIGHT_THROUGH_LIMIT}: the weaker way's gradient misleads the attack (masked, "
            "or biased by the straight-through estimate); trust the stronger",
        )


def _unrelated(add: Callable[..., None], records: pd.DataFrame) -> None:
    eps = eps_damage(records)
    for key, g in eps.groupby(["dataset", "norm", "recon", "model", "k"]):
        if g.eps.nunique() < 2 or g.unrelated.isna().all():
            continue
        top = g.sort_values("eps").iloc[-1]
        gap = float(top.worst - top.unrelated)
        dataset, norm, recon, model, k = key
        numbers = f"at eps {top.eps:g} worst-case MS-SSIM {top.worst:.4f}, unrelated images {top.unrelated:.4f}"
        add(
            "largest eps reaches unrelated images",
            f"{model} ({dataset}, {norm}) k={k}",
            not math.isnan(gap) and gap <= UNRELATED_TOL,
            gap,
            UNRELATED_TOL,
            f"reaches unrelated images: {numbers}, within {UNRELATED_TOL}",
            f"short of unrelated images: {numbers}, {gap:+.4f} above (> {UNRELATED_TOL}): an attack that cannot "
            "reach the unrelated level at a large budget is too weak (or the budget too small)",
        )


def strength_summary(records: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """The evidence tables for ``summary.json``."""
    return {
        "iterations": iterations(records).to_dict("records"),
        "restarts": restarts(records).to_dict("records"),
        "eps": eps_damage(records).to_dict("records"),
        "member_wins": member_wins(records).to_dict("records"),
    }


def strength_tables(records: pd.DataFrame) -> list[tuple[str, pd.DataFrame, int]]:
    """(title, table of text cells, key columns) of each non-empty evidence table, for the report page."""

    def cells(df: pd.DataFrame, drop: tuple[str, ...] = ("dataset", "recon")) -> pd.DataFrame:
        df = df.drop(columns=[c for c in drop if c in df])
        return df.apply(lambda col: col.map(lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)))

    out = [
        ("Which ensemble member gave the worst case (points won, per model and k)", member_wins(records), 4),
        (
            "Damage against iterations: mean over points of the worst case over restarts after n steps",
            iterations(records),
            5,
        ),
        ("Damage against restarts: mean over points of the best of the first r restarts", restarts(records), 4),
        ("Damage against eps beside the unrelated-images level", eps_damage(records), 3),
    ]
    return [(title, cells(df), left) for title, df, left in out if len(df)]
