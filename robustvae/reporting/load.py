"""Reading attack run directories (records, run.json, gallery) into one checked table.

Nothing is re-run: a report is a function of what ``robustvae attack`` wrote. Every
``records*.jsonl`` of a directory is read (shards merge) and each row gets the
settings of the ``run*.json`` written beside it, so a setting that is not in the
records (restarts, step size, the ensemble's version, ...) can still be checked.

One curve of Figure 10 is one model under one attack configuration in one panel.
Runs of the same model that differ in the attack (:data:`ATTACK_FIELDS`: the attack,
named ``pgd on skl`` or by an ensemble's version such as ``auto-v1``, its steps,
restarts, step size, straight-through) are side by side: each configuration becomes its
own curve, its ``model`` named ``<label> · <what differs>`` (:func:`name_curves`; the
label alone stays in ``model_label``, the configuration in ``attack``), the same name in
every panel. Runs that differ in eps are panels. Rows of one curve must share every
setting in :data:`CURVE_CONSTANTS` (the checkpoint, the reconstruction's temperature,
the seed, the split: what makes two measurements incomparable), otherwise the merge is
refused, naming the field.

Targeted runs (whose attack rows name a ``target_point``) are kept apart, in
:attr:`RunSet.targeted`, named and checked as curves of their own: a report can show a
targeted run beside an untargeted one of the same models. Figure 10, the tables and the
checks read the untargeted runs, or the targeted ones when no untargeted run is given.
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
CURVE_CONSTANTS = ["checkpoint_sha256", "temperature", "temperature_convention", "seed", "split"]
# what an attack configuration is: runs of one model that differ in these are curves side by side
ATTACK_FIELDS = ["attack", "steps", "restarts_configured", "step_size", "straight_through"]
CURVE_SEP = " · "  # between a model's label and what differs in its attack, e.g. "dctvae-mnist · pgd on skl"
ROW_KEY = [*CURVE_KEYS, "k", "kind", "point", "restart"]


def attack_name(optimizer: str, objective: str, version: str | None) -> str:
    """``pgd on skl`` for one attack; an ensemble by the version its run recorded (``auto-v1``: its members have
    their own objectives, and ``auto`` means whatever version was current when the run was made)."""
    return str(version) if version else f"{optimizer} on {objective}"


def ensemble_version(info: dict[str, Any]) -> str | None:
    """The ensemble version a ``run.json`` records (None for a single attack)."""
    ensemble = info.get("ensemble") if isinstance(info, dict) else None
    return ensemble.get("version") if isinstance(ensemble, dict) else None


def _describe(field_name: str, value: Any) -> str:
    """One attack setting in a curve's name."""
    if field_name == "attack":
        return str(value)
    if field_name == "steps":
        return f"{value} steps"
    if field_name == "restarts_configured":
        return f"{value} restarts"
    if field_name == "step_size":
        return "default step size" if value is None or pd.isna(value) else f"step size {value:g}"
    return "straight-through" if value else "plain gradients"


def name_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Per model label, one curve per attack configuration (:data:`ATTACK_FIELDS`), named by what differs.

    A label attacked one way keeps its name; attacked several ways, each configuration is
    ``<label> · <settings that differ among them>`` (``dctvae-mnist · pgd on skl`` beside
    ``dctvae-mnist · auto-v1``; ``vdvae · 10 steps`` beside ``vdvae · 50 steps``), the same
    in every panel, so colours and the eps checks follow one configuration across panels.
    ``model_label`` keeps the label.
    """
    df = df.assign(model_label=df.model)
    if df.empty:
        return df
    key = df[ATTACK_FIELDS].astype(object).where(df[ATTACK_FIELDS].notna(), None).apply(tuple, axis=1)
    names = pd.Series(df.model.to_numpy(), index=df.index, dtype=object)
    for label, configs in key.groupby(df.model):
        distinct = list(dict.fromkeys(configs))
        if len(distinct) < 2:
            continue
        differ = [i for i, f in enumerate(ATTACK_FIELDS) if len({c[i] for c in distinct}) > 1]
        for config in distinct:
            desc = ", ".join(_describe(ATTACK_FIELDS[i], config[i]) for i in differ)
            names[configs.index[configs.map(lambda c, config=config: c == config)]] = f"{label}{CURVE_SEP}{desc}"
    df["model"] = names
    return df


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
    targeted: pd.DataFrame = field(default_factory=pd.DataFrame)  # every row of the targeted runs (empty: none)

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
    return "run" + records_name[len("records") : -len(".jsonl")] + ".json"


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
        version = ensemble_version(run.info)
        extra = {
            "run": str(d),
            "restarts_configured": attack.get("restarts"),
            "step_size": attack.get("step_size"),
            "straight_through": attack.get("straight_through"),
            "split": attack.get("split"),
        }
        new = read_attack_records(path)
        run.records = len(new)
        rows.extend({**r, **extra, "attack": attack_name(r["optimizer"], r["objective"], version)} for r in new)
    return list(run_files.values()), rows


def _check_curves(df: pd.DataFrame) -> None:
    """Refuse rows of one curve (model in one panel) that differ in a setting, naming the field."""
    counts = df.groupby(CURVE_KEYS, dropna=False)[CURVE_CONSTANTS].nunique(dropna=False)
    for field_name in CURVE_CONSTANTS:
        bad = counts[counts[field_name] > 1]
        if len(bad):
            dataset, norm, eps, recon, model = bad.index[0]
            sub = df[
                (df.model == model)
                & (df.dataset == dataset)
                & (df.norm == norm)
                & (df.eps == eps)
                & (df.recon == recon)
            ]
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
    """The run's gallery files, each under the curve its model's rows in this run belong to."""
    attack = run.info["settings"].get("attack", {})
    out = []
    for path in sorted((run.dir / "gallery").glob("*.npz")):
        arrays = _read_gallery(path)
        mine = df[(df.model_label == str(arrays["model"])) & (df.run == str(run.dir))]
        if len(mine):
            out.append(
                GalleryEntry(
                    str(mine.dataset.iloc[0]),
                    attack.get("norm", "?"),
                    float(attack.get("eps", float("nan"))),
                    str(mine.model.iloc[0]),
                    int(arrays["k"]),
                    arrays,
                )
            )
    return out


def _read_gallery(path: Path) -> dict[str, np.ndarray]:
    """One gallery file's arrays; a corrupt, foreign or ill-shaped file is a one-line error naming it and the array
    (:func:`robustvae.validation.gallery_problem`)."""
    try:
        with np.load(path, allow_pickle=False) as z:  # files written before k was named hold ``layers``
            arrays = upgrade_row({name: z[name] for name in z.files})
    except Exception as e:  # noqa: BLE001 - zip, pickle and format errors come in many types
        raise RobustVAEError(
            f"gallery file {path} is unreadable ({type(e).__name__}); delete it (the report "
            f"then has no gallery for that unit) or re-run the attack"
        ) from None
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
    targeted_runs = set(df.run[(df.kind == "attack") & df.target_point.notna()])
    is_targeted = df.run.isin(targeted_runs)
    targeted, untargeted = name_curves(df[is_targeted]), name_curves(df[~is_targeted])
    for part in (targeted, untargeted):
        _check_curves(part)
    main = untargeted if len(untargeted) else targeted
    # one gallery per run directory (shards share it)
    galleries = [g for run in {r.dir: r for r in runs}.values() for g in _galleries(run, main)]
    return RunSet(main, runs, galleries, targeted)
