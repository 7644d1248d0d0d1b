"""Record schemas: the rows that experiments write and reports read, defined once.

* :class:`AttackRecord`: one row of an attack sweep (``records.jsonl``), of kind
  ``attack`` (one per model, k, point and restart), ``no_attack`` (the same score with
  delta = 0 under the same rule and noise, paired with each attack row), ``floor``
  (clean vs clean under other prior noise) or ``noise`` (a random perturbation of the
  same budget) or ``unrelated`` (the point's reconstruction against that of another,
  unrelated test image: the damage level a large enough budget must reach); a defended
  sweep's rows also carry the defence (:data:`DEFENCE_FIELDS`, docs/defences.md);
* :class:`CompressionRecord`: one row of a compression run (``records.csv``), per
  model, image and k.

The number of attacked (or transmitted) top layers is ``k`` everywhere. Files
written before that name was settled call it ``layers``; :func:`upgrade_row` maps
old rows onto the current schema, so old runs keep loading. Optional fields that do
not apply to a row (``psnr`` of a floor row, ...) are left out of it, not written as
null.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from robustvae.io import read_jsonl

ATTACK_KINDS = ("attack", "no_attack", "floor", "noise", "unrelated")
DEFENCE_FIELDS = ("defence", "adaptive", "defence_settings", "defence_stats", "attack_cost")
# Fields a row kind writes as NaN because they do not apply to it (an unrelated image has no perturbation).
NOT_APPLICABLE: dict[str, tuple[str, ...]] = {"unrelated": ("msssim_input", "delta_linf", "delta_l2")}
COMPRESSION_RUN_KIND = "compress"  # run.json "kind" of a compression run directory
LEGACY_NAMES = {"layers": "k"}  # old field name -> current one
LEGACY_DEFAULTS = {"recon": "default", "temperature_convention": "std"}  # fields older attack records lack


class Record:
    """Base of the record dataclasses: column lists and conversion to a plain row."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def columns(cls) -> list[str]:
        """Every field, in the order rows are written."""
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    def to_row(self) -> dict[str, Any]:
        """A plain dict in column order; optional fields that are None are left out."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if not (f.name in self.OPTIONAL and getattr(self, f.name) is None)}


@dataclass(frozen=True)
class AttackRecord(Record):
    """One row of an attack sweep: a scored reconstruction and the settings behind it."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("psnr", "skl", "final_loss", "target_point", "member", "member_steps",
                                            "curve", "grad_norm", *DEFENCE_FIELDS)

    unit: str  # the work unit that wrote the row (resume and merge go by units)
    model: str  # label of the checkpoint in the sweep
    checkpoint_sha256: str
    dataset: str
    k: int  # the top k latent layers were attacked (and come from the posterior)
    objective: str
    optimizer: str
    norm: str
    eps: float
    steps: int
    seed: int
    temperature: float
    recon: str  # the reconstruction rule (robustvae.protocol): default | authors
    temperature_convention: str  # std | var: what the temperature scales
    kind: str  # attack | no_attack | floor | noise | unrelated
    point: int  # index among the attacked points
    test_index: int  # index of the image in its split
    label: int
    restart: int  # restart (attack) or draw (floor, noise)
    msssim: float  # MS-SSIM(clean reconstruction, this reconstruction)
    msssim_input: float  # MS-SSIM(x, x + delta)
    psnr: float | None = None
    skl: list[float] | None = None  # symmetric KL per attacked layer (attack and noise rows)
    delta_linf: float = 0.0
    delta_l2: float = 0.0
    final_loss: float | None = None  # the attack's best objective
    nonfinite: bool = False
    target_point: int | None = None  # supervised objective: the point pulled towards
    member: str | None = None  # ensemble runs (optimizer auto): the member that wrote the row (absent: a single attack)
    member_steps: int | None = None  # that member's steps per restart (its share of ``steps``)
    curve: dict[str, float] | None = None  # MS-SSIM of the best iterate after n steps, {"n": score} (attack rows)
    grad_norm: float | None = None  # norm of the objective's gradient at the start (gradient attacks)
    # a defended sweep (robustvae.defences.sweep); absent in an undefended one
    defence: str | None = None  # the defence every scored pass went through (robustvae.defences.DEFENCES)
    adaptive: bool | None = None  # the attack differentiated through the defence (else it attacked the model)
    defence_settings: dict[str, float] | None = None  # the defence's settings (Defence.settings)
    defence_stats: dict[str, float] | None = None  # attack / no_attack rows: the scoring pass's accept, step_size,
    # passes and seconds per image (absent where the defence did nothing, e.g. no Gaussian layer among the top k)
    attack_cost: dict[str, float] | None = None  # attack rows: seconds and model forward passes of this restart


@dataclass(frozen=True)
class CompressionRecord(Record):
    """One row of a compression run: a model's reconstruction of an image from its top k layers, and JPEG beside it."""

    image: str
    width: int
    height: int
    channels: int
    conversion: str | None
    model: str
    arch: str
    checkpoint_sha256: str
    k: int
    patch_size: int
    patches: int
    temperature: float
    seed: int
    psnr: float
    msssim: float
    msssim_impl: str
    bits: float
    bpp: float
    gaussian_bits: float
    context_bits_prior: float
    context_bits_raw: float
    bpp_context_raw: float
    jpeg_quality: int | None = None
    jpeg_psnr: float | None = None
    jpeg_msssim: float | None = None
    jpeg_bpp: float | None = None


@dataclass(frozen=True)
class CertifyRecord(Record):
    """One row of a certification run (``robustvae certify``): a model's context analysed at one point and eps.

    ``radius`` is the point's certified radius in the run's norm (the same in every eps
    row of the point; null when no image in [0, 1] can change the context). The
    ``optimal_*`` fields describe the optimal context attack (absent without it).
    """

    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "radius", "max_joint_changes", "max_joint_bound", "max_joint_proven", "optimal_decoded_l2", "optimal_bound",
        "optimal_proven", "optimal_changed", "msssim_k1", "k1_identical", "delta_linf", "delta_l2", "solve_time_s", "status", "gap")

    unit: str  # the work unit that wrote the row (resume and merge go by units)
    model: str
    checkpoint_sha256: str
    dataset: str
    context: str  # the codec's class
    norm: str
    eps: float
    seed: int
    temperature: float
    point: int  # index among the selected points (the same as an attack run's with the same seed)
    test_index: int
    label: int
    coefficients: int  # C * c * c
    certified: bool  # no image of the ball (and the box) changes any level: the k = 1 reconstruction is identical
    changeable: int  # coefficients that may change level on their own
    reachable_levels: int  # sum over coefficients of the levels each can reach (coefficients when certified)
    radius: float | None = None
    max_joint_changes: int | None = None  # most coefficients that change level jointly (the count MILP's best)
    max_joint_bound: float | None = None
    max_joint_proven: bool | None = None
    optimal_decoded_l2: float | None = None  # L2 change of the decoded context under the optimal attack
    optimal_bound: float | None = None  # the solver's upper bound on it
    optimal_proven: bool | None = None
    optimal_changed: int | None = None  # levels changed by that attack
    msssim_k1: float | None = None  # MS-SSIM(clean, attacked k = 1 reconstruction) under the default rule
    k1_identical: bool | None = None  # that reconstruction equals the clean one bit for bit
    delta_linf: float | None = None
    delta_l2: float | None = None
    solve_time_s: float | None = None  # both MILPs together
    status: str | None = None  # the decoded-change solve's message
    gap: float | None = None  # (bound - value) / bound of the decoded-change solve (0: proven)


ATTACK_COLUMNS = AttackRecord.columns()
CERTIFY_COLUMNS = CertifyRecord.columns()
CERTIFY_RUN_KIND = "certify"  # run.json "kind" of a certification run directory
COMPRESSION_COLUMNS = CompressionRecord.columns()


def upgrade_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row of any earlier robustvae version under the current field names (``layers`` -> ``k``)."""
    if not any(old in row for old in LEGACY_NAMES):
        return row
    return {LEGACY_NAMES.get(key, key): value for key, value in row.items()}


def upgrade_attack_row(row: dict[str, Any]) -> dict[str, Any]:
    """An attack row of any earlier version in the current schema: new names, defaults of newer fields, column order."""
    row = upgrade_row(row)
    if all(key in row for key in LEGACY_DEFAULTS):
        return row
    full = {**LEGACY_DEFAULTS, **row}
    return {**{c: full[c] for c in ATTACK_COLUMNS if c in full}, **{c: v for c, v in full.items() if c not in ATTACK_COLUMNS}}


def read_attack_records(path: str | os.PathLike, repair: bool = False) -> list[dict[str, Any]]:
    """The complete rows of an attack records file, in the current schema (:func:`upgrade_attack_row`).

    A torn last line (a crash mid-write) is ignored, and cut from the file with ``repair``;
    a row with a missing or ill-typed field is an error naming the file, line and field.
    """
    return [upgrade_attack_row(r) for r in read_jsonl(Path(path), repair=repair, check=attack_row_problem)]


def attack_row_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with an attack row (a missing field, a value of the wrong type), naming the field; else None.

    Numbers may be non-finite (a NaN score is data, counted by the report); ``layers`` is
    the old name of ``k``.
    """
    import typing

    row = upgrade_row(row)
    hints = typing.get_type_hints(AttackRecord)
    for f in dataclasses.fields(AttackRecord):
        if f.name not in row:
            if f.default is dataclasses.MISSING and f.name not in LEGACY_DEFAULTS:
                return f"field '{f.name}' is missing"
            continue
        if not _fits(row[f.name], hints[f.name]):
            return f"field '{f.name}' should be {_kind(hints[f.name])}, got {row[f.name]!r:.40}"
    return None


def _fits(value: Any, tp: Any) -> bool:
    import typing

    args = typing.get_args(tp)
    if type(None) in args:
        return value is None or _fits(value, next(a for a in args if a is not type(None)))
    if typing.get_origin(tp) is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if typing.get_origin(tp) is dict:
        return isinstance(value, dict) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _kind(tp: Any) -> str:
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false"}.get(tp, str(tp).replace("typing.", ""))
