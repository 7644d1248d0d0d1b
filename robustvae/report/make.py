"""``make_report``: run directories -> figures, tables, checks, ``summary.json`` and one self-contained ``index.html``.

Everything is computed before anything is written, so a bad input leaves ``out``
untouched. The HTML is rendered by Jinja2 with autoescaping on (model names and
settings come from files anyone can write) and embeds every image as a data URI.
"""

from __future__ import annotations

import base64
import io
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
from robustvae.report import compression as comp
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


def _read_notes(notes: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    texts = []
    for p in notes:
        try:
            texts.append((Path(p).name, Path(p).read_text()))
        except OSError as e:
            raise RobustVAEError(f"cannot read notes file {p}: {e.strerror or e}") from None
    return texts


def _figure_bytes(fig: Any, fmt: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    return buf.getvalue()


def _attack_part(
    run_dirs: Sequence[str | os.PathLike], eval_rows: list[dict[str, Any]], gallery_per_k: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes]]:
    """The attack part of a report: (summary entries, page context, files by name), computed, nothing written."""
    runs = load_runs(run_dirs)
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
    summary = plain({
        "bootstrap": {"n_boot": agg.N_BOOT, "seed": agg.BOOT_SEED, "level": agg.CI_LEVEL, "over": "points"},
        "monotone_tolerance": agg.MONOTONE_TOL,
        "table": table.to_dict("records"), "checks": checks.to_dict("records"),
        "checks_passed": int(checks.passed.sum()), "checks_failed": int((~checks.passed).sum()),
        "layers": diag.to_dict("records"), "models": models,
        "runs": [{k: v for k, v in r.items() if k not in ("wall_time",)} for r in run_rows],
        "files": files,
    })
    fig10_png = figures.png_bytes(fig10)
    layers_png = figures.png_bytes(fig_layers) if fig_layers is not None else b""
    gallery_pngs = {m: figures.png_bytes(f) for m, f in galleries.items()}
    for m in models:
        m["nll"], m["nelbo"] = _num(m["nll_nats"], ".2f"), _num(m["nelbo_nats"], ".2f")
        e = m["eval"]
        m["eval_note"] = (f"{e['split']}, {e['images']} images, K = {e['iw_samples']}, active units "
                          f"{e['active_units']}/{e['total_units']}") if e else "not given (--eval)"
    context = {
        "runs": run_rows, "n_records": len(runs.records),
        "checks_passed": summary["checks_passed"], "checks_failed": summary["checks_failed"],
        "ci_level": agg.CI_LEVEL, "n_boot": agg.N_BOOT, "boot_seed": agg.BOOT_SEED, "monotone_tol": agg.MONOTONE_TOL,
        "figure10": _data_uri(fig10_png),
        "layers_figure": _data_uri(layers_png) if layers_png else "",
        "table": _html_table(shown, left), "layer_table": _html_table(shown_layers, 1),
        "check_counts": [(name, int(g.passed.sum()), int((~g.passed).sum()))
                         for name, g in checks.groupby("check", sort=False)],
        "checks": [{**c, "value_text": v, "limit_text": lim} for c, v, lim in
                   zip(checks.to_dict("records"), shown_checks.value, shown_checks.limit)],
        "models": models, "galleries": [(m, _data_uri(p)) for m, p in gallery_pngs.items()],
        "model_names": sorted(table.model.unique()),
    }
    out_files = {"figure10.png": fig10_png, "figure10.pdf": _figure_bytes(fig10, "pdf"),
                 "figure10.svg": _figure_bytes(fig10, "svg")}
    if fig_layers is not None:
        out_files.update({"layers.png": layers_png, "layers.pdf": _figure_bytes(fig_layers, "pdf")})
    out_files.update({name: gallery_pngs[m] for m, name in gallery_files.items()})
    out_files.update({
        "table.csv": table.to_csv(index=False).encode(),
        "table.md": (shown.to_markdown(index=False, disable_numparse=True) + "\n").encode(),
        "table.tex": to_latex(shown).encode(),
        "checks.csv": checks.to_csv(index=False).encode(),
        "checks.md": (shown_checks.to_markdown(index=False, disable_numparse=True) + "\n").encode(),
    })
    return summary, context, out_files


COMPRESSION_CELLS = [("PSNR (dB)", "psnr", ".2f"), ("MS-SSIM", "msssim", ".4f"), ("bpp", "bpp", ".4f"),
                     ("BPP* (raw context)", "bpp_context_raw", ".4f"), ("JPEG quality", "jpeg_quality", "g"),
                     ("JPEG PSNR (dB)", "jpeg_psnr", ".2f"), ("JPEG MS-SSIM", "jpeg_msssim", ".4f"),
                     ("JPEG bpp", "jpeg_bpp", ".4f")]


def display_compression(df: pd.DataFrame) -> pd.DataFrame:
    """Compression rows (per image, or the means of :func:`~robustvae.report.compression.summary_table`) as text cells."""
    out = df[[c for c in ("image", "model", "k", "images") if c in df]].reset_index(drop=True)
    for label, col, fmt in COMPRESSION_CELLS:
        out[label] = [_num(v, fmt) for v in df[col]]
    return out


def _compression_part(
    runs: list[comp.CompressionRun], pictures: int = comp.MAX_PICTURES
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, bytes]]:
    """The compression section: (summary entry, one page context per run, files by name)."""
    files: dict[str, bytes] = {}
    tables, contexts, infos = [], [], []
    for i, run in enumerate(runs, start=1):
        table = comp.summary_table(run.records)
        png = figures.png_bytes(comp.rd_figure(run.records, run.jpeg))
        files[f"compression-rd-{i}.png"] = png
        tables.append(table.assign(run=str(run.dir)))
        per_image = run.records.sort_values(["image", "model", "k"], kind="stable")
        info = run.info
        contexts.append({
            "dir": str(run.dir), "figure": _data_uri(png), "table": _html_table(display_compression(table), 1),
            "per_image": _html_table(display_compression(per_image), 2),
            "pictures": [(name, _data_uri(p.read_bytes())) for name, p in run.side_by_side()[:pictures] if p.is_file()],
            "images": len(info["images"]), "command": shlex.join(map(str, info.get("command", []))),
            "wall_time": f"{info.get('wall_time_s', math.nan):.1f} s", "device": info.get("device"),
            "threads": info.get("torch_threads"), "settings": info.get("settings", {}), "jpeg": info.get("jpeg", {}),
            "versions": info.get("versions", {}), "git_commit": info.get("git_commit"),
            "models": [{**m, "speed": f"{m['patches_per_s']:.1f} patches/s ({m['reconstructions_per_s']:.1f} "
                                     f"reconstructions/s over {len(m['layers'])} k)"} for m in info.get("models", [])],
        })
        infos.append({k: v for k, v in info.items() if k != "command"} | {"dir": str(run.dir), "command": info.get("command")})
    table = pd.concat(tables, ignore_index=True)
    files["compression.csv"] = table.to_csv(index=False).encode()
    shown = display_compression(table)
    files["compression.md"] = (shown.assign(run=table.run).to_markdown(index=False, disable_numparse=True) + "\n").encode()
    summary = {"models": sorted(table.model.unique()), "table": table.to_dict("records"), "runs": infos,
               "records": pd.concat([r.records.assign(run=str(r.dir)) for r in runs]).to_dict("records")}
    return summary, contexts, files


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

    Attack runs (``robustvae attack``) give Figure 10, tables, checks and galleries;
    compression runs (``robustvae compress``, told apart by their ``run.json``) give a
    compression section; either kind may come alone. ``evals``: ``robustvae eval`` JSON
    files whose NLL is shown beside the matching checkpoints; ``notes``: text files
    shown verbatim near the top (e.g. the budget and findings of a reference run). An
    existing report in ``out`` is only replaced with ``force``.
    """
    out = Path(out)
    existing = [f for f in ("index.html", "summary.json") if (out / f).exists()]
    if existing and not force:
        raise RobustVAEError(f"{out} already holds a report ({', '.join(existing)}); pass --force to replace it")
    compression_dirs = [d for d in run_dirs if comp.is_compression_run(d)]
    attack_dirs = [d for d in run_dirs if d not in compression_dirs]
    compression = [comp.load_compression_run(d) for d in compression_dirs]
    attack = bool(attack_dirs) or not compression
    eval_rows = read_evals(evals)
    note_texts = _read_notes(notes)
    parts: dict[str, Any] = {}
    context: dict[str, Any] = {"attack": attack, "compression": None}
    files: dict[str, bytes] = {}
    names = ["index.html", "summary.json"]
    models: list[str] = []
    if attack:
        parts, ctx, files = _attack_part(attack_dirs, eval_rows, gallery_per_k)
        names = parts.pop("files")
        models = ctx.pop("model_names")
        context.update(ctx)
    if compression:
        parts["compression"], context["compression"], comp_files = _compression_part(compression)
        models += [m for m in parts["compression"]["models"] if m not in models]
        names += list(comp_files)
        files.update(comp_files)
    parts["files"] = names
    default = "robustvae report: " if attack else "robustvae compression report: "
    title = title or default + ", ".join(sorted(models))
    summary = plain({"format": SUMMARY_FORMAT, "title": title, **parts})
    from robustvae import __version__

    html = render_html({"title": title, "version": __version__, "notes": note_texts, "files": summary["files"], **context})
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    (out / "index.html").write_text(html)
    return summary
