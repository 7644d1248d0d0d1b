"""The report's "Defences" section: undefended vs defended (non-adaptive) vs defended (adaptive), from the records.

Runs of one model with and without a defence are matched by checkpoint and panel (dataset,
norm, eps, rule) and by point (the same ``--seed`` and ``--points`` select the same points).
Per model and k the section shows the worst case over restarts (mean over points with the
95 % bootstrap interval of :func:`~robustvae.reporting.aggregate.mean_interval`) of

* the undefended model,
* the defended model under the non-adaptive attack (the attack on the model, scored
  through the defence) and under the adaptive one (through the defence),
* the **defended robustness**: per point the worst case over both kinds;

beside the no-attack level with the defence (MS-SSIM between the defended and the
undefended clean reconstruction: the defence's fidelity cost; 1 without it under the
default rule), the chain's acceptance rate and step size, and the cost: the defence's
model passes and seconds per image, the adaptive attack's per point (all its restarts).

Check (among the report's checks): **adaptive attack not weaker than non-adaptive**, per
model and k: the mean over points of the adaptive attack's worst case may exceed the
non-adaptive one's by at most :data:`~robustvae.reporting.aggregate.MONOTONE_TOL` (0.01): an
adaptive attack that does worse than a transfer of the plain attack is broken.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import pandas as pd

from robustvae.reporting.aggregate import CI_LEVEL, MONOTONE_TOL, mean_interval
from robustvae.reporting.load import PANEL_KEYS

KINDS = {
    "undefended": "undefended",
    "nonadaptive": "defended, non-adaptive",
    "adaptive": "defended, adaptive",
    "robust": "defended robustness (worst of both)",
}
CHECK = "adaptive attack not weaker than non-adaptive"


def has_defences(records: pd.DataFrame) -> bool:
    """Whether any record comes from a defended sweep."""
    return "defence" in records and records.defence.notna().any()


def _stat(rows: pd.Series, key: str) -> pd.Series:
    return rows.map(lambda d: d.get(key, math.nan) if isinstance(d, dict) else math.nan).astype(float)


def _worst(records: pd.DataFrame) -> pd.Series:
    """Worst case over restarts (and ensemble members) per (k, point)."""
    att = records[records.kind == "attack"]
    return (
        att.msssim.astype(float)
        .where(np.isfinite(att.msssim.astype(float)))
        .groupby([att.k.astype(int), att.point.astype(int)])
        .min()
    )


def _groups(records: pd.DataFrame) -> list[tuple[tuple, str, str, dict[str, pd.DataFrame]]]:
    """Per (panel, checkpoint, defence): (panel key, base model label, defence, {kind: its records})."""
    df = records.copy()
    df["defence"] = df.defence if "defence" in df else None
    adaptive = df.adaptive.fillna(False).astype(bool) if "adaptive" in df else pd.Series(False, df.index)
    out = []
    for key, g in df.groupby([*PANEL_KEYS, "checkpoint_sha256"], sort=True):
        base = g[g.defence.isna()]
        for name in sorted(g.defence.dropna().unique()):
            d = g[g.defence == name]
            parts = {"undefended": base, "nonadaptive": d[~adaptive[d.index]], "adaptive": d[adaptive[d.index]]}
            label = base.model.iloc[0] if len(base) else str(d.model.iloc[0]).split("+")[0]
            out.append((tuple(key[:-1]), label, str(name), parts))
    return out


def defence_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (panel, model, defence, k): the three curves, the defended robustness, fidelity, chain, cost."""
    rows = []
    for panel, label, name, parts in _groups(records):
        worst = {kind: _worst(p) for kind, p in parts.items() if len(p)}
        if "nonadaptive" in worst and "adaptive" in worst:
            both = pd.concat([worst["nonadaptive"], worst["adaptive"]], axis=1)
            worst["robust"] = both.min(axis=1, skipna=False)
        ks = sorted({k for w in worst.values() for k, _ in w.index})
        for k in ks:
            row: dict[str, Any] = {**dict(zip(PANEL_KEYS, panel)), "model": label, "defence": name, "k": k}
            for kind in KINDS:
                w = worst.get(kind)
                vals = (
                    w.xs(k, level=0) if w is not None and k in w.index.get_level_values(0) else pd.Series(dtype=float)
                )
                row[kind], row[f"{kind}_lo"], row[f"{kind}_hi"] = mean_interval(vals)
                row[f"{kind}_points"] = int(vals.notna().sum())
            for kind in ("undefended", "nonadaptive", "adaptive"):
                p = parts[kind]
                na = p[(p.kind == "no_attack") & (p.k == k)].msssim.astype(float) if len(p) else pd.Series(dtype=float)
                row[f"{kind}_no_attack"] = float(na.mean()) if len(na) else math.nan
            defended = pd.concat([parts["nonadaptive"], parts["adaptive"]])
            scored = defended[(defended.k == k) & defended.kind.isin(["attack", "no_attack"])]
            stats = scored.defence_stats if "defence_stats" in scored else pd.Series(dtype=object)
            row["accept_rate"] = float(_stat(stats, "accept").mean()) if len(stats) else math.nan
            row["step_size"] = float(_stat(stats, "step_size").mean()) if len(stats) else math.nan
            row["step_size_min"] = float(_stat(stats, "step_size").min()) if len(stats) else math.nan
            row["step_size_max"] = float(_stat(stats, "step_size").max()) if len(stats) else math.nan
            row["defence_passes_per_image"] = float(_stat(stats, "passes").mean()) if len(stats) else math.nan
            row["defence_seconds_per_image"] = float(_stat(stats, "seconds").mean()) if len(stats) else math.nan
            adv = parts["adaptive"]
            adv = adv[(adv.k == k) & (adv.kind == "attack")] if len(adv) else adv
            if len(adv) and "attack_cost" in adv:
                per_point = adv.assign(s=_stat(adv.attack_cost, "seconds"), n=_stat(adv.attack_cost, "passes"))
                sums = per_point.groupby("point")[["s", "n"]].sum()
                row["adaptive_seconds_per_point"] = float(sums.s.mean())
                row["adaptive_passes_per_point"] = float(sums.n.mean())
            else:
                row["adaptive_seconds_per_point"] = row["adaptive_passes_per_point"] = math.nan
            settings = defended.defence_settings.dropna() if "defence_settings" in defended else pd.Series(dtype=object)
            row["settings"] = settings.iloc[0] if len(settings) else None
            rows.append(row)
    return pd.DataFrame(rows)


def defence_checks(records: pd.DataFrame) -> list[dict[str, Any]]:
    """Per model, defence and k with both kinds of attack: the adaptive one is not weaker (mean worst case higher
    by at most MONOTONE_TOL), with the paired per-point difference and its interval in the detail."""
    out = []
    for panel, label, name, parts in _groups(records):
        if not (len(parts["nonadaptive"]) and len(parts["adaptive"])):
            continue
        both = pd.concat(
            [_worst(parts["nonadaptive"]).rename("plain"), _worst(parts["adaptive"]).rename("adaptive")], axis=1
        )
        for k, g in both.groupby(level=0):
            g = g.dropna()
            gap, lo, hi = mean_interval(g.adaptive - g.plain)
            scope = (
                f"{label}+{name} ({panel[0]}, {panel[1]} eps {panel[2]:g}"
                + ("" if panel[3] == "default" else f", {panel[3]} rule")
                + f") k={k}"
            )
            passed = not math.isnan(gap) and gap <= MONOTONE_TOL
            out.append(
                {
                    "check": CHECK,
                    "scope": scope,
                    "passed": bool(passed),
                    "value": float(gap),
                    "limit": MONOTONE_TOL,
                    "detail": f"adaptive minus non-adaptive worst-case MS-SSIM, paired over {len(g)} points: "
                    f"{gap:+.4f} [{lo:+.4f}, {hi:+.4f}] (adaptive {g.adaptive.mean():.4f}, non-adaptive "
                    f"{g.plain.mean():.4f}); fails when the adaptive attack is weaker by more than "
                    f"{MONOTONE_TOL}"
                    if len(g)
                    else "no point attacked by both",
                }
            )
    return out


def display_defences(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the report shows it: one line per model, defence and k."""

    def ci(r, kind):
        v = r[kind]
        if math.isnan(v):
            return "-"
        lo, hi = r[f"{kind}_lo"], r[f"{kind}_hi"]
        return f"{v:.4f}" + ("" if math.isnan(lo) else f" [{lo:.3f}, {hi:.3f}]")

    def num(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    rows = []
    for _, r in table.iterrows():
        rows.append(
            {
                "model": r.model,
                "defence": r.defence,
                "eps": f"{r.eps:g}",
                "k": int(r.k),
                "undefended": ci(r, "undefended"),
                "defended, non-adaptive": ci(r, "nonadaptive"),
                "defended, adaptive": ci(r, "adaptive"),
                "defended robustness": ci(r, "robust"),
                "no-attack, undefended": num(r.undefended_no_attack, ".4f"),
                "no-attack, defended": num(
                    r.nonadaptive_no_attack if not math.isnan(r.nonadaptive_no_attack) else r.adaptive_no_attack, ".4f"
                ),
                "accept rate": num(r.accept_rate, ".3f"),
                "step size": "-"
                if math.isnan(r.step_size)
                else f"{r.step_size:.4f} ({r.step_size_min:.4f}..{r.step_size_max:.4f})",
                "defence passes / image": num(r.defence_passes_per_image, ".0f"),
                "defence s / image": num(r.defence_seconds_per_image, ".3g"),
                "adaptive attack passes / point": num(r.adaptive_passes_per_point, ".0f"),
                "adaptive attack s / point": num(r.adaptive_seconds_per_point, ".3g"),
            }
        )
    return pd.DataFrame(rows)


def defences_figure(table: pd.DataFrame):
    """Worst-case MS-SSIM against k: a panel per (panel, model, defence), the three curves and the defended
    robustness with their intervals, the no-attack levels with and without the defence as reference lines."""
    from robustvae.reporting.figures import new_figure

    keys = list(table.groupby([*PANEL_KEYS, "model", "defence"], sort=True).groups)
    fig = new_figure(4.2 * len(keys), 3.4)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    styles = {"undefended": ("C0", "o"), "nonadaptive": ("C1", "s"), "adaptive": ("C3", "^"), "robust": ("k", "")}
    for ax, key in zip(axes, keys):
        g = table.set_index([*PANEL_KEYS, "model", "defence"]).loc[key].sort_values("k")
        g = g.to_frame().T if isinstance(g, pd.Series) else g
        for kind, (color, marker) in styles.items():
            y = g[kind].to_numpy(float)
            if np.isnan(y).all():
                continue
            err = np.vstack([y - g[f"{kind}_lo"].to_numpy(float), g[f"{kind}_hi"].to_numpy(float) - y])
            ax.errorbar(
                g.k.to_numpy(int),
                y,
                yerr=np.nan_to_num(err),
                color=color,
                marker=marker or None,
                linestyle="--" if kind == "robust" else "-",
                capsize=3,
                label=KINDS[kind],
            )
        for col, color, text in (
            ("undefended_no_attack", "C0", "no attack, undefended"),
            ("nonadaptive_no_attack", "C1", "no attack, defended"),
        ):
            v = g[col].to_numpy(float)
            if not np.isnan(v).all():
                ax.plot(g.k.to_numpy(int), v, color=color, linestyle=":", label=text)
        dataset, norm, eps, recon, model, defence = key
        ax.set_title(
            f"{model} + {defence}\n{dataset}, {norm} eps {eps:g}" + ("" if recon == "default" else f", {recon}"),
            fontsize=9,
        )
        ax.set_xlabel("k (top layers under attack)")
        ax.set_ylabel(f"MS-SSIM, worst case over restarts ({CI_LEVEL} % CI)")
        ax.set_xticks(sorted(g.k.astype(int).unique()))
    axes[0].legend(fontsize=7, loc="lower left")
    return fig


def defence_part(records: pd.DataFrame) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, bytes]]:
    """(summary entry, page context, files by name) of the Defences section; (None, None, {}) without defended runs."""
    from robustvae.reporting.figures import png_bytes
    from robustvae.reporting.tables import markdown

    if not has_defences(records):
        return None, None, {}
    table = defence_table(records)
    if table.empty:
        return None, None, {}
    shown = display_defences(table)
    png = png_bytes(defences_figure(table))
    files = {
        "defences.png": png,
        "defences.csv": table.drop(columns="settings").to_csv(index=False).encode(),
        "defences.md": markdown(shown).encode(),
    }
    settings = sorted({repr(s) for s in table.settings if s is not None})
    summary = {"table": table.to_dict("records"), "checks": defence_checks(records), "files": list(files)}
    context = {
        "figure": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        "table": {"headers": list(shown.columns), "rows": shown.astype(str).values.tolist(), "left": 2},
        "settings": settings,
    }
    return summary, context, files
