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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustvae.compression.jpeg import match_warnings
from robustvae.errors import RobustVAEError
from robustvae.experiments.rundir import RunDir
from robustvae.io import unique_names, write_bytes
from robustvae.reporting import aggregate as agg
from robustvae.reporting import certify as cert
from robustvae.reporting import compression as comp
from robustvae.reporting import confounders
from robustvae.reporting import defences as dfn
from robustvae.reporting import figures, tables
from robustvae.reporting import targeted as tgt
from robustvae.reporting.load import RunSet, load_runs
from robustvae.reporting.strength import strength_summary, strength_tables

REPORT_FILES = (
    "index.html",
    "summary.json",
    "figure10.png",
    "figure10.pdf",
    "figure10.svg",
    "layers.png",
    "layers.pdf",
    "table.csv",
    "table.md",
    "table.tex",
    "checks.csv",
    "checks.md",
    "atlas.csv",
    "targeted.png",
    "targeted.csv",
    "targeted.md",
)
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


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def read_evals(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Results of ``robustvae eval`` (one result or ``{"results": [...]}`` per file)."""
    from robustvae.validation import EvalResult, check_json, read_json_any

    fix = "pass a file written by robustvae eval"
    out: list[dict[str, Any]] = []
    for p in paths:
        obj = read_json_any(p)
        items = obj.get("results", [obj]) if isinstance(obj, dict) and "results" in obj else [obj]
        if not isinstance(items, list) or not items:
            raise RobustVAEError(f"eval file {p}: field 'results' should be a list of eval results; {fix}")
        for i, item in enumerate(items):
            where = f"{p} (result {i + 1})" if len(items) > 1 or isinstance(obj, dict) and "results" in obj else p
            out.append(check_json(where, item, EvalResult, fix))
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
        training = (
            f"{cfg.get('name', '?')}: {budget}, batch {train.get('batch_size', '?')}, "
            f"channels {model_cfg.get('channels', '?')}/{model_cfg.get('hidden', '?')}"
            if cfg
            else f"not trained by robustvae: {m.get('path')} (sha256 of its {m.get('sha256_of', 'file')})"
        )
        rows.append(
            {
                "label": m.get("label"),
                "sha256": m.get("sha256"),
                "path": m.get("path"),
                "arch": model_cfg.get("arch") or m.get("arch"),
                "dataset": _images_of(m, cfg),
                "num_layers": m.get("num_layers"),
                "training": training,
                "nll_nats": e.get("nll_nats") if e else None,
                "nelbo_nats": e.get("nelbo_nats") if e else None,
                "eval": {
                    k: e.get(k) for k in ("split", "images", "iw_samples", "nll_bpd", "active_units", "total_units")
                }
                if e
                else None,
                "eval_selection": (e.get("image_set") or {}).get("selection") if e else None,
                "diag_images": m.get("layer_diagnostics_images"),
            }
        )
    return rows


def _images_of(m: dict[str, Any], cfg: dict[str, Any]) -> str | None:
    """The images a model was attacked on: a user's image set (path, count, pixel hash), the dataset given instead
    of its own (``data``), or its own dataset."""
    s = m.get("image_set")
    if s:
        return (
            f"{s['path']} ({s['images']} images, {s['layout']} {s['dtype']}, pixels sha256 {s['pixels_sha256'][:12]})"
        )
    return m.get("data") or cfg.get("data", {}).get("name")


def _run_rows(runs: RunSet) -> list[dict[str, Any]]:
    """What each run file says about itself: command, status, settings, versions, commit, checkpoints."""
    rows = []
    for r in runs.runs:
        info = r.info
        wall = info.get("wall_time_s")
        rows.append(
            {
                "dir": str(r.dir),
                "name": r.name,
                "records": r.records,
                "command": _command_text(info.get("command")),
                "status": info.get("status"),
                "units_done": info.get("units_done"),
                "units_total": info.get("units_total"),
                "wall_time_s": wall,
                "wall_time": _seconds_text(wall),
                "device": info.get("device"),
                "threads": info.get("torch_threads"),
                "git_commit": info.get("git_commit"),
                "versions": info.get("versions") or {},
                "attack": info["settings"].get("attack", {}),
                "shard": info["settings"].get("shard", "1/1"),
                "models": [
                    {"label": m.get("label"), "sha256": m.get("sha256"), "path": m.get("path")}
                    for m in info.get("models", [])
                ],
            }
        )
    return rows


def _command_text(command: Any) -> str:
    """A run.json's ``command`` (argv list, or a string from elsewhere) as one shell line; '?' when not recorded."""
    if isinstance(command, list):
        return shlex.join(map(str, command))
    return str(command) if command else "?"


def _seconds_text(seconds: Any) -> str:
    return f"{seconds:.1f} s" if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else "?"


def _html_table(df: pd.DataFrame, left: int) -> dict[str, Any]:
    return {"headers": list(df.columns), "rows": df.astype(str).values.tolist(), "left": left}


def render_html(context: dict[str, Any]) -> str:
    """The report page from ``templates/report.html`` (Jinja2, autoescape on)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("robustvae.reporting", "templates"), autoescape=True, undefined=StrictUndefined
    )
    return env.get_template("report.html").render(**context)


def _read_notes(notes: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    texts = []
    for p in notes:
        try:
            texts.append((Path(p).name, Path(p).read_text()))
        except UnicodeDecodeError:
            raise RobustVAEError(f"notes file {p} is not UTF-8 text; pass a text file") from None
        except OSError as e:
            raise RobustVAEError(f"cannot read notes file {p}: {e.strerror or e}") from None
    return texts


def _figure_bytes(fig: Any, fmt: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    return buf.getvalue()


@dataclass
class _Attack:
    """The numbers of the attack part: what was read and what was computed from it."""

    runs: RunSet
    diag: pd.DataFrame
    table: pd.DataFrame
    checks: pd.DataFrame
    models: list[dict[str, Any]]
    run_rows: list[dict[str, Any]]
    atlas: pd.DataFrame  # per panel, model and layer: utilisation beside the marginal damage
    notes: list[str]  # collapsed layers among the attacked ones
    targeted: pd.DataFrame  # targeted success per panel, model, k and attack (empty without targeted runs)
    carried_notes: list[str]  # compared models whose attacked layers differ in information by a large factor


def _analyse(
    run_dirs: Sequence[str | os.PathLike],
    eval_rows: list[dict[str, Any]],
    certify_dirs: Sequence[str | os.PathLike] = (),
) -> _Attack:
    runs = load_runs(run_dirs)
    diag = agg.diagnostics_frame(runs, eval_rows)
    table = agg.summarise(runs.records, diag)
    if table.empty:
        raise RobustVAEError(
            f"no attack records in {', '.join(map(str, run_dirs))} (only baselines); nothing to report"
        )
    table = confounders.add_carried(table, diag)
    untargeted = runs.records[~runs.records.run.isin(set(runs.targeted.get("run", [])))]
    versions = {str(r.dir): (r.info.get("ensemble") or {}).get("version") for r in runs.runs}
    checks = agg.checks(runs, table)
    if dfn.has_defences(runs.records):  # the adaptive attack must not be weaker than the non-adaptive one
        checks = pd.concat(
            [checks, pd.DataFrame(dfn.defence_checks(runs.records), columns=checks.columns)], ignore_index=True
        )
    if certify_dirs:  # an ensemble's k = 1 worst case against the optimal context attack on the same points
        gap = cert.gap_checks(
            cert.optimality_gap(cert.read_certify_records(list(certify_dirs)), cert.attack_worst_k1(list(run_dirs)))
        )
        if gap:
            checks = pd.concat([checks, pd.DataFrame(gap, columns=checks.columns)], ignore_index=True)
    return _Attack(
        runs,
        diag,
        table,
        checks,
        _models(runs, eval_rows),
        _run_rows(runs),
        agg.layer_atlas(table, diag),
        agg.notes(table),
        tgt.targeted_table(runs.targeted, untargeted, versions),
        confounders.carried_notes(table),
    )


def _gallery_pngs(runs: RunSet, per_k: int) -> dict[str, bytes]:
    """Per model (sorted), its gallery as PNG bytes."""
    by_model: dict[str, list] = {}
    for g in runs.galleries:
        by_model.setdefault(g.model, []).append(g)
    return {m: figures.png_bytes(figures.gallery_figure(es, per_k)) for m, es in sorted(by_model.items())}


def _attack_files(a: _Attack, shown: dict[str, pd.DataFrame], galleries: dict[str, bytes]) -> dict[str, bytes]:
    """Figures, galleries and tables of the attack part, by file name (in :data:`REPORT_FILES` order)."""
    fig10 = figures.figure10(a.table)
    files = {
        "figure10.png": figures.png_bytes(fig10),
        "figure10.pdf": _figure_bytes(fig10, "pdf"),
        "figure10.svg": _figure_bytes(fig10, "svg"),
    }
    if len(a.diag):
        fig_layers = figures.layers_figure(a.diag, a.atlas)
        files.update({"layers.png": figures.png_bytes(fig_layers), "layers.pdf": _figure_bytes(fig_layers, "pdf")})
    files.update(
        {
            "table.csv": a.table.to_csv(index=False).encode(),
            "table.md": tables.markdown(shown["table"]).encode(),
            "table.tex": tables.to_latex(shown["table"]).encode(),
            "checks.csv": a.checks.to_csv(index=False).encode(),
            "checks.md": tables.markdown(shown["checks"]).encode(),
            "atlas.csv": a.atlas.to_csv(index=False).encode(),
        }
    )
    if len(a.targeted):
        files.update(
            {
                "targeted.png": figures.png_bytes(tgt.targeted_figure(a.targeted)),
                "targeted.csv": a.targeted.to_csv(index=False).encode(),
                "targeted.md": tables.markdown(tgt.display_targeted(a.targeted)).encode(),
            }
        )
    files.update({f"gallery-{name}.png": png for name, png in zip(unique_names(list(galleries)), galleries.values())})
    return files


def _attack_summary(a: _Attack, names: list[str]) -> dict[str, Any]:
    """The attack part of ``summary.json`` (numbers stay numbers)."""
    return plain(
        {
            "bootstrap": {"n_boot": agg.N_BOOT, "seed": agg.BOOT_SEED, "level": agg.CI_LEVEL, "over": "points"},
            "monotone_tolerance": agg.MONOTONE_TOL,
            "table": a.table.to_dict("records"),
            "checks": a.checks.to_dict("records"),
            "checks_passed": int(a.checks.passed.sum()),
            "checks_failed": int((~a.checks.passed).sum()),
            "layers": a.diag.to_dict("records"),
            "atlas": a.atlas.to_dict("records"),
            "layer_notes": a.notes,
            "carried": {"note_factor": confounders.NOTE_FACTOR, "notes": a.carried_notes},
            "models": a.models,
            "strength": strength_summary(a.runs.records),
            "targeted": {"table": a.targeted.to_dict("records"), "unscored_rows": tgt.unscored_rows(a.runs.targeted)},
            "runs": [{k: v for k, v in r.items() if k not in ("wall_time",)} for r in a.run_rows],
            "files": names,
        }
    )


def _model_context(m: dict[str, Any]) -> dict[str, Any]:
    return {
        **m,
        "nll": tables.number(m["nll_nats"], ".2f"),
        "nelbo": tables.number(m["nelbo_nats"], ".2f"),
        "eval_note": _eval_note(m),
    }


def _eval_note(m: dict[str, Any]) -> str:
    """The --eval file's images and numbers, and the images the layer atlas counts on instead."""
    e, d = m["eval"], m.get("diag_images")
    atlas = f"; layer atlas: {d['images']} {d['split']} images, {d['selection']}" if d else ""
    if not e:
        return f"not given (--eval){atlas}"
    how = f" ({m['eval_selection']})" if m.get("eval_selection") else ""
    return (
        f"{e['split']}, {e['images']} images{how}, K = {e['iw_samples']}, active units "
        f"{e['active_units']}/{e['total_units']} on those images{atlas}"
    )


def _attack_context(
    a: _Attack, shown: dict[str, pd.DataFrame], files: dict[str, bytes], galleries: dict[str, bytes]
) -> dict[str, Any]:
    """What the page template needs of the attack part."""
    checks, shown_checks = a.checks, shown["checks"]
    left = sum(c in ("dataset", "norm", "eps", "model") for c in shown["table"].columns)
    return {
        "runs": a.run_rows,
        "n_records": len(a.runs.records),
        "checks_passed": int(checks.passed.sum()),
        "checks_failed": int((~checks.passed).sum()),
        "ci_level": agg.CI_LEVEL,
        "n_boot": agg.N_BOOT,
        "boot_seed": agg.BOOT_SEED,
        "monotone_tol": agg.MONOTONE_TOL,
        "figure10": _data_uri(files["figure10.png"]),
        "layers_figure": _data_uri(files["layers.png"]) if "layers.png" in files else "",
        "table": _html_table(shown["table"], left),
        "table_caption": tables.TABLE_CAPTION,
        "layer_table": _html_table(shown["layers"], 1),
        "atlas_table": _html_table(shown["atlas"], 2),
        "layer_notes": a.notes,
        "carried_table": _html_table(shown["carried"], 3 if "panel" in shown["carried"] else 2),
        "carried_notes": a.carried_notes,
        "carried_factor": f"{confounders.NOTE_FACTOR:g}",
        "check_counts": [
            (name, int(g.passed.sum()), int((~g.passed).sum())) for name, g in checks.groupby("check", sort=False)
        ],
        "checks": [
            {**c, "value_text": v, "limit_text": lim}
            for c, v, lim in zip(checks.to_dict("records"), shown_checks.value, shown_checks.limit)
        ],
        "models": [_model_context(m) for m in a.models],
        "galleries": [(m, _data_uri(p)) for m, p in galleries.items()],
        "model_names": sorted(a.table.model.unique()),
        "strength": [(title, _html_table(df, left)) for title, df, left in strength_tables(a.runs.records)],
        "targeted": _targeted_context(a, files),
    }


def _targeted_context(a: _Attack, files: dict[str, bytes]) -> dict[str, Any] | None:
    """The page's targeted section (None without targeted runs)."""
    unscored = tgt.unscored_rows(a.runs.targeted)
    if a.targeted.empty and not unscored:
        return None
    note = (
        f"{unscored} attack rows of targeted runs were written before msssim_target was recorded and are not in "
        f"this table (re-run them to score them)."
        if unscored
        else ""
    )
    return {
        "figure": _data_uri(files["targeted.png"]) if "targeted.png" in files else "",
        "table": _html_table(tgt.display_targeted(a.targeted), 6),
        "note": note,
    }


def _attack_part(
    run_dirs: Sequence[str | os.PathLike],
    eval_rows: list[dict[str, Any]],
    gallery_per_k: int,
    certify_dirs: Sequence[str | os.PathLike] = (),
) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes]]:
    """The attack part of a report: (summary entries, page context, files by name), computed, nothing written.
    ``certify_dirs``: certification runs given alongside, whose optimal context attack the ensembles are checked
    against."""
    a = _analyse(run_dirs, eval_rows, certify_dirs)
    shown = {
        "table": tables.display_table(a.table),
        "checks": tables.display_checks(a.checks),
        "layers": tables.display_layers(a.diag),
        "atlas": tables.display_atlas(a.atlas),
        "carried": tables.display_carried(a.table),
    }
    galleries = _gallery_pngs(a.runs, gallery_per_k)
    files = _attack_files(a, shown, galleries)
    defences, defences_context, defence_files = dfn.defence_part(a.runs.records)
    files.update(defence_files)
    names = [f for f in REPORT_FILES if f in files or f in ("index.html", "summary.json")]
    names += [f for f in files if f.startswith("gallery-")] + list(defence_files)
    summary, context = _attack_summary(a, names), _attack_context(a, shown, files, galleries)
    if defences is not None:
        summary["defences"] = defences
    context["defences"] = defences_context
    return summary, context, files


def _compression_context(run: comp.CompressionRun, table: pd.DataFrame, png: bytes, pictures: int) -> dict[str, Any]:
    """What the page template needs of one compression run."""
    info = run.info
    per_image = run.records.sort_values(["image", "model", "k"], kind="stable")
    models = []
    for m in info.get("models", []):
        ks = m.get("k", m.get("layers", []))  # run.json of a compression run: the k coded (``layers`` before)
        models.append(
            {
                **m,
                "ks": ks,
                "speed": f"{m['patches_per_s']:.1f} patches/s ({m['reconstructions_per_s']:.1f} "
                f"reconstructions/s over {len(ks)} k)",
            }
        )
    return {
        "dir": str(run.dir),
        "figure": _data_uri(png),
        "table": _html_table(tables.display_compression(table), 1),
        "per_image": _html_table(tables.display_compression(per_image), 2),
        "pictures": [(name, _data_uri(p.read_bytes())) for name, p in run.side_by_side()[:pictures] if p.is_file()],
        "images": len(info["images"]),
        "command": _command_text(info.get("command")),
        "wall_time": _seconds_text(info.get("wall_time_s")),
        "device": info.get("device"),
        "threads": info.get("torch_threads"),
        "settings": info.get("settings", {}),
        "jpeg": info.get("jpeg") or {},
        "versions": info.get("versions") or {},
        "git_commit": info.get("git_commit"),
        "models": models,
        "warnings": match_warnings(run.records),
    }


def _compression_part(
    runs: list[comp.CompressionRun], pictures: int = comp.MAX_PICTURES
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, bytes]]:
    """The compression section: (summary entry, one page context per run, files by name)."""
    files: dict[str, bytes] = {}
    frames, contexts, infos = [], [], []
    for i, run in enumerate(runs, start=1):
        table = tables.summary_table(run.records)
        png = figures.png_bytes(comp.rd_figure(run.records, run.jpeg))
        files[f"compression-rd-{i}.png"] = png
        frames.append(table.assign(run=str(run.dir)))
        contexts.append(_compression_context(run, table, png, pictures))
        info = run.info
        infos.append(
            {k: v for k, v in info.items() if k != "command"} | {"dir": str(run.dir), "command": info.get("command")}
        )
    table = pd.concat(frames, ignore_index=True)
    files["compression.csv"] = table.to_csv(index=False).encode()
    files["compression.md"] = tables.markdown(tables.display_compression(table).assign(run=table.run)).encode()
    summary = {
        "models": sorted(table.model.unique()),
        "table": table.to_dict("records"),
        "runs": infos,
        "records": pd.concat([r.records.assign(run=str(r.dir)) for r in runs]).to_dict("records"),
    }
    return summary, contexts, files


def _check_out(out: Path, force: bool, names: Sequence[str] = ("index.html", "summary.json")) -> None:
    """Refuse to replace any file the report would write, without ``force``; and an unusable ``out``."""
    from robustvae.experiments.rundir import RunDir

    RunDir(out).check_usable()
    existing = [f for f in names if (out / f).exists() or (out / f).is_symlink()]
    if existing and not force:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise RobustVAEError(
            f"{out} already holds a report ({', '.join(existing[:3])}{more}); pass --force to replace it"
        )


def _parts(
    attack_dirs: list[str | os.PathLike],
    compression: list[comp.CompressionRun],
    eval_rows: list[dict[str, Any]],
    gallery_per_k: int,
    certify_dirs: Sequence[str | os.PathLike] = (),
) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes], list[str]]:
    """Every part of a report: (summary entries, page context, files by name, model names), nothing written."""
    attack = bool(attack_dirs) or not (compression or certify_dirs)
    parts: dict[str, Any] = {}
    context: dict[str, Any] = {"attack": attack, "compression": None, "certify": None, "defences": None}
    files: dict[str, bytes] = {}
    names = ["index.html", "summary.json"]
    models: list[str] = []
    if attack:
        parts, ctx, files = _attack_part(attack_dirs, eval_rows, gallery_per_k, certify_dirs)
        names = parts.pop("files")
        models = ctx.pop("model_names")
        context.update(ctx)
    if compression:
        parts["compression"], context["compression"], comp_files = _compression_part(compression)
        models += [m for m in parts["compression"]["models"] if m not in models]
        names += list(comp_files)
        files.update(comp_files)
    if certify_dirs:  # the gap to the gradient attack reads the attack runs given alongside
        parts["certify"], context["certify"], cert_files = cert.certify_part(list(certify_dirs), list(attack_dirs))
        models += [m for m in parts["certify"]["models"] if m not in models]
        names += list(cert_files)
        files.update(cert_files)
    parts["files"] = names
    return parts, context, files, models


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
    from robustvae import __version__

    out = Path(out)
    _check_out(out, force)
    compression_dirs = [d for d in run_dirs if comp.is_compression_run(d)]
    compression = [comp.load_compression_run(d) for d in compression_dirs]
    certify_dirs = [d for d in run_dirs if cert.is_certify_run(d)]
    eval_rows = read_evals(evals)
    note_texts = _read_notes(notes)
    parts, context, files, models = _parts(
        [d for d in run_dirs if d not in compression_dirs + certify_dirs],
        compression,
        eval_rows,
        gallery_per_k,
        certify_dirs,
    )
    default = (
        "robustvae report: "
        if context["attack"]
        else ("robustvae compression report: " if context["compression"] else "robustvae certification report: ")
    )
    title = title or default + ", ".join(sorted(models))
    summary = plain({"format": SUMMARY_FORMAT, "title": title, **parts})
    html = render_html(
        {"title": title, "version": __version__, "notes": note_texts, "files": summary["files"], **context}
    )
    _check_out(out, force, [*files, "summary.json", "index.html"])
    with RunDir(out).locked():  # files are replaced by rename: a link in out is replaced, never written through
        for name, data in files.items():
            write_bytes(out / name, data, root=out)
        write_bytes(out / "summary.json", (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode(), root=out)
        write_bytes(out / "index.html", html.encode(), root=out)
    return summary
