"""What the attacked layers carry: the confounders of comparing two models' robustness at a k, stated by the report.

A model looks "robust" at k when attacking its top k layers changes little, but that is
also what happens when those layers carry little about x: a collapsed layer cannot be
fooled because nothing in the reconstruction depends on it. Beside each comparison of
models at a k the report therefore states, per curve (:func:`add_carried`):

* ``attacked_kl_nats``: the KL of the attacked layers 1..k in nats (for a DCT-VAE
  context, its diffusion bound on -log p(context)), an upper bound on the information
  they carry about x, from ``run.json``'s layer diagnostics (else an eval file's);
* ``attacked_active_units`` / ``attacked_units``: active units of the attacked Gaussian
  layers, and ``context_levels_used`` / ``context_levels`` when the context is among them;
* ``unrelated``: the MS-SSIM between the point's reconstruction and an unrelated test
  image's (the attack's ``unrelated`` rows), so ``ceiling = no_attack - unrelated`` is the
  damage of replacing the image altogether: the most an attack can be expected to do;
* ``ceiling_share_mean`` / ``ceiling_share_worst``: the paired drop divided by that ceiling,
  ``(no_attack - msssim) / (no_attack - msssim_unrelated)``, i.e.
  ``(1 - msssim) / (1 - msssim_unrelated)`` under the default rule; NaN where the
  ceiling is not above 0 (the reconstruction does not depend on x at that k).

:func:`carried_notes` writes a note where two compared checkpoints' attacked layers
differ in KL by :data:`NOTE_FACTOR` or more.
"""

from __future__ import annotations

import itertools
import math
import numpy as np
import pandas as pd

from robustvae.reporting.load import PANEL_KEYS

# A note when the attacked layers of two compared checkpoints differ in KL by this factor or more. An order of
# magnitude: the KL bounds what the layers carry about x, and below a factor of 10 the damage relative to the
# ceiling (which already measures what the layers can change) is the better guide; at 10x or more one model has
# so much less to lose that its smaller drop says more about its layers than about its robustness (docs/protocol.md
# says which k it marks in the reference report).
NOTE_FACTOR = 10.0
CARRIED_COLUMNS = [
    "attacked_kl_nats",
    "attacked_active_units",
    "attacked_units",
    "context_levels_used",
    "context_levels",
    "ceiling",
    "ceiling_share_mean",
    "ceiling_share_worst",
]


def _per_checkpoint(diag: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {sha: g.sort_values("layer") for sha, g in diag.groupby("sha256")}


def add_carried(table: pd.DataFrame, diag: pd.DataFrame) -> pd.DataFrame:
    """The results table with :data:`CARRIED_COLUMNS` added (see the module docstring); numbers only."""
    out = table.copy()
    layers = _per_checkpoint(diag) if len(diag) else {}
    cols: dict[str, list[float]] = {c: [] for c in CARRIED_COLUMNS[:5]}
    for sha, k in zip(out.checkpoint_sha256, out.k):
        g = layers.get(sha)
        top = g[g.layer <= k] if g is not None else None
        if top is None or top.empty or len(top) < k:  # no diagnostics for (all of) the attacked layers
            for c in cols:
                cols[c].append(math.nan)
            continue
        gauss, ctx = top[top.kind != "context"], top[top.kind == "context"]
        cols["attacked_kl_nats"].append(float(pd.to_numeric(top.kl_nats, errors="coerce").sum(min_count=len(top))))
        cols["attacked_active_units"].append(float(pd.to_numeric(gauss.active_units, errors="coerce").sum()))
        cols["attacked_units"].append(float(pd.to_numeric(gauss.units, errors="coerce").sum()))
        cols["context_levels_used"].append(float(ctx.levels_used.iloc[0]) if len(ctx) else math.nan)
        cols["context_levels"].append(float(ctx.levels.iloc[0]) if len(ctx) else math.nan)
    for c, v in cols.items():
        out[c] = np.asarray(v, dtype=float)
    ceiling = (out.no_attack - out.unrelated) if "unrelated" in out else pd.Series(math.nan, out.index)
    out["ceiling"] = ceiling
    for view in ("mean", "worst"):
        out[f"ceiling_share_{view}"] = (out[f"drop_{view}"] / ceiling).where(ceiling > 0)
    return out


def _checkpoint_name(rows: pd.DataFrame) -> str:
    return str(rows.model_label.iloc[0]) if "model_label" in rows else str(rows.model.iloc[0])


def carried_notes(table: pd.DataFrame) -> list[str]:
    """Per k and pair of compared checkpoints whose attacked layers differ in KL by :data:`NOTE_FACTOR` or more: a
    note naming both KLs, the factor, and each curve's drop relative to its ceiling (per panel)."""
    if "attacked_kl_nats" not in table or table.attacked_kl_nats.isna().all():
        return []
    out = []
    for k, at_k in table.groupby("k", sort=True):
        checkpoints = {
            sha: g for sha, g in at_k.groupby("checkpoint_sha256", sort=False) if g.attacked_kl_nats.notna().any()
        }
        for a, b in itertools.combinations(checkpoints.values(), 2):
            ka, kb = float(a.attacked_kl_nats.iloc[0]), float(b.attacked_kl_nats.iloc[0])
            (less, kl_less), (more, kl_more) = sorted([(a, ka), (b, kb)], key=lambda t: t[1])
            factor = math.inf if kl_less <= 0 else kl_more / kl_less
            if factor < NOTE_FACTOR:
                continue
            times = "infinitely many times" if math.isinf(factor) else f"{factor:.0f} times"
            out.append(
                f"k={int(k)}: the attacked layers of {_checkpoint_name(less)} carry {kl_less:.3g} nats, those of "
                f"{_checkpoint_name(more)} {kl_more:.3g} nats, {times} more (this note is written from "
                f"{NOTE_FACTOR:g} times): a smaller drop of {_checkpoint_name(less)} at this k says more about what its "
                f"layers carry than about its robustness. Drop relative to the ceiling (what an unrelated image does), "
                f"worst case: {_shares(pd.concat([less, more]))}."
            )
    return out


def _shares(rows: pd.DataFrame) -> str:
    """``model 0.13, model 0.57`` per curve (with the panel when there are several)."""
    several = rows[PANEL_KEYS].drop_duplicates().shape[0] > 1
    parts = []
    for _, r in rows.iterrows():
        where = f" ({r.dataset}, {r.norm} eps {r.eps:g})" if several else ""
        share = "-" if pd.isna(r.ceiling_share_worst) else f"{r.ceiling_share_worst:.2f}"
        parts.append(f"{r.model}{where} {share}")
    return ", ".join(parts)
