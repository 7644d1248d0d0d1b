"""Certification runs in reports: the certified-radius distribution, the certified fraction against eps,
the optimal context attack's k = 1 MS-SSIM, and its gap to the best gradient attack on the same points.

:func:`certify_table` is the console / summary table of a certification run
(:mod:`robustvae.experiments.certify`); :func:`certify_section` adds the report's section
(HTML, a figure, ``summary.json["certify"]``) when certification run directories are
among a report's inputs (detected by ``run.json["kind"] == "certify"``).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustvae.records import CERTIFY_RUN_KIND, read_attack_records
from robustvae.io import read_jsonl

CERTIFICATE_NOTE = (
    "For a certified point the k = 1 reconstruction under the default protocol (shared prior noise) is provably "
    "identical to the clean one for every perturbation of the budget: this is a certificate, not a measurement.")


def is_certify_run(path: str | Path) -> bool:
    """Whether a directory holds a certification run (its run.json says so)."""
    p = Path(path)
    for info in sorted(p.glob("run*.json")):
        try:
            return json.loads(info.read_text()).get("kind") == CERTIFY_RUN_KIND
        except ValueError:
            return False
    return False


def read_certify_records(paths: list[str | Path]) -> pd.DataFrame:
    """Every record of the certification runs (shards merge)."""
    rows = [r for p in paths for f in sorted(Path(p).glob("records*.jsonl")) for r in read_jsonl(f)]
    return pd.DataFrame(rows)


def _q(s: pd.Series, q: float) -> float:
    s = s.fillna(np.inf)  # null radius: no image in [0, 1] changes the context
    return float(np.quantile(s.to_numpy(dtype=float), q)) if len(s) else float("nan")


def radius_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and norm: points, certified radius median, 10th and 90th percentile (one radius per point)."""
    one = df.drop_duplicates(["model", "norm", "point"])
    rows = [{"model": m, "norm": n, "points": len(g), "radius_p10": _q(g.radius, 0.1),
             "radius_median": _q(g.radius, 0.5), "radius_p90": _q(g.radius, 0.9)}
            for (m, n), g in one.groupby(["model", "norm"], sort=False)]
    return pd.DataFrame(rows)


def certify_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, norm and eps: certified fraction, radius quantiles, and the optimal attack's means."""
    rows = []
    for (m, n, e), g in df.groupby(["model", "norm", "eps"], sort=False):
        row: dict[str, Any] = {"model": m, "norm": n, "eps": e, "points": len(g), "certified": float(g.certified.mean()),
                               "radius_median": _q(g.radius, 0.5)}
        if "msssim_k1" in g and g.msssim_k1.notna().any():
            row.update(msssim_k1_mean=float(g.msssim_k1.mean()), msssim_k1_min=float(g.msssim_k1.min()),
                       decoded_l2_mean=float(g.optimal_decoded_l2.mean()),
                       max_joint_mean=float(g.max_joint_changes.mean()),
                       proven=float(g.optimal_proven.mean()), solve_s_mean=float(g.solve_time_s.mean()))
        rows.append(row)
    return pd.DataFrame(rows)


def display_certify(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text cells for the console (Markdown)."""
    return table.apply(lambda col: col.map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)))
