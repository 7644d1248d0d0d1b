"""Every file robustvae reads is checked here: types, ranges and shapes, with one line naming file, line and field.

The schemas are pydantic (v2) models in strict mode (no silent conversion: ``"2"`` is not
an integer, ``true`` is not a number). The rows of experiments are the record dataclasses
of :mod:`robustvae.records`, whose annotations carry the ranges (the types below); the
JSON files (``run.json`` of each experiment, ``robustvae eval`` results, a training run's
``metrics.jsonl`` and ``summary.json``, a checkpoint's training state) and the gallery
arrays have their schemas in this module. Settings stored in a file (``settings.attack`` of
an attack's ``run.json``, a model's ``config``) are checked by the same config dataclasses
that check the command line (:mod:`robustvae.config`).

Values that are **measured** (an MS-SSIM, a PSNR, a distance, a loss) may be NaN or
infinite: a diverged computation is data that reports count and show. A finite measured
value outside what it can be (an MS-SSIM of 5) is refused. **Settings** (eps, steps,
temperatures, seeds) must be finite and in their range. Integers must fit in 64 bits.

MS-SSIM lies in [0, 1] up to :data:`MSSSIM_TOLERANCE`: with float32 arithmetic the
score of two (nearly) identical images can read above 1 (a noise row of a demo run read
1.0000128). The contrast-structure map (2 s_xy + C2) / (s_x^2 + s_y^2 + C2) is at most 1
in exact arithmetic, but each s is a difference E[x y] - mu_x mu_y of Gaussian-filtered
sums (two 11-tap passes: about 22 roundings of values at most 1, plus 3 for the product),
so each carries an absolute error of up to about 25 u (u = 2^-24); numerator and
denominator together up to 100 u, relative to a denominator of at least C2 = (0.03)^2 =
9e-4: 100 u / C2 = 6.6e-3 per pixel at worst, which a mean over pixels cannot raise. The
product of the five levels' factors, with exponents that add up to at most 1.4 (the
``kuzina`` variant counts the last level four times), makes at most 1.4 x 6.6e-3 = 9.3e-3.
The tolerance is 1e-2, just above that bound.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from robustvae.config import MAX_NAME
from robustvae.errors import RobustVAEError

MSSSIM_TOLERANCE = 1e-2  # derived in the module docstring
INT64 = 2**63
MAX_TEXT = 2000


def _score(v: float) -> float:
    if not math.isnan(v) and not -MSSSIM_TOLERANCE <= v <= 1 + MSSSIM_TOLERANCE:
        raise ValueError(f"must be in [0, 1] (an MS-SSIM; NaN marks a failed reconstruction), got {v!r}")
    return v


def _measure(v: float) -> float:
    if math.isfinite(v) and v < 0:
        raise ValueError(f"must be >= 0 (or NaN / inf for a diverged computation), got {v!r}")
    return v


def _unit_measure(v: float) -> float:
    if math.isfinite(v) and not 0 <= v <= 1 + MSSSIM_TOLERANCE:
        raise ValueError(f"must be in [0, 1] (a distance between images in [0, 1]) or NaN, got {v!r}")
    return v


def _int_key(v: str) -> str:
    if not v.isdigit():
        raise ValueError(f"keys must be step counts such as '10', got {v!r}")
    return v


# the types of fields, by what they hold
Score = Annotated[float, AfterValidator(_score)]  # an MS-SSIM: [0, 1] up to the tolerance, or NaN
Measure = Annotated[float, AfterValidator(_measure)]  # >= 0, or non-finite (a distance, a PSNR, bits, seconds)
UnitMeasure = Annotated[float, AfterValidator(_unit_measure)]  # an L-inf distance of images in [0, 1]
Number = float  # any number, NaN included (a loss)
Setting = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # a finite setting >= 0 (eps, a temperature)
Int = Annotated[int, Field(gt=-INT64, lt=INT64)]
Count = Annotated[int, Field(ge=0, lt=INT64)]  # an index, a seed, a count
Positive = Annotated[int, Field(ge=1, lt=INT64)]  # k, steps, a size
Curve = Annotated[
    dict[Annotated[str, AfterValidator(_int_key)], Score], Field(min_length=1)
]  # {"n": score after n steps}
PerLayer = Annotated[list[Number], Field(min_length=1)]  # one number per attacked layer
# A label, a unit id, a dataset or setting name: labels become file names (at most 255 bytes on common file systems)
# and are printed in tables, so a name of megabytes is refused rather than rendered.
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]  # a message (a solver's status)
Sha256 = Annotated[str, Field(max_length=MAX_NAME)]  # a file's hash (compared, shown); empty for a model in memory

STRICT = ConfigDict(strict=True, extra="allow")


# --------------------------------------------------------------------------- errors


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def describe(e: ValidationError) -> str:
    """The first problem of a validation error on one line: ``field 'eps': must be finite, got inf``."""
    first = e.errors(include_url=False)[0]
    loc, kind = _where(first["loc"]), first["type"]
    if kind == "missing":
        return f"field '{loc}' is missing"
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = repr(got)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"field '{loc}': {msg[0].lower() + msg[1:]}" + ("" if "got" in msg else f", got {shown}")


def problem(schema: type[BaseModel], obj: Any) -> str | None:
    """What is wrong with ``obj`` under ``schema`` (one line naming the field), else None."""
    try:
        schema.model_validate(obj)
    except ValidationError as e:
        return describe(e)
    return None


# --------------------------------------------------------------------------- rows of experiments


@functools.cache
def row_schema(record: type) -> type[BaseModel]:
    """A strict pydantic model of a record dataclass (its annotations carry the ranges), built once."""
    hints = typing.get_type_hints(record, include_extras=True)
    fields = {
        f.name: (hints[f.name], ... if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(record)
    }
    return create_model(f"{record.__name__}Row", __config__=STRICT, **fields)


def row_problem(
    record: type, row: dict[str, Any], rules: Callable[[dict[str, Any]], str | None] | None = None
) -> str | None:
    """What is wrong with one row of ``record`` (a missing field, a type, a range; then ``rules`` across fields)."""
    found = problem(row_schema(record), row)
    if found is None and rules is not None:
        found = rules(row)
    return found


# --------------------------------------------------------------------------- JSON files


def _config_check(make: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A validator that runs a config dataclass's own checks on a stored settings table."""
    from robustvae.errors import ConfigError

    def check(value: dict[str, Any]) -> dict[str, Any]:
        try:
            make(value)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return value

    return check


def _attack_settings(d: dict[str, Any]) -> Any:
    from robustvae.config import AttackConfig, from_dict

    return from_dict(AttackConfig, d)


def _certify_settings(d: dict[str, Any]) -> Any:
    from robustvae.config import CertifyConfig, from_dict

    return from_dict(CertifyConfig, d)


def _compress_settings(d: dict[str, Any]) -> Any:
    from robustvae.config import CompressConfig, from_dict

    return from_dict(CompressConfig, d)


def _model_config(d: dict[str, Any]) -> Any:
    from robustvae.config import Config

    return Config.from_dict(d)


AttackSettingsTable = Annotated[dict[str, Any], AfterValidator(_config_check(_attack_settings))]
CertifySettingsTable = Annotated[dict[str, Any], AfterValidator(_config_check(_certify_settings))]
CompressSettingsTable = Annotated[dict[str, Any], AfterValidator(_config_check(_compress_settings))]
ConfigTable = Annotated[dict[str, Any], AfterValidator(_config_check(_model_config))]


class _Strict(BaseModel):
    model_config = STRICT


class LayerRow(_Strict):
    """One layer of eval's ``layers`` and of run.json's ``layer_diagnostics``."""

    layer: Positive
    resolution: Positive
    shape: list[Positive]
    units: Positive
    kl_nats: Number
    active_units: Count | None = None
    kind: str | None = None
    levels: Positive | None = None
    levels_used: Measure | None = None
    varying_units: Count | None = None


class ModelEntry(_Strict):
    """A model as a run.json lists it."""

    label: Name
    sha256: Sha256 = ""
    path: str | None = None
    config: ConfigTable | None = None
    num_layers: Positive | None = None
    layer_diagnostics: list[LayerRow] | None = None


class ModelRef(_Strict):
    label: Name
    sha256: Sha256


class _RunInfo(_Strict):
    """What every experiment's run.json shares."""

    command: list[str] | str | None = None
    versions: dict[str, str] | None = None
    git_commit: str | None = None
    device: str | None = None
    torch_threads: Positive | None = None
    processes: Positive | None = None
    status: typing.Literal["running", "complete"] | None = None
    units_total: Count | None = None
    units_done: Count | None = None
    wall_time_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class RunProgress(_RunInfo):
    """What a resumed experiment reads back from its own run.json: its settings (compared) and its progress."""

    kind: str | None = None
    settings: dict[str, Any]


Shard = Annotated[str, Field(pattern=r"^[1-9][0-9]{0,8}/[1-9][0-9]{0,8}$")]  # i/N


class AttackSettings(_Strict):
    attack: AttackSettingsTable
    models: list[ModelRef] | None = None
    shard: Shard = "1/1"
    units: list[Name] | None = None


class AttackRun(_RunInfo):
    """run.json (or run-shard-i-of-N.json) of ``robustvae attack``."""

    kind: typing.Literal["attack"] | None = None
    settings: AttackSettings
    models: list[ModelEntry]
    ensemble: dict[str, Any] | None = None
    context_dither: dict[str, str | None] | None = None


class CertifySettings(_Strict):
    certify: CertifySettingsTable
    models: list[ModelRef] | None = None
    shard: Shard = "1/1"
    points: Positive | None = None


class CertifyModel(ModelEntry):
    context: str | None = None


class CertifyRun(_RunInfo):
    """run.json of ``robustvae certify``."""

    kind: typing.Literal["certify"]
    settings: CertifySettings
    models: list[CertifyModel]


class ImageEntry(_Strict):
    name: Name
    path: str | None = None
    width: Positive
    height: Positive
    mode: str | None = None
    conversion: str | None = None
    sha256: str | None = None
    folder: Name | None = None  # its folder under images/ (distinct; the report reads it, never re-derives it)


class CompressModel(ModelEntry):
    layers: list[Positive] | None = None
    patch_size: Positive | None = None
    patches: Count | None = None
    patches_per_s: Measure
    reconstructions_per_s: Measure
    file_stem: Name | None = None  # its reconstructions' file names (distinct; the report reads it)


class CompressRun(_RunInfo):
    """run.json of ``robustvae compress``."""

    kind: typing.Literal["compress"]
    settings: CompressSettingsTable
    images: list[ImageEntry]
    models: list[CompressModel]
    jpeg: dict[str, Any] | None = None
    warnings: list[str] | None = None
    skipped_files: Count | None = None
    image_source: dict[str, Any] | None = None  # a dataset split or an image set, when not files


class EvalResult(_Strict):
    """One result of ``robustvae eval`` (the fields a report reads)."""

    nll_nats: Number
    nelbo_nats: Number | None = None
    nll_bpd: Number | None = None
    images: Positive | None = None
    iw_samples: Positive | None = None
    active_units: Count | None = None
    total_units: Count | None = None
    checkpoint: str | None = None
    checkpoint_sha256: Sha256 | None = None
    model: Name | None = None
    dataset: Name | None = None
    split: Name | None = None
    layers: list[LayerRow] | None = None
    image_set: dict[str, Any] | None = None


class MetricsRow(_Strict):
    """One line of a training run's ``metrics.jsonl``."""

    kind: typing.Literal["train", "val"]
    step: Count


class TrainSummary(_Strict):
    """A training run's ``summary.json`` (returned again when a finished run is resumed)."""

    name: Name | None = None
    steps: Count
    epochs: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    best_val_nelbo: float | None = None
    final_val: dict[str, Number]
    wall_time_s: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class TrainStateTable(_Strict):
    """The counters a training checkpoint carries (:class:`robustvae.training.checkpoint.TrainState`)."""

    step: Count
    best_val: float
    skips: Count = 0
    consecutive_skips: Count = 0
    elapsed: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


def _json(path: Path) -> Any:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise RobustVAEError(f"{path} is not a text file") from None
    except OSError as e:
        raise RobustVAEError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise RobustVAEError(
            f"{path} is not valid JSON (line {getattr(e, 'lineno', '?')}); restore it or re-run "
            f"the command that wrote it"
        ) from None


def check_json(
    path: str | os.PathLike, obj: Any, schema: type[BaseModel], fix: str = "re-run the command that wrote it"
) -> Any:
    """``obj`` (read from ``path``) under ``schema``: returned as is, or a one-line error naming file and field."""
    if not isinstance(obj, dict):
        raise RobustVAEError(
            f"{path} holds {type(obj).__name__ if obj is not None else 'null'}, not a table of fields; {fix}"
        )
    found = problem(schema, obj)
    if found:
        raise RobustVAEError(f"{path}: {found}; {fix}")
    return obj


def read_json(
    path: str | os.PathLike, schema: type[BaseModel], fix: str = "re-run the command that wrote it"
) -> dict[str, Any]:
    """A JSON file checked against ``schema`` (its fields stay a plain dict)."""
    return check_json(path, _json(Path(path)), schema, fix)


def read_json_any(path: str | os.PathLike) -> Any:
    """A JSON file's value, unchecked (one line when it is unreadable): for files whose kind is decided by content."""
    return _json(Path(path))


# --------------------------------------------------------------------------- CSV tables


class JpegRow(_Strict):
    """One row of a compression run's ``jpeg.csv`` (the JPEG sweep of one image at one quality)."""

    image: Name
    width: Positive
    height: Positive
    channels: Positive
    quality: Annotated[int, Field(ge=1, le=100)]
    bytes: Count
    bpp: Measure
    psnr: Number
    msssim: Score
    msssim_impl: Name


def _fields(schema: type[BaseModel]) -> dict[str, Any]:
    return {name: f.annotation for name, f in schema.model_fields.items()}


def _floaty(tp: Any) -> bool:
    """Whether a field's type admits a float (NaN in a CSV cell is a value there, not an empty cell)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Annotated:
        return _floaty(args[0])
    if args:
        return any(_floaty(a) for a in args)
    return tp is float


def _text_fields(schema: type[BaseModel]) -> list[str]:
    def texty(tp: Any) -> bool:
        args = typing.get_args(tp)
        return tp is str or any(texty(a) for a in args if a is not type(None)) if args else tp is str

    return [n for n, tp in _fields(schema).items() if texty(tp)]


def _optional(tp: Any) -> bool:
    """Whether a field's type admits None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Annotated:
        return _optional(args[0])
    return type(None) in args


def read_csv_rows(
    path: str | os.PathLike,
    schema: type[BaseModel],
    fix: str,
    rules: Callable[[dict[str, Any]], str | None] | None = None,
) -> Any:
    """A CSV file as a DataFrame whose every row fits ``schema`` (cells parsed leniently, as CSV holds text only);
    else one line naming the file, the line and the field."""
    import numpy as np
    import pandas as pd

    path = Path(path)
    try:  # text fields stay text (an image file 001.png is named "001", not 1)
        df = pd.read_csv(path, keep_default_na=True, dtype={n: str for n in _text_fields(schema)})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise RobustVAEError(f"cannot read {path} ({type(e).__name__}); {fix}") from None
    floaty = {n for n, tp in _fields(schema).items() if _floaty(tp)}
    # a text field that must be there reads an empty cell as "" (a model in memory has no checkpoint hash)
    empty_text = {n for n in _text_fields(schema) if not _optional(_fields(schema)[n])}
    for i, row in enumerate(df.to_dict("records")):
        plain = {}
        for k, v in row.items():
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and math.isnan(v) and k not in floaty:
                v = "" if k in empty_text else None  # an empty cell
            plain[str(k)] = v
        try:
            schema.model_validate(plain, strict=False)
        except ValidationError as e:
            raise RobustVAEError(f"{path} line {i + 2}: {describe(e)}; {fix}") from None
        if rules is not None and (found := rules(plain)):
            raise RobustVAEError(f"{path} line {i + 2}: {found}; {fix}")
    for name, f in schema.model_fields.items():  # optional columns a file lacks are columns of empty cells
        if name not in df and not f.is_required():
            df[name] = np.nan
    return df


# --------------------------------------------------------------------------- gallery arrays


GALLERY_IMAGES = ("x", "x_adv", "rec", "rec_adv")


def gallery_problem(arrays: dict[str, Any]) -> str | None:
    """What is wrong with a gallery file's arrays (see :func:`robustvae.experiments.attack.save_gallery`), else None."""
    import numpy as np

    for name in ("model", "k", *GALLERY_IMAGES, "msssim", "points", "restarts"):
        if name not in arrays:
            return f"it has no '{name}' array"
    if (
        arrays["model"].ndim != 0
        or arrays["model"].dtype.kind not in "US"
        or not 1 <= len(str(arrays["model"])) <= MAX_NAME
    ):
        return f"'model' should be one label of 1 to {MAX_NAME} characters"
    k = arrays["k"]
    if k.ndim != 0 or k.dtype.kind not in "iu" or not 1 <= int(k) < INT64:
        return f"'k' should be one integer >= 1, got {k!r:.40}"
    shape = arrays["x"].shape
    if len(shape) != 4 or not all(0 < s <= 4096 for s in shape):
        return f"'x' should hold images (N, C, H, W), got shape {shape}"
    for name in GALLERY_IMAGES:
        a = arrays[name]
        if a.shape != shape or a.dtype.kind != "f":
            return f"'{name}' should be floats of shape {shape} like 'x', got {a.dtype} {a.shape}"
        finite = a[np.isfinite(a)]
        if finite.size and (finite.min() < -MSSSIM_TOLERANCE or finite.max() > 1 + MSSSIM_TOLERANCE):
            return f"'{name}' should hold pixels in [0, 1], got values in [{finite.min():.3g}, {finite.max():.3g}]"
    n = shape[0]
    for name, kind in (("msssim", "f"), ("points", "iu"), ("restarts", "iu")):
        a = arrays[name]
        if a.shape != (n,) or a.dtype.kind not in kind:
            return f"'{name}' should be {n} {'numbers' if kind == 'f' else 'integers'}, got {a.dtype} {a.shape}"
        if kind == "iu" and n and not 0 <= int(a.min()) <= int(a.max()) < INT64:
            return f"'{name}' should be indices >= 0, got {int(a.min())}..{int(a.max())}"
    bad = [
        float(v) for v in arrays["msssim"] if not math.isnan(v) and not -MSSSIM_TOLERANCE <= v <= 1 + MSSSIM_TOLERANCE
    ]
    if bad:
        return f"'msssim' should be MS-SSIM scores in [0, 1], got {bad[0]!r}"
    return None
