"""The report's tables as text cells, ready to print: the same cells in Markdown, LaTeX, HTML and on a console.

Each ``display_*`` function takes a frame of numbers (the results table of
:func:`robustvae.reporting.aggregate.summarise`, the checks, the layer diagnostics,
compression rows or their :func:`summary_table`) and returns a frame of strings:
every number formatted, a missing one (None / NaN) as ``-``. No cell is cut and no
width is assumed; :func:`markdown` lays a frame out as a plain-text (Markdown)
table, e.g. for a console.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from robustvae.reporting.aggregate import CI_LEVEL
from robustvae.reporting.load import PANEL_KEYS

COMPRESSION_MEANS = ["psnr", "msssim", "bpp", "bpp_context_raw", "jpeg_quality", "jpeg_psnr", "jpeg_msssim", "jpeg_bpp"]
COMPRESSION_CELLS = [
    ("PSNR (dB)", "psnr", ".2f"),
    ("MS-SSIM", "msssim", ".4f"),
    ("bpp", "bpp", ".4f"),
    ("BPP* (raw context)", "bpp_context_raw", ".4f"),
    ("JPEG quality", "jpeg_quality", "g"),
    ("JPEG PSNR (dB)", "jpeg_psnr", ".2f"),
    ("JPEG MS-SSIM", "jpeg_msssim", ".4f"),
    ("JPEG bpp", "jpeg_bpp", ".4f"),
]


# what the results table (display_table) holds, for its caption on a console and on the page
TABLE_CAPTION = (
    f"Per model and k: the paired drop (no-attack level minus MS-SSIM(clean reconstruction, attacked "
    f"reconstruction); larger = more damage), then that MS-SSIM itself; means over points "
    f"[{CI_LEVEL} % bootstrap interval]"
)


def number(v: Any, fmt: str = ".3f") -> str:
    """A number for a table cell; missing (None / NaN) shows as ``-``."""
    return "-" if v is None or pd.isna(v) else format(v, fmt)


def with_interval(v: float, lo: float, hi: float) -> str:
    """``v [lo, hi]``, or ``v`` alone when there is no interval."""
    return number(v) if pd.isna(lo) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The results table as text cells; panel columns (dataset, norm, eps) only when there are several panels.

    ``table``: :func:`robustvae.reporting.aggregate.summarise`'s frame, or ``summary.json``'s
    ``table`` as a frame.
    """
    several = table[PANEL_KEYS].drop_duplicates().shape[0] > 1
    out = pd.DataFrame()
    if several:
        out["dataset"], out["norm"], out["eps"] = table.dataset, table.norm, table.eps.map(lambda v: f"{v:g}")
        out["rule"] = table.recon
    out["model"] = table.model
    if "attack" in table:  # the attack (an ensemble by its version) behind each curve
        out["attack"] = table.attack.fillna("").astype(str).to_numpy()
    out["k"] = table.k.astype(int)
    out["points"] = table.points
    out["restarts"] = table.restarts
    if "members" in table and table.members.notna().any():  # ensemble rows: the worst case also runs over members
        out["members"] = table.members.fillna(1).astype(int)
    ci = f"{CI_LEVEL}% CI"
    for view, label in (("mean", "mean over restarts"), ("worst", "worst case")):
        if f"drop_{view}" in table:
            out[f"drop, {label} [{ci}]"] = [
                with_interval(v, lo, hi)
                for v, lo, hi in zip(table[f"drop_{view}"], table[f"drop_{view}_lo"], table[f"drop_{view}_hi"])
            ]
    for view, label in (("mean", "mean over restarts"), ("worst", "worst case")):
        out[f"MS-SSIM, {label} [{ci}]"] = [
            with_interval(v, lo, hi) for v, lo, hi in zip(table[view], table[f"{view}_lo"], table[f"{view}_hi"])
        ]
    if "no_attack" in table:
        out["no-attack level"] = table.no_attack.map(number)
    out["noise"] = table.noise.map(number)
    out["floor"] = table.floor.map(number)
    out["max L-inf(delta)"] = table.max_delta_linf.map(lambda v: number(v, ".4f"))
    out["max L2(delta)"] = table.max_delta_l2.map(lambda v: number(v, ".3f"))
    out["non-finite"] = table.nonfinite
    if "layer_kl_nats" in table:
        out["KL of layer k (nats)"] = table.layer_kl_nats.map(number)
        out["active units of layer k"] = [
            "context" if pd.isna(a) and not pd.isna(u) else ("-" if pd.isna(a) else f"{int(a)}/{int(u)}")
            for a, u in zip(table.layer_active_units, table.layer_units)
        ]
    return out.reset_index(drop=True)


def display_carried(table: pd.DataFrame) -> pd.DataFrame:
    """What the attacked layers carry beside the damage, as text cells: a row per curve, models compared at a k
    next to each other (:mod:`robustvae.reporting.confounders`)."""
    t = table.sort_values([*PANEL_KEYS, "k", "model"], kind="stable")
    out = pd.DataFrame()
    if t[PANEL_KEYS].drop_duplicates().shape[0] > 1:
        out["panel"] = [f"{d}, {n} eps {e:g}, {r}" for d, n, e, r in zip(t.dataset, t.norm, t.eps, t.recon)]
    out["k"] = t.k.astype(int).to_numpy()
    out["model"] = t.model.to_numpy()
    out["KL of layers 1..k (nats)"] = t.attacked_kl_nats.map(lambda v: number(v, ".3g")).to_numpy()
    out["what layers 1..k use"] = [
        "-"
        if pd.isna(u)
        else ", ".join(
            ([f"context {number(lu, '.2f')}/{number(lv, '.0f')} levels"] if not pd.isna(lv) else [])
            + ([f"{int(a)}/{int(u)} active units"] if u > 0 else [])
        )
        for a, u, lu, lv in zip(t.attacked_active_units, t.attacked_units, t.context_levels_used, t.context_levels)
    ]
    out["unrelated image MS-SSIM"] = t.unrelated.map(number).to_numpy()
    out["ceiling (no-attack - unrelated)"] = t.ceiling.map(number).to_numpy()
    out["drop, worst case"] = t.drop_worst.map(number).to_numpy()
    out["drop / ceiling, worst case"] = t.ceiling_share_worst.map(lambda v: number(v, ".2f")).to_numpy()
    out["drop / ceiling, mean over restarts"] = t.ceiling_share_mean.map(lambda v: number(v, ".2f")).to_numpy()
    return out.reset_index(drop=True)


def display_layers(diag: pd.DataFrame) -> pd.DataFrame:
    """Per-layer diagnostics as text cells; a context layer shows the quantiser levels it uses."""
    out = pd.DataFrame(
        {
            "model": diag.model,
            "layer": diag.layer,
            "resolution": diag.resolution,
            "units": diag.units,
            "KL (nats)": diag.kl_nats.map(number),
        }
    )
    out["active units"] = [
        f"context: {number(lu, '.2f')}/{number(lv, '.0f')} levels used" if k == "context" else number(a, ".0f")
        for k, a, lu, lv in zip(diag.kind, diag.active_units, diag.levels_used, diag.levels)
    ]
    return out


def display_atlas(atlas: pd.DataFrame) -> pd.DataFrame:
    """The layer atlas as text cells: utilisation beside the damage of attacking each layer."""
    several = atlas[PANEL_KEYS].drop_duplicates().shape[0] > 1
    out = pd.DataFrame()
    if several:
        out["panel"] = [
            f"{d}, {n} eps {e:g}, {r}" for d, n, e, r in zip(atlas.dataset, atlas.norm, atlas.eps, atlas.recon)
        ]
    out["model"], out["layer"] = atlas.model, atlas.layer
    out["KL (nats)"] = atlas.kl_nats.map(number)
    out["utilisation"] = [
        f"context: {number(lu, '.2f')}/{number(lv, '.0f')} levels used"
        if kind == "context"
        else f"{number(a, '.0f')}/{number(u, '.0f')} active units"
        for kind, a, u, lu, lv in zip(atlas.kind, atlas.active_units, atlas.units, atlas.levels_used, atlas.levels)
    ]
    out["drop at k = layer"] = atlas["drop"].map(number)
    out["marginal damage of the layer"] = atlas.marginal.map(lambda v: "-" if pd.isna(v) else f"{v:+.3f}")
    return out.reset_index(drop=True)


def display_checks(checks: pd.DataFrame) -> pd.DataFrame:
    """The checks as text cells, with ``pass`` / ``FAIL`` spelled out (readable in black and white)."""
    out = checks.copy()
    out["result"] = out.passed.map({True: "pass", False: "FAIL"})
    out["value"] = out.value.map(lambda v: number(v, ".4g"))
    out["limit"] = out.limit.map(lambda v: number(v, ".4g"))
    return out[["check", "scope", "result", "value", "limit", "detail"]]


def summary_table(records: pd.DataFrame) -> pd.DataFrame:
    """Compression rows -> per model and k: images, and the means over images of every score (JPEG beside)."""
    numbers = records[COMPRESSION_MEANS].apply(pd.to_numeric)  # None (from JSON) -> NaN
    g = numbers.groupby([records.model, records.k], sort=True)
    out = g.mean()
    out.insert(0, "images", g.size())
    scored = records[["psnr", "msssim"]].apply(pd.to_numeric).astype(float)
    bad = np.isnan(scored.to_numpy()).any(axis=1)  # not scored: left out of the means, counted here (+inf PSNR: exact)
    out["nonfinite"] = pd.Series(bad, records.index).groupby([records.model, records.k], sort=True).sum().astype(int)
    return out.reset_index()


def display_compression(df: pd.DataFrame) -> pd.DataFrame:
    """Compression rows (per image, or the means of :func:`summary_table`) as text cells."""
    out = df[[c for c in ("image", "model", "k", "images") if c in df]].reset_index(drop=True)
    for label, col, fmt in COMPRESSION_CELLS:
        out[label] = [number(v, fmt) for v in df[col]]
    if "nonfinite" in df and df.nonfinite.any():
        out["non-finite (not scored)"] = df.nonfinite.astype(int).astype(str).to_numpy()
    return out


def markdown(cells: pd.DataFrame) -> str:
    """Text cells as a Markdown (pipe) table, every cell whole, ending in a newline."""
    return cells.to_markdown(index=False, disable_numparse=True) + "\n"


def to_latex(cells: pd.DataFrame) -> str:
    """A booktabs tabular of text cells, LaTeX specials escaped in cells and headers."""
    return (
        cells.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1).to_latex(hrules=True)
    )
