"""Reading attack run directories (records, run.json, gallery) into one checked table.

Nothing is re-run: a report is a function of what ``robustvae attack`` wrote. Every
``records*.jsonl`` of a directory is read (shards merge) and each row gets the
settings of the ``run*.json`` written beside it, so a setting that is not in the
records (restarts, step size, ...) can still be checked. One curve of Figure 10 is
one model in one panel; rows of one curve must share every setting in
:data:`CURVE_CONSTANTS`, otherwise the merge is refused, naming the field.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustvae.errors import RobustVAEError
from robustvae.records import ATTACK_COLUMNS, read_attack_records, upgrade_row
from robustvae.validation import AttackRun, gallery_problem, read_json

PANEL_KEYS = ["dataset", "norm", "eps", "recon"]  # a panel of Figure 10 per dataset, threat model, budget and rule
CURVE_KEYS = [*PANEL_KEYS, "model"]  # a curve per model within a panel
# settings that must be equal within one curve (records fields, then run.json settings)
CURVE_CONSTANTS = ["checkpoint_sha256", "objective", "optimizer", "steps", "temperature", "temperature_convention", "seed",
                   "restarts_configured", "step_size", "straight_through", "split"]
ROW_KEY = [*CURVE_KEYS, "k", "kind", "point", "restart"]


@dataclass
class RunFile:
    """One ``run.json`` (or ``run-shard-i-of-N.json``) and the directory it sits in."""

    dir: Path
    name: str
    info: dict[str, Any]
    records: int = 0


@dataclass
class GalleryEntry:
    """The worst-restart examples of one unit (``gallery/*.npz``) with the panel they belong to."""

    dataset: str
    norm: str
    eps: float
    model: str
    k: int
    arrays: dict[str, np.ndarray]


@dataclass
class RunSet:
    """Everything a report reads: merged records, the run files, and the gallery."""

    records: pd.DataFrame
    runs: list[RunFile]
    galleries: list[GalleryEntry] = field(default_factory=list)

    def model_infos(self) -> list[dict[str, Any]]:
        """``run.json``'s model entries (label, sha256, config, layer diagnostics), one per checkpoint."""
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        for run in self.runs:
            for m in run.info.get("models", []):
                seen.setdefault((m.get("label", "?"), m.get("sha256", "")), m)
        return list(seen.values())


def _read_json(path: Path) -> dict[str, Any]:
    """An attack run's ``run.json``, checked (:class:`robustvae.validation.AttackRun`): one line naming the field."""
    return read_json(path, AttackRun, fix="pass directories written by robustvae attack, or re-run the attack")


def _run_name(records_name: str) -> str:
    """``records-shard-1-of-2.jsonl`` -> ``run-shard-1-of-2.json`` (the file written beside it)."""
    return "run" + records_name[len("records"):-len(".jsonl")] + ".json"


def _read_dir(d: Path) -> tuple[list[RunFile], list[dict[str, Any]]]:
    if not d.is_dir():
        raise RobustVAEError(f"run directory {d} does not exist; pass directories written by robustvae attack")
    run_files = {p.name: RunFile(d, p.name, _read_json(p)) for p in sorted(d.glob("run*.json"))}
    if not run_files:
        raise RobustVAEError(f"{d} holds no run.json: not a directory written by robustvae attack")
    rows: list[dict[str, Any]] = []
    for path in sorted(d.glob("records*.jsonl")):
        run = run_files.get(_run_name(path.name))
        if run is None:
            raise RobustVAEError(f"{path} has no {_run_name(path.name)} beside it; copy the whole run directory")
        attack = run.info["settings"].get("attack", {})
        extra = {"run": str(d), "restarts_configured": attack.get("restarts"), "step_size": attack.get("step_size"),
                 "straight_through": attack.get("straight_through"), "split": attack.get("split")}
        new = read_attack_records(path)
        run.records = len(new)
        rows.extend({**r, **extra} for r in new)
    return list(run_files.values()), rows


def _check_curves(df: pd.DataFrame) -> None:
    """Refuse rows of one curve (model in one panel) that differ in a setting, naming the field."""
    counts = df.groupby(CURVE_KEYS, dropna=False)[CURVE_CONSTANTS].nunique(dropna=False)
    for field_name in CURVE_CONSTANTS:
        bad = counts[counts[field_name] > 1]
        if len(bad):
            dataset, norm, eps, recon, model = bad.index[0]
            sub = df[(df.model == model) & (df.dataset == dataset) & (df.norm == norm) & (df.eps == eps)
                     & (df.recon == recon)]
            values = ", ".join(sorted({repr(v) for v in sub[field_name].tolist()}))
            runs = ", ".join(sorted(set(sub.run)))
            raise RobustVAEError(
                f"records of {model} ({dataset}, {norm} eps {eps}) mix {field_name} = {values} (runs: {runs}); "
                f"one curve needs one setting: report these runs separately"
            )
    key = ROW_KEY + (["member"] if "member" in df else [])  # an ensemble's members share points and restarts
    dup = df.duplicated(key, keep=False)
    if dup.any():
        row = df[dup].iloc[0]
        runs = ", ".join(sorted(set(df[dup].run)))
        raise RobustVAEError(
            f"records of {row.model} k={row.k} point {row.point} ({row.kind}) appear twice (runs: {runs}); "
            f"is the same run given twice?"
        )


def _galleries(run: RunFile, df: pd.DataFrame) -> list[GalleryEntry]:
    attack = run.info["settings"].get("attack", {})
    out = []
    for path in sorted((run.dir / "gallery").glob("*.npz")):
        arrays = _read_gallery(path)
        model = str(arrays["model"])
        datasets = df.loc[(df.model == model) & (df.run == str(run.dir)), "dataset"].unique()
        if len(datasets):
            out.append(GalleryEntry(str(datasets[0]), attack.get("norm", "?"), float(attack.get("eps", float("nan"))),
                                    model, int(arrays["k"]), arrays))
    return out


def _read_gallery(path: Path) -> dict[str, np.ndarray]:
    """One gallery file's arrays; a corrupt, foreign or ill-shaped file is a one-line error naming it and the array
    (:func:`robustvae.validation.gallery_problem`)."""
    try:
        with np.load(path, allow_pickle=False) as z:  # files written before k was named hold ``layers``
            arrays = upgrade_row({name: z[name] for name in z.files})
    except Exception as e:  # noqa: BLE001 - zip, pickle and format errors come in many types
        raise RobustVAEError(f"gallery file {path} is unreadable ({type(e).__name__}); delete it (the report "
                             f"then has no gallery for that unit) or re-run the attack") from None
    found = gallery_problem(arrays)
    if found:
        raise RobustVAEError(f"gallery file {path}: {found}; delete it or re-run the attack")
    return arrays


def load_runs(run_dirs: Sequence[str | os.PathLike]) -> RunSet:
    """Read and merge the run directories; raise :class:`RobustVAEError` on anything a report cannot use."""
    if not run_dirs:
        raise RobustVAEError("no run directory given; pass directories written by robustvae attack")
    runs: list[RunFile] = []
    rows: list[dict[str, Any]] = []
    for d in dict.fromkeys(Path(p) for p in run_dirs):
        r, new = _read_dir(d)
        runs.extend(r)
        rows.extend(new)
    if not rows:
        raise RobustVAEError(
            f"no records in {', '.join(str(p) for p in run_dirs)}; run robustvae attack (or let it finish a unit) first"
        )
    df = pd.DataFrame(rows)
    for col in ATTACK_COLUMNS:
        if col not in df:
            df[col] = np.nan
    df["nonfinite"] = df["nonfinite"].fillna(False).astype(bool)
    _check_curves(df)
    # one gallery per run directory (shards share it)
    galleries = [g for run in {r.dir: r for r in runs}.values() for g in _galleries(run, df)]
    return RunSet(df, runs, galleries)
