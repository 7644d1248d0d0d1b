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
from robustvae.reporting.checklist import CheckList
from robustvae.reporting.load import attack_name, ensemble_version
from robustvae.validation import CertifyRun, read_json

CERTIFICATE_NOTE = (
    "For a certified point the k = 1 reconstruction under the default protocol (shared prior noise) is provably "
    "identical to the clean one for every perturbation of the budget: this is a certificate, not a measurement."
)


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
    rows = [
        {**r, "run": Path(p).name}
        for p in paths
        for f in sorted(Path(p).glob("records*.jsonl"))
        for r in read_certify_rows(f)
    ]
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
    rows = [
        {
            **dict(zip(keys, k)),
            "points": len(g),
            "radius_p10": _q(g.radius, 0.1),
            "radius_median": _q(g.radius, 0.5),
            "radius_p90": _q(g.radius, 0.9),
        }
        for k, g in one.groupby(keys, sort=False)
    ]
    return pd.DataFrame(rows)


def certify_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, norm and eps: certified fraction, radius quantiles, and the optimal attack's means."""
    rows = []
    keys = _keys(df, "eps")
    for k, g in df.groupby(keys, sort=False):
        row: dict[str, Any] = {
            **dict(zip(keys, k)),
            "points": len(g),
            "certified": float(g.certified.mean()),
            "radius_median": _q(g.radius, 0.5),
        }
        if "msssim_k1" in g and g.msssim_k1.notna().any():
            row.update(
                msssim_k1_mean=float(g.msssim_k1.mean()),
                msssim_k1_min=float(g.msssim_k1.min()),
                decoded_l2_mean=float(g.optimal_decoded_l2.mean()),
                max_joint_mean=float(g.max_joint_changes.mean()),
                proven=float(g.optimal_proven.mean()),
                solve_s_mean=float(g.solve_time_s.mean()),
            )
        rows.append(row)
    return pd.DataFrame(rows)


def display_certify(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text cells for the console (Markdown)."""
    return table.apply(lambda col: col.map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)))


GAP_LIMIT = 0.02  # the ensemble's mean k = 1 worst case may be at most this far above the optimal context attack's


def attack_worst_k1(attack_dirs: list[str | Path]) -> pd.DataFrame:
    """Per attack run configuration and point: the worst k = 1 MS-SSIM (over restarts and members), with the
    attack's name (``pgd on skl``, or the ensemble's recorded version: ``auto-v1``, ``auto-v2``, ...) and whether
    it is an ensemble. Columns: checkpoint_sha256, norm, eps, test_index, attack, ensemble, worst."""
    rows = []
    for d in attack_dirs:
        version = _ensemble_version(Path(d))
        rows += [
            {**r, "attack": attack_name(r["optimizer"], r["objective"], version), "ensemble": version is not None}
            for f in sorted(Path(d).glob("records*.jsonl"))
            for r in read_attack_records(f)
        ]
    att = pd.DataFrame(rows)
    cols = ["checkpoint_sha256", "norm", "eps", "test_index", "attack", "ensemble"]
    if att.empty:
        return pd.DataFrame(columns=[*cols, "worst"])
    att = att[(att.kind == "attack") & (att.k == 1)]
    finite = att.assign(msssim=att.msssim.where(np.isfinite(att.msssim.astype(float))))
    return finite.groupby(cols, as_index=False).agg(worst=("msssim", "min"))


def optimality_gap(cert: pd.DataFrame, att: pd.DataFrame) -> pd.DataFrame:
    """Per point and attack: the attack's worst k = 1 MS-SSIM beside the optimal context attack's on the same
    checkpoint, point, norm and eps (certify runs matched with attack runs); ``gap`` = attack - optimal
    (> 0: the optimum does more damage; < 0: the attack beats it, possible because the MILP maximises the decoded
    context's change, not MS-SSIM). ``att``: :func:`attack_worst_k1` of the attack runs. Long format: one row per
    (model, norm, eps, point, attack)."""
    if att.empty or "msssim_k1" not in cert or cert.msssim_k1.isna().all():
        return pd.DataFrame()
    cert = cert[cert.msssim_k1.notna()]
    both = cert.merge(att, on=["checkpoint_sha256", "norm", "eps", "test_index"])
    keep = [*_keys(both, "eps"), "point", "test_index", "attack", "ensemble"]
    out = both[keep].copy()
    out["attack_msssim_k1"] = both.worst.astype(float)
    out["optimal_msssim_k1"] = both.msssim_k1.astype(float)
    out["gap"] = out.attack_msssim_k1 - out.optimal_msssim_k1
    out["optimal_proven"] = both.optimal_proven.astype(bool)
    return out.reset_index(drop=True)


def gradient_gap(pts: pd.DataFrame) -> pd.DataFrame:
    """Per model, norm, eps and attack (the certify runs met by attack runs at k = 1 on the same checkpoint,
    points, norm and eps): the attack's mean worst-case MS-SSIM beside the optimum's, and the gap's mean and max
    over points (``gap`` = attack - optimal; > 0: the optimal context attack does more damage); ``pts``:
    :func:`optimality_gap`."""
    if pts.empty:
        return pd.DataFrame()
    keys = [*_keys(pts, "eps"), "attack"]
    out = [
        {
            **dict(zip(keys, k)),
            "points": len(g),
            "gradient_msssim_k1": float(g.attack_msssim_k1.mean()),
            "optimal_msssim_k1": float(g.optimal_msssim_k1.mean()),
            "gap": float(g.gap.mean()),
            "gap_max": float(g.gap.max()),
            "optimal_proven": float(g.optimal_proven.mean()),
        }
        for k, g in pts.groupby(keys, sort=False)
    ]
    return pd.DataFrame(out)


def gap_side_by_side(pts: pd.DataFrame) -> pd.DataFrame:
    """Per model, norm and eps: the optimum's mean k = 1 MS-SSIM and, for every attack (columns named by the
    attack: ``auto-v1``, ``auto-v2``, ``pgd on skl``, ...), its mean worst case and the mean / max gap over the
    points that both have."""
    if pts.empty:
        return pd.DataFrame()
    keys = _keys(pts, "eps")
    attacks = list(dict.fromkeys(pts.attack))
    rows = []
    for k, g in pts.groupby(keys, sort=False):
        opt = g.drop_duplicates("point")
        row: dict[str, Any] = {
            **dict(zip(keys, k)),
            "points": len(opt),
            "optimum": float(opt.optimal_msssim_k1.mean()),
            "proven": float(opt.optimal_proven.mean()),
        }
        for a in attacks:
            ga = g[g.attack == a]
            row.update(
                {
                    f"{a}": float(ga.attack_msssim_k1.mean()) if len(ga) else np.nan,
                    f"{a}: gap mean": float(ga.gap.mean()) if len(ga) else np.nan,
                    f"{a}: gap max": float(ga.gap.max()) if len(ga) else np.nan,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def gap_checks(pts: pd.DataFrame, limit: float = GAP_LIMIT) -> list[dict[str, Any]]:
    """Per ensemble attack, model, norm and eps: the check that its mean k = 1 worst case is at most ``limit``
    above the optimal context attack's on the same points (check rows, :class:`CheckList`)."""
    out = CheckList()
    if pts.empty:
        return out.rows
    ens = pts[pts.ensemble.astype(bool)]
    for (model, norm, eps, attack), g in ens.groupby(["model", "norm", "eps", "attack"], sort=False):
        gap = float(g.attack_msssim_k1.mean() - g.optimal_msssim_k1.mean())
        n, worst = len(g), float(g.gap.max())
        text = (
            f"mean k = 1 worst case {g.attack_msssim_k1.mean():.4f} vs the optimal context attack's "
            f"{g.optimal_msssim_k1.mean():.4f} over {n} points (largest gap on a point {worst:+.4f})"
        )
        out.add(
            "ensemble reaches the optimum",
            f"{model} ({norm} eps {eps:g}) k=1 {attack}",
            gap <= limit,
            gap,
            limit,
            f"within {limit:g} of the optimum: {text}",
            f"more than {limit:g} above the optimum: {text}",
        )
    return out.rows


def gap_figure(pts: pd.DataFrame):
    """Per model, norm and eps (a panel each): every attack's per-point gap to the optimal context attack,
    points sorted by the optimum's MS-SSIM, with the 0 and the check's limit drawn."""
    import matplotlib.pyplot as plt

    import robustvae.reporting.figures  # noqa: F401  (the non-interactive backend)

    keys = _keys(pts, "eps")
    groups = list(pts.groupby(keys, sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.6), constrained_layout=True, squeeze=False)
    markers = "osD^v<>p*"
    for ax, (k, g) in zip(axes[0], groups):
        order = g.drop_duplicates("point").sort_values("optimal_msssim_k1").point.tolist()
        pos = {p: i for i, p in enumerate(order)}
        for i, (a, ga) in enumerate(g.groupby("attack", sort=False)):
            ax.plot([pos[p] for p in ga.point], ga.gap, markers[i % len(markers)], alpha=0.8, label=a)
        ax.axhline(0.0, color="k", lw=0.8)
        ax.axhline(GAP_LIMIT, color="r", lw=0.8, ls="--", label=f"check limit (mean) {GAP_LIMIT:g}")
        name = dict(zip(keys, k))
        ax.set(
            xlabel="point (sorted by the optimum's MS-SSIM)",
            ylabel="attack - optimal MS-SSIM, k = 1",
            title=f"{name['model']} ({name['norm']} eps {name['eps']:g})",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


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
    ax[0].set(
        xscale="log",
        xlabel="certified radius",
        ylabel="fraction of points with radius <= r",
        title="certified radius (per point)",
    )
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
    pts = optimality_gap(df, attack_worst_k1(attack_dirs))
    table, radii, gap = certify_table(df), radius_table(df), gradient_gap(pts)
    side = gap_side_by_side(pts)
    png = png_bytes(certify_figure(df))
    infos = [
        read_json(p, CertifyRun, "copy the whole certification run directory, or re-run robustvae certify")
        for d in certify_dirs
        for p in sorted(Path(d).glob("run*.json"))
    ]
    files = {
        "certify.png": png,
        "certify.csv": table.to_csv(index=False).encode(),
        "certify.md": markdown(display_certify(table)).encode(),
    }
    gap_png = None
    if len(pts):
        gap_png = png_bytes(gap_figure(pts))
        files.update(
            {
                "optimality-gap.png": gap_png,
                "optimality-gap.csv": pts.to_csv(index=False).encode(),
                "optimality-gap.md": markdown(display_certify(side)).encode(),
            }
        )
    summary = {
        "models": sorted(df.model.unique()),
        "table": table.to_dict("records"),
        "radius": radii.to_dict("records"),
        "gradient_gap": gap.to_dict("records"),
        "optimality_gap": {"limit": GAP_LIMIT, "table": side.to_dict("records"), "points": pts.to_dict("records")},
        "note": CERTIFICATE_NOTE,
        "runs": [
            {"dir": str(d), "command": i.get("command"), "settings": i.get("settings")}
            for d, i in zip(certify_dirs, infos)
        ],
    }
    cells = lambda t: {"headers": list(t.columns), "rows": display_certify(t).astype(str).values.tolist(), "left": 3}  # noqa: E731
    context = {
        "figure": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        "table": cells(table),
        "radius": cells(radii),
        "gap": cells(gap) if len(gap) else None,
        "side": cells(side) if len(side) else None,
        "limit": GAP_LIMIT,
        "gap_figure": "data:image/png;base64," + base64.b64encode(gap_png).decode("ascii") if gap_png else None,
        "note": CERTIFICATE_NOTE,
        "dirs": [str(d) for d in certify_dirs],
    }
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
