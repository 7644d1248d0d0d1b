"""A bad-input sweep over every file robustvae reads (used by tests/test_file_sweep.py and by hand).

Valid files are made once by running the commands on tiny inputs. Then each field of each file kind is given, in
turn, each of six mutations: ``missing``, ``null``, ``wrong_type``, ``out_of_range``, ``nan`` and ``huge``; the
command that reads that kind of file runs on the mutated copy. Whether a mutated value is valid is decided by the
table :data:`SPECS` below: an independent statement of what each field may hold (written from the file formats'
documentation, not from robustvae's validators), so the sweep can find both tracebacks and values that are
accepted although invalid. Outcomes:

* ``ok``: an invalid value refused with one ``error:`` line (exit 2), or a valid value accepted (exit 0);
* ``accepted_invalid``: exit 0 on a value the table says is invalid;
* ``refused_valid``: a one-line refusal of a value the table says is valid;
* ``traceback``, ``multi_line``: an escape or another exit code, or an error of more than one line;
* ``hang``: more than :data:`CPU_LIMIT_S` seconds of CPU time (a value that makes a reader crawl).

A mutation that does not apply to a field (``out_of_range`` of a string, ``null`` in TOML) is not run. The figures'
rasterisation is stubbed (``fast_figures``) to keep the sweep affordable: the values still reach the figure code,
only the pixels are not drawn (tests/test_file_sweep.py draws valid extremes for real).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MUTATIONS = ("missing", "null", "wrong_type", "out_of_range", "nan", "huge")

# What each field may hold. Kinds: str (any text), name (a label or id: it becomes a file name, so at most 255 bytes;
# huge is invalid), text (a message shown in reports: a few lines at most), sha (a file's hash: compared and shown,
# never recomputed; short text, empty for a model built in memory), enum:a|b, int (any 64-bit), int0 (>= 0), int1 (>= 1), score (an MS-SSIM:
# [0, 1] or NaN), measure (>= 0, or NaN / inf), unitmeasure (an L-inf distance of [0, 1] images: [0, 1] or NaN),
# setting (finite, >= 0), eps (an L-inf budget: finite, in [0, 1)), number (any, NaN too), bool, list, dict, pixels
# (an image array: values in [0, 1], NaN allowed in reconstructions), info (anything: only read to be shown).
# Flags: "?" the field may be missing, "~" it may be null, "&" one of a group that is given whole or not at all (the
# valid file gives the whole group, so one member missing, null or empty is invalid).
RECORD_COMMON = {
    "unit": "name",
    "model": "name",
    "checkpoint_sha256": "sha",
    "dataset": "name",
    "norm": "enum:linf|l2",
    "eps": "eps",
    "seed": "int0",
    "temperature": "setting",
    "point": "int0",
    "test_index": "int0",
    "label": "int",
}
SPECS: dict[str, dict[str, str]] = {
    "attack records": {
        **RECORD_COMMON,
        "k": "int1",
        "objective": "name",
        "optimizer": "name",
        "steps": "int1",
        "recon": "name?",
        "temperature_convention": "name?",
        "kind": "enum:attack|no_attack|floor|noise|unrelated",
        "restart": "int0",
        "msssim": "score",
        "msssim_input": "score",
        "psnr": "number?~",
        "skl": "list?~",
        "skl.0": "number",
        "delta_linf": "unitmeasure?",
        "delta_l2": "measure?",
        "final_loss": "number?~",
        "nonfinite": "bool?",
        "target_point": "int0?~",
        "member": "name?~",
        "member_steps": "int0?~",
        "curve": "dict?~",
        "curve.1": "score",
        "grad_norm": "measure?~",
    },
    "attack run.json": {
        "": "dict",
        "settings": "dict",
        "settings.attack": "dict",
        "settings.attack.eps": "eps?",
        "settings.attack.restarts": "int1?",
        "settings.attack.steps": "int1?",
        "settings.attack.norm": "enum:linf|l2?",
        "settings.attack.temperature": "setting?",
        "settings.attack.seed": "int0?",
        "settings.attack.split": "enum:train|val|test?",
        "settings.models": "list?~",
        "settings.shard": "name?",
        "settings.units": "list?~",
        "models": "list",
        "models.0.label": "name",
        "models.0.sha256": "sha?",
        "models.0.num_layers": "int1?~",
        "models.0.config": "dict?~",
        "models.0.config.model.channels": "int1?",
        "models.0.layer_diagnostics": "list?~",
        "models.0.layer_diagnostics.0.layer": "int1",
        "models.0.layer_diagnostics.0.units": "int1",
        "models.0.layer_diagnostics.0.kl_nats": "number",
        "models.0.layer_diagnostics.0.active_units": "int0?~",
        "status": "enum:running|complete?~",
        "units_total": "int0?~",
        "units_done": "int0?~",
        "wall_time_s": "setting?~",
        "command": "info",
        "git_commit": "str?~",
        "device": "str?~",
        "torch_threads": "int1?~",
    },
    "gallery": {
        "model": "name",
        "k": "int1",
        "x": "pixels",
        "x_adv": "pixels",
        "rec": "pixels",
        "rec_adv": "pixels",
        "msssim": "score",
        "points": "int0",
        "restarts": "int0",
        "unit": "info",
    },
    "eval": {
        "": "dict",
        "nll_nats": "number",
        "nelbo_nats": "number?~",
        "nll_bpd": "number?~",
        "images": "int1?~",
        "iw_samples": "int1?~",
        "active_units": "int0?~",
        "total_units": "int0?~",
        "checkpoint_sha256": "sha?~",
        "model": "name?~",
        "split": "name?~",
        "layers": "list?~",
        "layers.0.layer": "int1",
        "layers.0.units": "int1",
        "layers.0.kl_nats": "number",
        "layers.0.active_units": "int0?~",
        "image_set": "dict?~",
        "settings": "info",
    },
    "certify records": {
        **RECORD_COMMON,
        "context": "name",
        "coefficients": "int1",
        "certified": "bool",
        "changeable": "int0",
        "reachable_levels": "int0",
        "radius": "measure?~",
        "msssim_k1": "score?~",
        "k1_identical": "bool?~",
        "delta_linf": "unitmeasure?~",
        "delta_l2": "measure?~",
        "status": "text?~",
    },
    "certify run.json": {
        "": "dict",
        "kind": "enum:certify",
        "settings": "dict",
        "settings.certify": "dict",
        "settings.certify.norm": "enum:linf|l2?",
        "settings.certify.points": "int1?",
        "settings.certify.time_limit": "setting?",
        "models": "list",
        "models.0.label": "name",
        "status": "enum:running|complete?~",
        "wall_time_s": "setting?~",
    },
    "compress records.csv": {
        "image": "name",
        "width": "int1",
        "height": "int1",
        "channels": "int1",
        "conversion": "text~",
        "model": "name",
        "arch": "name",
        "k": "int1",
        "patch_size": "int1",
        "patches": "int1",
        "temperature": "setting",
        "seed": "int0",
        "psnr": "number",
        "msssim": "score",
        "msssim_impl": "name",
        "bits": "number",
        "bpp": "number",
        "jpeg_quality": "quality&",
        "jpeg_psnr": "number&",
        "jpeg_msssim": "score&",
        "jpeg_bpp": "measure&",
    },
    "compress jpeg.csv": {
        "image": "name",
        "quality": "quality",
        "bytes": "int0",
        "bpp": "measure",
        "psnr": "number",
        "msssim": "score",
        "msssim_impl": "name",
    },
    "compress run.json": {
        "": "dict",
        "kind": "enum:compress",
        "settings": "dict",
        "settings.temperature": "setting?",
        "settings.batch_size": "int1?",
        "images": "list",
        "images.0.name": "name",
        "images.0.width": "int1",
        "images.0.height": "int1",
        "models": "list",
        "models.0.label": "name",
        "models.0.patches_per_s": "measure",
        "wall_time_s": "setting?~",
        "warnings": "list?~",
    },
    "metrics.jsonl": {"kind": "enum:train|val", "step": "int0", "loss_nats": "info"},
    "summary.json": {
        "": "dict?",
        "steps": "int0",
        "epochs": "setting",
        "final_val": "dict",
        "wall_time_s": "setting",
        "name": "name?~",
    },  # missing: a resumed finished run writes it anew
    "train state": {
        "": "dict",
        "step": "int0",
        "best_val": "number",
        "skips": "int0?",
        "consecutive_skips": "int0?",
        "elapsed": "setting?",
    },
    "suite": {
        "models": "list?",
        "eps": "eps?",
        "restarts": "int1?",
        "points": "int1?",
        "steps": "int1?",
        "temperature": "setting?",
        "norm": "enum:linf|l2?",
        "seed": "int0?",
        "layers": "name?",
    },
    # channels, hidden and latents fall back to defaults that do not fit the valid file's tensors (it is not
    # default-sized), so a checkpoint without them is invalid
    "checkpoint config": {
        "": "dict",
        "name": "name?",
        "model.channels": "int1",
        "model.hidden": "int1",
        "model.z_dim": "int1?",
        "model.latents": "list",
        "model.image_size": "int1?",
        "model.logvar_limit": "setting?",
        "train.seed": "int0?",
        "data.name": "name?",
    },
}
HUGE_INT = 10**30
TEXT = ("str", "name", "text", "sha")
HUGE_STR = "x" * 100_000


@dataclass
class Case:
    kind: str  # the file kind (a key of SPECS)
    field: str  # dotted path ("" is the whole file)
    mutation: str


@dataclass
class Outcome:
    case: Case
    kind: str
    detail: str


def _spec(kind: str, field: str) -> tuple[str, bool, bool]:
    """(type, may be missing, may be null) of a field."""
    text = SPECS[kind][field]
    optional, nullable = "?" in text, "~" in text
    return text.replace("?", "").replace("~", "").replace("&", ""), optional, nullable


def value_for(tp: str, mutation: str) -> Any:
    """The mutated value (``...`` when the mutation does not apply to the type)."""
    if mutation == "null":
        return None
    if mutation == "nan":
        return ... if tp in ("info",) else math.nan
    if mutation == "wrong_type":
        return 12345 if tp in ("str", "name", "text", "sha") or tp.startswith("enum") else "abc"
    if mutation == "out_of_range":
        return {
            "int0": -1,
            "int1": 0,
            "score": 5.0,
            "measure": -1.0,
            "unitmeasure": 5.0,
            "setting": -1.0,
            "eps": -1.0,
            "quality": 101,
            "pixels": 5.0,
        }.get(tp, "bogus" if tp.startswith("enum") else ...)
    if mutation == "huge":
        if tp in ("int", "int0", "int1", "quality"):
            return HUGE_INT
        if tp in ("score", "measure", "unitmeasure", "setting", "eps", "number", "pixels"):
            return 1e308
        return HUGE_STR if tp in ("str", "name", "text", "sha") or tp.startswith("enum") else ...
    return ...


def expected_valid(case: Case) -> bool:
    """Whether the mutated file is one a reader should accept (from :data:`SPECS` alone)."""
    tp, optional, nullable = _spec(case.kind, case.field)
    if tp == "info":
        return True
    m = case.mutation
    if "&" in SPECS[case.kind][case.field] and (
        m in ("missing", "null") or (m == "nan" and case.kind.endswith(".csv"))
    ):
        return False  # one member of a whole-or-nothing group gone (a CSV writes NaN as an empty cell)
    if case.kind.endswith(".csv") and m == "null":  # an empty cell of a number column reads as NaN
        return nullable or tp in ("score", "measure", "unitmeasure", "number")
    if m == "missing":
        return optional
    if m == "null":
        return nullable
    if m in ("wrong_type", "out_of_range"):
        return False
    if m == "nan":
        return tp in ("score", "measure", "unitmeasure", "number") or (tp == "pixels")
    if m == "huge":
        return tp in ("measure", "setting", "number", "str")
    raise ValueError(m)


# --------------------------------------------------------------------------- the valid files


def _run(argv: list[str]) -> None:
    from robustvae.cli import main

    with _quiet() as err:
        code = main(argv)
    assert code == 0, f"{argv}: {err.getvalue()[-800:]}"


@contextlib.contextmanager
def _quiet():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        yield err


class Fixtures:
    """Valid files of every kind, made once (when first needed) under ``root/inputs`` by running the commands on tiny
    inputs: a trained VDVAE run, a DCT-VAE run, an image folder, and an attack, eval, certify and compress run."""

    def __init__(self, root: Path):
        self.root = root
        self.inputs = root / "inputs"
        self.inputs.mkdir(parents=True, exist_ok=True)

    @functools.cached_property
    def run(self) -> Path:
        _run(
            [
                "train",
                "--preset",
                "vdvae-mnist-tiny",
                "--data",
                "synthetic",
                "--quiet",
                "--batch-size",
                "8",
                "--steps",
                "2",
                "--out",
                str(self.inputs / "run"),
            ]
        )
        return self.inputs / "run"

    @functools.cached_property
    def attack(self) -> Path:
        _run(
            [
                "attack",
                str(self.run),
                "--points",
                "1",
                "--restarts",
                "1",
                "--steps",
                "1",
                "--layers",
                "1",
                "-q",
                "--out",
                str(self.inputs / "attack"),
            ]
        )
        return self.inputs / "attack"

    @functools.cached_property
    def eval(self) -> Path:
        _run(
            [
                "eval",
                str(self.run),
                "-k",
                "2",
                "--limit",
                "4",
                "--batch-size",
                "4",
                "-q",
                "--out",
                str(self.inputs / "eval.json"),
            ]
        )
        return self.inputs / "eval.json"

    @functools.cached_property
    def dct(self) -> Path:
        _run(
            [
                "train",
                "--preset",
                "dctvae-mnist-tiny",
                "--data",
                "synthetic",
                "--quiet",
                "--batch-size",
                "8",
                "--steps",
                "2",
                "--out",
                str(self.inputs / "dct"),
            ]
        )
        return self.inputs / "dct"

    @functools.cached_property
    def images(self) -> Path:
        import numpy as np
        from PIL import Image

        d = self.inputs / "images"
        d.mkdir()
        Image.fromarray((np.arange(28 * 28).reshape(28, 28) % 256).astype("uint8")).save(d / "a.png")
        return d

    @functools.cached_property
    def certify(self) -> Path:
        _run(
            [
                "certify",
                str(self.dct),
                "--points",
                "1",
                "--eps",
                "0.1",
                "--no-optimal",
                "-q",
                "--out",
                str(self.inputs / "certify"),
            ]
        )
        return self.inputs / "certify"

    @functools.cached_property
    def compress(self) -> Path:
        _run(
            [
                "compress",
                str(self.run),
                "--images",
                str(self.images),
                "--layers",
                "1",
                "-q",
                "--out",
                str(self.inputs / "compress"),
            ]
        )
        return self.inputs / "compress"


SUITE = {
    "models": [],
    "layers": "1",
    "eps": 0.1,
    "norm": "linf",
    "restarts": 1,
    "points": 1,
    "steps": 1,
    "temperature": 0.1,
    "seed": 0,
    "floor_draws": 0,
    "noise_draws": 0,
    "unrelated_draws": 0,
    "gallery_points": 0,
}


# --------------------------------------------------------------------------- mutating a structure


def _walk(obj: Any, path: str) -> tuple[Any, Any]:
    """(container, key) of a dotted path; list indices are numbers."""
    parts = path.split(".")
    for p in parts[:-1]:
        obj = obj[int(p)] if isinstance(obj, list) else obj[p]
    last = parts[-1]
    return obj, int(last) if isinstance(obj, list) else last


def mutate(obj: Any, path: str, mutation: str, value: Any) -> Any:
    """A copy of ``obj`` with the field at ``path`` removed (``missing``) or set to ``value``; ``""`` is the whole."""
    if path == "":
        return {"missing": ..., "null": None, "wrong_type": [1, 2]}.get(mutation, ...)
    obj = copy.deepcopy(obj)
    parent, key = _walk(obj, path)
    if mutation == "missing":
        if isinstance(parent, list):
            parent.pop(key)
        else:
            parent.pop(key, None)
    else:
        parent[key] = value
    return obj


def _toml(d: dict[str, Any]) -> str:
    def v(x: Any) -> str:
        if isinstance(x, bool):
            return "true" if x else "false"
        if isinstance(x, float):
            return "nan" if math.isnan(x) else repr(x)
        if isinstance(x, int):
            return str(x)
        if isinstance(x, str):
            return json.dumps(x)
        if isinstance(x, list):
            return "[" + ", ".join(v(i) for i in x) + "]"
        raise TypeError(type(x))

    return "".join(f"{k} = {v(x)}\n" for k, x in d.items())


# --------------------------------------------------------------------------- one case


# Settings every row of a run shares (a report refuses a run whose rows disagree on one): mutated in every row.
SHARED = {
    "checkpoint_sha256",
    "objective",
    "optimizer",
    "steps",
    "temperature",
    "temperature_convention",
    "seed",
    "recon",
    "dataset",
}


def _jsonl_case(src: Path, dst: Path, row_pick: Callable[[list[dict]], int], case: Case, value: Any) -> bool:
    rows = [json.loads(x) for x in src.read_text().splitlines()]
    i = row_pick(rows)
    if case.field.startswith("curve.") and rows[i].get("curve") is None:
        return False
    for j in range(len(rows)) if case.field in SHARED else [i]:
        rows[j] = mutate(rows[j], case.field, case.mutation, value)
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return True


def _json_case(path: Path, case: Case, value: Any) -> None:
    obj = mutate(json.loads(path.read_text()), case.field, case.mutation, value)
    if obj is ...:
        path.unlink()
    else:
        path.write_text(json.dumps(obj))


def _csv_case(path: Path, case: Case, value: Any) -> None:
    import pandas as pd

    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if case.mutation == "missing":
        df = df.drop(columns=[case.field])
    else:
        text = "" if value is None else "nan" if isinstance(value, float) and math.isnan(value) else str(value)
        df[case.field] = df[case.field].astype(object)
        df.loc[0, case.field] = text
    df.to_csv(path, index=False)


def _npz_case(path: Path, case: Case, value: Any) -> None:
    import numpy as np

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    name = case.field
    if case.mutation == "missing":
        arrays.pop(name)
    elif case.mutation == "null":
        arrays[name] = np.zeros((0,), np.float32)
    elif case.mutation == "wrong_type":  # numbers for a string array, text for a numeric one
        arrays[name] = np.full(arrays[name].shape, 12345 if arrays[name].dtype.kind in "US" else "abc")
    elif isinstance(value, str):
        arrays[name] = np.full(arrays[name].shape, value)
    elif isinstance(value, float):
        arrays[name] = np.full(arrays[name].shape, value, dtype=np.float64 if value > 1e38 else np.float32)
    else:  # an integer beyond int64 is stored as the largest uint64
        arrays[name] = (
            np.full(arrays[name].shape, value, dtype=np.int64)
            if value < 2**63
            else np.full(arrays[name].shape, 2**64 - 1, dtype=np.uint64)
        )
    np.savez_compressed(path, **arrays)


def prepare(fx: Fixtures, case: Case, work: Path) -> list[str] | None:
    """Write the mutated input under ``work``; the argv that reads it (None: the mutation does not apply)."""
    tp, _, _ = _spec(case.kind, case.field)
    value = value_for(tp, case.mutation)
    if value is ... and case.mutation != "missing" and case.field != "":
        return None
    if case.kind.endswith(".csv") and tp in TEXT and case.mutation in ("wrong_type", "nan"):
        return None  # a CSV cell is text: "12345" and "nan" are texts too
    if case.field == "" and case.mutation not in ("missing", "null", "wrong_type"):
        return None
    report = ["report", "--out", str(work / "report")]
    k = case.kind
    if k in ("attack records", "attack run.json", "gallery", "eval"):
        run = Path(shutil.copytree(fx.attack, work / "attack"))
        if k == "attack records":
            if not _jsonl_case(
                fx.attack / "records.jsonl",
                run / "records.jsonl",
                lambda rows: next(i for i, r in enumerate(rows) if r["kind"] == "attack"),
                case,
                value,
            ):
                return None
        elif k == "attack run.json":
            _json_case(run / "run.json", case, value)
        elif k == "gallery":
            _npz_case(next((run / "gallery").glob("*.npz")), case, value)
        else:
            ev = Path(shutil.copy(fx.eval, work / "eval.json"))
            _json_case(ev, case, value)
            return [*report, str(run), "--eval", str(ev)]
        return [*report, str(run)]
    if k.startswith("certify"):
        run = Path(shutil.copytree(fx.certify, work / "certify"))
        if k == "certify records":
            _jsonl_case(fx.certify / "records.jsonl", run / "records.jsonl", lambda rows: 0, case, value)
        else:
            _json_case(run / "run.json", case, value)
        return [*report, str(run)]
    if k.startswith("compress"):
        run = Path(shutil.copytree(fx.compress, work / "compress"))
        if k == "compress run.json":
            _json_case(run / "run.json", case, value)
        else:
            _csv_case(run / k.split()[1], case, value)
        return [*report, str(run)]
    if k in ("metrics.jsonl", "summary.json", "train state"):
        run = Path(shutil.copytree(fx.run, work / "run"))
        if k == "metrics.jsonl":
            _jsonl_case(fx.run / "metrics.jsonl", run / "metrics.jsonl", lambda rows: 0, case, value)
        elif k == "summary.json":
            _json_case(run / "summary.json", case, value)
            return ["train", "--resume", "--quiet", "--out", str(run)]  # a finished run: its summary is read back
        else:
            _ckpt_case(run / "last.pt", "train_state", case, value)
        return ["train", "--resume", "--steps", "3", "--quiet", "--out", str(run)]
    if k == "suite":
        if case.mutation == "null":
            return None  # TOML has no null
        suite = mutate(SUITE, case.field, case.mutation, value)
        (work / "suite.toml").write_text(_toml(suite))
        return ["attack", "--suite", str(work / "suite.toml"), str(fx.run), "-q", "--out", str(work / "attack")]
    if k == "checkpoint config":
        run = Path(shutil.copytree(fx.run, work / "run"))
        _ckpt_case(run / "best.pt", "config", case, value)
        return [
            "eval",
            str(run / "best.pt"),
            "-k",
            "2",
            "--limit",
            "4",
            "--batch-size",
            "4",
            "-q",
            "--out",
            str(work / "e.json"),
        ]
    raise ValueError(k)


def _ckpt_case(path: Path, entry: str, case: Case, value: Any) -> None:
    import torch

    ckpt = torch.load(path, weights_only=True)
    if case.field == "":
        if case.mutation == "missing":
            del ckpt[entry]
        else:
            ckpt[entry] = mutate(ckpt[entry], "", case.mutation, value)
    else:
        ckpt[entry] = mutate(ckpt[entry], case.field, case.mutation, value)
    torch.save(ckpt, path)


@contextlib.contextmanager
def fast_figures():
    """Figures are built (every value reaches the plotting code) but not rasterised: savefig writes a stub."""
    from matplotlib.figure import Figure

    real = Figure.savefig

    def stub(self, fname, **kwargs):  # noqa: ANN001
        self.canvas.get_renderer() if hasattr(self.canvas, "get_renderer") else None
        if hasattr(fname, "write"):
            fname.write(b"\x89PNG stub")

    Figure.savefig = stub
    try:
        yield
    finally:
        Figure.savefig = real


CPU_LIMIT_S = 120  # of CPU time, so a busy machine does not count: a tiny report takes a few seconds


def _in_child(argv: list[str]) -> tuple[int | None, str, str]:
    """Run the CLI on ``argv`` in a forked child (isolated, and killed by the kernel past :data:`CPU_LIMIT_S` of CPU
    time even inside C code): (exit code or None, the escaped exception or 'hang', stderr)."""
    import resource

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report through the pipe, leave without cleanup
        os.close(r)
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT_S, CPU_LIMIT_S + 10))
            from robustvae.cli import main

            with _quiet() as err:
                try:
                    code, exc = main(argv), ""
                except BaseException as e:  # noqa: BLE001 - every escape is reported
                    code, exc = None, f"{type(e).__name__}: {str(e)[:200]}"
            data = json.dumps([code, exc, err.getvalue()[-20000:]]).encode()
        except BaseException as e:  # noqa: BLE001
            data = json.dumps([None, f"{type(e).__name__}: {e}", ""]).encode()
        os.write(w, data)
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) or not chunks:
        return None, "hang", f"killed by signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else '?'}"
    code, exc, err = json.loads(b"".join(chunks))
    return code, exc, err


def run_case(fx: Fixtures, case: Case, index: int) -> Outcome | None:
    work = fx.root / "cases" / f"c{index}"
    work.mkdir(parents=True)
    argv = prepare(fx, case, work)
    if argv is None:
        return None
    code, exc, text = _in_child(argv)
    if exc == "hang":
        return Outcome(case, "hang", f"over {CPU_LIMIT_S} s of CPU time ({text})")
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("note: ")]
    valid = expected_valid(case)
    if exc or "Traceback" in text:
        return Outcome(case, "traceback", exc or lines[-1][:200])
    if code == 2:
        if len(lines) != 1 or not lines[0].startswith("error:"):
            return Outcome(case, "multi_line", " | ".join(lines[:3])[:300])
        return Outcome(case, "refused_valid" if valid else "ok", lines[0][:300])
    if code == 0:
        return Outcome(case, "ok" if valid else "accepted_invalid", "")
    return Outcome(case, "traceback", f"exit {code}: " + " | ".join(lines[-2:])[:300])


def cases(kinds: set[str] | None = None) -> list[Case]:
    return [
        Case(k, f, m) for k, fields in SPECS.items() if kinds is None or k in kinds for f in fields for m in MUTATIONS
    ]


def sweep(
    root: Path, kinds: set[str] | None = None, log=None, only: Callable[[Case], bool] | None = None
) -> list[Outcome]:
    fx = Fixtures(root)
    out = []
    with fast_figures():
        for i, case in enumerate(cases(kinds)):
            if only is not None and not only(case):
                continue
            res = run_case(fx, case, i)
            if res is None:
                continue
            out.append(res)
            if log is not None:
                print(
                    f"{res.kind:16s} {case.kind}: {case.field or '<file>'} {case.mutation}: {res.detail}",
                    file=log,
                    flush=True,
                )
    return out


def totals(results: list[Outcome]) -> dict[str, dict[str, int]]:
    """Counts per file kind: cases and each outcome."""
    out: dict[str, dict[str, int]] = {}
    for r in results:
        t = out.setdefault(
            r.case.kind,
            {
                "cases": 0,
                "ok": 0,
                "traceback": 0,
                "accepted_invalid": 0,
                "refused_valid": 0,
                "multi_line": 0,
                "hang": 0,
            },
        )
        t["cases"] += 1
        t[r.kind] += 1
    return out


if __name__ == "__main__":  # python tests/file_sweep.py ROOT [kind ...]
    import tempfile

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    os.environ.setdefault("ROBUSTVAE_DATA", str(root.parent / f"{root.name}-data"))
    res = sweep(root, set(sys.argv[2:]) or None, log=sys.stdout)
    print(json.dumps(totals(res), indent=1))
