"""``make_report``: run directories -> figures, tables, checks, ``summary.json`` and one self-contained ``index.html``.

Everything is computed before anything is written, so a bad input leaves ``out``
untouched. The HTML is rendered by Jinja2 with autoescaping on (model names and
settings come from files anyone can write) and embeds every image as a data URI.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustvae.errors import RobustVAEError
from robustvae.report import aggregate as agg
from robustvae.report import figures
from robustvae.report.load import PANEL_KEYS, RunSet, load_runs
from robustvae.results import safe_name

REPORT_FILES = ("index.html", "summary.json", "figure10.png", "figure10.pdf", "figure10.svg", "layers.png",
                "layers.pdf", "table.csv", "table.md", "table.tex", "checks.csv", "checks.md")
SUMMARY_FORMAT = "robustvae-report/1"


def plain(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars -> Python numbers, NaN / inf -> None (numbers stay numbers)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _num(v: Any, fmt: str = ".3f") -> str:
    """A number for a table cell; missing (None / NaN) shows as ``-``."""
    return "-" if v is None or pd.isna(v) else format(v, fmt)


def _with_interval(v: float, lo: float, hi: float) -> str:
    return _num(v) if pd.isna(lo) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The results table as text cells (for Markdown, LaTeX and HTML); panel columns only when there are several."""
    several = table[PANEL_KEYS].drop_duplicates().shape[0] > 1
    out = pd.DataFrame()
    if several:
        out["dataset"], out["norm"], out["eps"] = table.dataset, table.norm, table.eps.map(lambda v: f"{v:g}")
    out["model"] = table.model
    out["k"] = table.layers.astype(int)
    out["points"] = table.points
    out["restarts"] = table.restarts
    ci = f"{agg.CI_LEVEL}% CI"
    out[f"MS-SSIM, mean over restarts [{ci}]"] = [_with_interval(r["mean"], r.mean_lo, r.mean_hi) for _, r in table.iterrows()]
    out[f"MS-SSIM, worst case [{ci}]"] = [_with_interval(r.worst, r.worst_lo, r.worst_hi) for _, r in table.iterrows()]
    out["noise"] = table.noise.map(_num)
    out["floor"] = table.floor.map(_num)
    out["max L-inf(delta)"] = table.max_delta_linf.map(lambda v: _num(v, ".4f"))
    out["max L2(delta)"] = table.max_delta_l2.map(lambda v: _num(v, ".3f"))
    out["non-finite"] = table.nonfinite
    if "layer_kl_nats" in table:
        out["KL of layer k (nats)"] = table.layer_kl_nats.map(_num)
        out["active units of layer k"] = [
            "context" if pd.isna(a) and not pd.isna(u) else ("-" if pd.isna(a) else f"{int(a)}/{int(u)}")
            for a, u in zip(table.layer_active_units, table.layer_units)
        ]
    return out.reset_index(drop=True)


def display_layers(diag: pd.DataFrame) -> pd.DataFrame:
    """Per-layer diagnostics as text cells; a context layer shows the quantiser levels it uses."""
    out = pd.DataFrame({"model": diag.model, "layer": diag.layer, "resolution": diag.resolution, "units": diag.units,
                        "KL (nats)": diag.kl_nats.map(_num)})
    out["active units"] = [
        f"context: {_num(lu, '.2f')}/{_num(lv, '.0f')} levels used" if k == "context" else _num(a, ".0f")
        for k, a, lu, lv in zip(diag.kind, diag.active_units, diag.levels_used, diag.levels)
    ]
    return out


def display_checks(checks: pd.DataFrame) -> pd.DataFrame:
    """The checks as text cells, with ``pass`` / ``FAIL`` spelled out (readable in black and white)."""
    out = checks.copy()
    out["result"] = out.passed.map({True: "pass", False: "FAIL"})
    out["value"] = out.value.map(lambda v: _num(v, ".4g"))
    out["limit"] = out.limit.map(lambda v: _num(v, ".4g"))
    return out[["check", "scope", "result", "value", "limit", "detail"]]


def to_latex(df: pd.DataFrame) -> str:
    """A booktabs tabular of text cells, LaTeX specials escaped in cells and headers."""
    return df.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1).to_latex(hrules=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def read_evals(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Results of ``robustvae eval`` (one result or ``{"results": [...]}`` per file)."""
    out: list[dict[str, Any]] = []
    for p in paths:
        try:
            obj = json.loads(Path(p).read_text())
        except OSError as e:
            raise RobustVAEError(f"cannot read eval file {p}: {e.strerror or e}") from None
        except ValueError:
            raise RobustVAEError(f"eval file {p} is not valid JSON; pass a file written by robustvae eval") from None
        items = obj.get("results", [obj]) if isinstance(obj, dict) else []
        if not items or not all(isinstance(r, dict) and "nll_nats" in r for r in items):
            raise RobustVAEError(f"eval file {p} holds no robustvae eval result (no nll_nats)")
        out.extend(items)
    return out


def _models(runs: RunSet, evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per attacked checkpoint: architecture, training budget and, when given, its evaluation."""
    by_sha = {e.get("checkpoint_sha256"): e for e in evals}
    rows = []
    for m in runs.model_infos():
        cfg = m.get("config") or {}
        train = cfg.get("train", {})
        model_cfg = cfg.get("model", {})
        e = by_sha.get(m.get("sha256"))
        budget = f"{train['steps']} steps" if train.get("steps") else f"{train.get('epochs', '?')} epochs"
        rows.append({
            "label": m.get("label"), "sha256": m.get("sha256"), "path": m.get("path"), "arch": model_cfg.get("arch"),
            "dataset": cfg.get("data", {}).get("name"), "num_layers": m.get("num_layers"),
            "training": f"{cfg.get('name', '?')}: {budget}, batch {train.get('batch_size', '?')}, "
                        f"channels {model_cfg.get('channels', '?')}/{model_cfg.get('hidden', '?')}",
            "nll_nats": e.get("nll_nats") if e else None, "nelbo_nats": e.get("nelbo_nats") if e else None,
            "eval": {k: e.get(k) for k in ("split", "images", "iw_samples", "nll_bpd", "active_units", "total_units")}
                    if e else None,
        })
    return rows


def _run_rows(runs: RunSet) -> list[dict[str, Any]]:
    """What each run file says about itself: command, status, settings, versions, commit, checkpoints."""
    rows = []
    for r in runs.runs:
        info = r.info
        command = info.get("command") or []
        wall = info.get("wall_time_s")
        rows.append({
            "dir": str(r.dir), "name": r.name, "records": r.records,
            "command": shlex.join(map(str, command)) if isinstance(command, list) else str(command),
            "status": info.get("status"), "units_done": info.get("units_done"), "units_total": info.get("units_total"),
            "wall_time_s": wall, "wall_time": f"{wall:.1f} s" if isinstance(wall, (int, float)) else "?",
            "device": info.get("device"), "threads": info.get("torch_threads"), "git_commit": info.get("git_commit"),
            "versions": info.get("versions", {}), "attack": info["settings"].get("attack", {}),
            "shard": info["settings"].get("shard", "1/1"),
            "models": [{"label": m.get("label"), "sha256": m.get("sha256"), "path": m.get("path")}
                       for m in info.get("models", [])],
        })
    return rows


def _html_table(df: pd.DataFrame, left: int) -> dict[str, Any]:
    return {"headers": list(df.columns), "rows": df.astype(str).values.tolist(), "left": left}


def render_html(context: dict[str, Any]) -> str:
    """The report page from ``templates/report.html`` (Jinja2, autoescape on)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("robustvae.report", "templates"), autoescape=True, undefined=StrictUndefined)
    return env.get_template("report.html").render(**context)


def make_report(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    evals: Sequence[str | os.PathLike] = (),
    notes: Sequence[str | os.PathLike] = (),
    title: str | None = None,
    force: bool = False,
    gallery_per_k: int = 2,
) -> dict[str, Any]:
    """Read the run directories, write the report into ``out`` and return the summary (as in ``summary.json``).

    ``evals``: ``robustvae eval`` JSON files whose NLL is shown beside the matching
    checkpoints; ``notes``: text files shown verbatim near the top (e.g. the budget and
    findings of a reference run). An existing report in ``out`` is only replaced with
    ``force``.
    """
    out = Path(out)
    existing = [f for f in ("index.html", "summary.json") if (out / f).exists()]
    if existing and not force:
        raise RobustVAEError(f"{out} already holds a report ({', '.join(existing)}); pass --force to replace it")
    runs = load_runs(run_dirs)
    eval_rows = read_evals(evals)
    note_texts = []
    for p in notes:
        try:
            note_texts.append((Path(p).name, Path(p).read_text()))
        except OSError as e:
            raise RobustVAEError(f"cannot read notes file {p}: {e.strerror or e}") from None

    diag = agg.diagnostics_frame(runs)
    table = agg.summarise(runs.records, diag)
    if table.empty:
        raise RobustVAEError(f"no attack records in {', '.join(map(str, run_dirs))} (only baselines); nothing to report")
    checks = agg.checks(runs, table)
    pp = agg.per_point(runs.records)
    models = _models(runs, eval_rows)
    run_rows = _run_rows(runs)

    fig10 = figures.figure10(pp, table)
    fig_layers = figures.layers_figure(diag) if len(diag) else None
    by_model: dict[str, list] = {}
    for g in runs.galleries:
        by_model.setdefault(g.model, []).append(g)
    galleries = {m: figures.gallery_figure(es, gallery_per_k) for m, es in sorted(by_model.items())}
    gallery_files = {m: f"gallery-{safe_name(m)}.png" for m in galleries}

    shown = display_table(table)
    left = sum(c in ("dataset", "norm", "eps", "model") for c in shown.columns)
    shown_checks = display_checks(checks)
    shown_layers = display_layers(diag)
    files = list(REPORT_FILES) + list(gallery_files.values())
    if fig_layers is None:
        files = [f for f in files if not f.startswith("layers.")]
    title = title or "robustvae report: " + ", ".join(sorted(table.model.unique()))
    summary = plain({
        "format": SUMMARY_FORMAT, "title": title,
        "bootstrap": {"n_boot": agg.N_BOOT, "seed": agg.BOOT_SEED, "level": agg.CI_LEVEL, "over": "points"},
        "monotone_tolerance": agg.MONOTONE_TOL,
        "table": table.to_dict("records"), "checks": checks.to_dict("records"),
        "checks_passed": int(checks.passed.sum()), "checks_failed": int((~checks.passed).sum()),
        "layers": diag.to_dict("records"), "models": models,
        "runs": [{k: v for k, v in r.items() if k not in ("wall_time",)} for r in run_rows],
        "files": files,
    })
    from robustvae import __version__

    fig10_png = figures.png_bytes(fig10)
    layers_png = figures.png_bytes(fig_layers) if fig_layers is not None else b""
    gallery_pngs = {m: figures.png_bytes(f) for m, f in galleries.items()}
    for m in models:
        m["nll"], m["nelbo"] = _num(m["nll_nats"], ".2f"), _num(m["nelbo_nats"], ".2f")
        e = m["eval"]
        m["eval_note"] = (f"{e['split']}, {e['images']} images, K = {e['iw_samples']}, active units "
                          f"{e['active_units']}/{e['total_units']}") if e else "not given (--eval)"
    html = render_html({
        "title": title, "version": __version__, "runs": run_rows, "n_records": len(runs.records),
        "checks_passed": summary["checks_passed"], "checks_failed": summary["checks_failed"],
        "ci_level": agg.CI_LEVEL, "n_boot": agg.N_BOOT, "boot_seed": agg.BOOT_SEED, "monotone_tol": agg.MONOTONE_TOL,
        "notes": note_texts, "figure10": _data_uri(fig10_png),
        "layers_figure": _data_uri(layers_png) if layers_png else "",
        "table": _html_table(shown, left), "layer_table": _html_table(shown_layers, 1),
        "check_counts": [(name, int(g.passed.sum()), int((~g.passed).sum()))
                         for name, g in checks.groupby("check", sort=False)],
        "checks": [{**c, "value_text": v, "limit_text": lim} for c, v, lim in
                   zip(checks.to_dict("records"), shown_checks.value, shown_checks.limit)],
        "models": models, "galleries": [(m, _data_uri(p)) for m, p in gallery_pngs.items()], "files": files,
    })

    out.mkdir(parents=True, exist_ok=True)
    (out / "figure10.png").write_bytes(fig10_png)
    for fmt in ("pdf", "svg"):
        fig10.savefig(out / f"figure10.{fmt}", format=fmt)
    if fig_layers is not None:
        (out / "layers.png").write_bytes(layers_png)
        fig_layers.savefig(out / "layers.pdf", format="pdf")
    for m, name in gallery_files.items():
        (out / name).write_bytes(gallery_pngs[m])
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(shown.to_markdown(index=False, disable_numparse=True) + "\n")
    (out / "table.tex").write_text(to_latex(shown))
    checks.to_csv(out / "checks.csv", index=False)
    (out / "checks.md").write_text(shown_checks.to_markdown(index=False, disable_numparse=True) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    (out / "index.html").write_text(html)
    return summary
