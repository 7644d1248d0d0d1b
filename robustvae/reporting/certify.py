"""Certification runs in reports: the certified-radius distribution, the certified fraction against eps,
the optimal context attack's k = 1 MS-SSIM, and its gap to the best gradient attack on the same points.

:func:`certify_table` is the console / summary table of a certification run
(:mod:`robustvae.experiments.certify`); :func:`certify_section` adds the report's section
(HTML, a figure, ``summary.json["certify"]``) when certification run directories are
among a report's inputs (detected by ``run.json["kind"] == "certify"``).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustvae.records import CERTIFY_RUN_KIND, CertifyRecord, read_attack_records, read_certify_rows
from robustvae.reporting.load import attack_name, ensemble_version
from robustvae.validation import CertifyRun, read_json

CERTIFICATE_NOTE = (
    "For a certified point the k = 1 reconstruction under the default protocol (shared prior noise) is provably "
    "identical to the clean one for every perturbation of the budget: this is a certificate, not a measurement.")


def is_certify_run(path: str | Path) -> bool:
    """Whether a directory holds a certification run (its run.json says so)."""
    p = Path(path)
    for info in sorted(p.glob("run*.json")):
        try:
            obj = json.loads(info.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(obj, dict) and obj.get("kind") == CERTIFY_RUN_KIND
    return False


def read_certify_records(paths: list[str | Path]) -> pd.DataFrame:
    """Every record of the certification runs (shards merge), with its run directory's name as ``run``."""
    rows = [{**r, "run": Path(p).name} for p in paths for f in sorted(Path(p).glob("records*.jsonl"))
            for r in read_certify_rows(f)]
    df = pd.DataFrame(rows)
    for col in CertifyRecord.columns():  # optional fields no row holds are still columns (of NaN)
        if col not in df:
            df[col] = np.nan
    return df


def _keys(df: pd.DataFrame, *more: str) -> list[str]:
    return (["run"] if "run" in df else []) + ["model", "norm", *more]


def _q(s: pd.Series, q: float) -> float:
    s = s.fillna(np.inf)  # null radius: no image in [0, 1] changes the context
    return float(np.quantile(s.to_numpy(dtype=float), q)) if len(s) else float("nan")


def radius_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and norm: points, certified radius median, 10th and 90th percentile (one radius per point)."""
    keys = _keys(df)
    one = df.drop_duplicates(keys + ["point"])
    rows = [{**dict(zip(keys, k)), "points": len(g), "radius_p10": _q(g.radius, 0.1),
             "radius_median": _q(g.radius, 0.5), "radius_p90": _q(g.radius, 0.9)}
            for k, g in one.groupby(keys, sort=False)]
    return pd.DataFrame(rows)


def certify_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, norm and eps: certified fraction, radius quantiles, and the optimal attack's means."""
    rows = []
    keys = _keys(df, "eps")
    for k, g in df.groupby(keys, sort=False):
        row: dict[str, Any] = {**dict(zip(keys, k)), "points": len(g), "certified": float(g.certified.mean()),
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


def gradient_gap(cert: pd.DataFrame, attack_dirs: list[str | Path]) -> pd.DataFrame:
    """Per model, norm and eps of the certify runs met by an attack run at k = 1 on the same checkpoint, points,
    norm and eps: the best gradient attack's mean MS-SSIM (the worst restart per point) beside the optimum's.

    ``gap`` = gradient - optimal (> 0: the optimal context attack does more damage than the gradient attack).
    """
    rows = [{**r, "attack": attack_name(r["optimizer"], r["objective"], _ensemble_version(Path(d)))}
            for d in attack_dirs for f in sorted(Path(d).glob("records*.jsonl")) for r in read_attack_records(f)]
    att = pd.DataFrame(rows)
    if att.empty or "msssim_k1" not in cert or cert.msssim_k1.isna().all():
        return pd.DataFrame()
    att = att[(att.kind == "attack") & (att.k == 1)]
    cert = cert[cert.msssim_k1.notna()]
    # one row per attack configuration given (the paper's PGD and the ensemble side by side)
    best = att.groupby(["checkpoint_sha256", "norm", "eps", "test_index", "attack"], as_index=False).agg(
        gradient=("msssim", "min"))
    both = cert.merge(best, on=["checkpoint_sha256", "norm", "eps", "test_index"])
    out = []
    keys = [*_keys(both, "eps"), "attack"]
    for k, g in both.groupby(keys, sort=False):
        out.append({**dict(zip(keys, k)), "points": len(g),
                    "gradient_msssim_k1": float(g.gradient.mean()),
                    "optimal_msssim_k1": float(g.msssim_k1.mean()), "gap": float((g.gradient - g.msssim_k1).mean()),
                    "optimal_proven": float(g.optimal_proven.mean())})
    return pd.DataFrame(out)


def certify_figure(df: pd.DataFrame):
    """Three panels: the radius distribution (empirical CDF), the certified fraction and the optimum's k = 1 MS-SSIM
    against eps, one line per model and norm."""
    import matplotlib.pyplot as plt

    import robustvae.reporting.figures  # noqa: F401  (the non-interactive backend)

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    keys = _keys(df)
    for k, g in df.groupby(keys, sort=False):
        label = f"{k[0]} ({k[-1]})" if "run" in keys else f"{k[0]} ({k[1]})"  # run or model, and the norm
        r = np.sort(g.drop_duplicates("point").radius.fillna(np.inf).to_numpy(dtype=float))
        ax[0].step(r, np.arange(1, len(r) + 1) / len(r), where="post", label=label)
        t = certify_table(g)
        ax[1].plot(t.eps, t.certified, "o-", label=label)
        if "msssim_k1_mean" in t:
            ax[2].plot(t.eps, t.msssim_k1_mean, "s-", label=label)
    ax[0].set(xscale="log", xlabel="certified radius", ylabel="fraction of points with radius <= r",
              title="certified radius (per point)")
    ax[1].set(xlabel="eps", ylabel="certified fraction", ylim=(-0.02, 1.02), title="certified fraction")
    ax[2].set(xlabel="eps", ylabel="MS-SSIM, k = 1", ylim=(0, 1.02), title="optimal context attack")
    for a in ax:
        a.grid(alpha=0.3)
    ax[1].legend(fontsize=7)
    return fig


def certify_part(certify_dirs: list[str | Path], attack_dirs: list[str | Path]) -> tuple[dict, dict, dict[str, bytes]]:
    """The certification section: (summary entry, page context, files by name)."""
    from robustvae.reporting.figures import png_bytes
    from robustvae.reporting.tables import markdown

    df = read_certify_records(certify_dirs)
    table, radii, gap = certify_table(df), radius_table(df), gradient_gap(df, attack_dirs)
    png = png_bytes(certify_figure(df))
    infos = [read_json(p, CertifyRun, "copy the whole certification run directory, or re-run robustvae certify")
             for d in certify_dirs for p in sorted(Path(d).glob("run*.json"))]
    files = {"certify.png": png, "certify.csv": table.to_csv(index=False).encode(),
             "certify.md": markdown(display_certify(table)).encode()}
    summary = {"models": sorted(df.model.unique()), "table": table.to_dict("records"),
               "radius": radii.to_dict("records"), "gradient_gap": gap.to_dict("records"), "note": CERTIFICATE_NOTE,
               "runs": [{"dir": str(d), "command": i.get("command"), "settings": i.get("settings")}
                        for d, i in zip(certify_dirs, infos)]}
    cells = lambda t: {"headers": list(t.columns), "rows": display_certify(t).astype(str).values.tolist(), "left": 3}  # noqa: E731
    context = {"figure": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
               "table": cells(table), "radius": cells(radii), "gap": cells(gap) if len(gap) else None,
               "note": CERTIFICATE_NOTE, "dirs": [str(d) for d in certify_dirs]}
    return summary, context, files


def _ensemble_version(run_dir: Path) -> str | None:
    """The ensemble version an attack run used, as its ``run.json`` records it (None for a single attack)."""
    import json

    for path in sorted(run_dir.glob("run*.json")):  # run.json, or a shard's run-shard-i-of-N.json
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if ensemble_version(info):
            return ensemble_version(info)
    return None
