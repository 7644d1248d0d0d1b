"""Record schemas: the rows that experiments write and reports read, defined once.

* :class:`AttackRecord`: one row of an attack sweep (``records.jsonl``), of kind
  ``attack`` (one per model, k, point and restart), ``no_attack`` (the same score with
  delta = 0 under the same rule and noise, paired with each attack row), ``floor``
  (clean vs clean under other prior noise) or ``noise`` (a random perturbation of the
  same budget) or ``unrelated`` (the point's reconstruction against that of another,
  unrelated test image: the damage level a large enough budget must reach); a defended
  sweep's rows also carry the defence (:data:`DEFENCE_FIELDS`, docs/defences.md);
* :class:`Selection` / :func:`selection`: which of a point's attack rows is the strongest
  (the lowest ``msssim`` for an untargeted attack, the highest ``msssim_target`` for a
  targeted one);
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
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from robustvae.config import eps_problem
from robustvae.io import read_jsonl
from robustvae.validation import (
    Count,
    Curve,
    Int,
    Measure,
    Name,
    Number,
    PerLayer,
    Positive,
    Score,
    Setting,
    Sha256,
    Text,
    UnitMeasure,
    row_problem,
)

Norm = Literal["linf", "l2"]  # robustvae.protocol.NORMS
Kind = Literal["attack", "no_attack", "floor", "noise", "unrelated"]
Quality = Annotated[int, Field(ge=1, le=100)]  # a JPEG quality
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
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if not (f.name in self.OPTIONAL and getattr(self, f.name) is None)
        }


@dataclass(frozen=True)
class AttackRecord(Record):
    """One row of an attack sweep: a scored reconstruction and the settings behind it."""

    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "psnr",
        "skl",
        "final_loss",
        "target_point",
        "member",
        "member_steps",
        "curve",
        "grad_norm",
        "target_test_index",
        "msssim_target",
        "msssim_target_before",
        "solver_s",
        "gradient_check",
        *DEFENCE_FIELDS,
    )

    unit: Name  # the work unit that wrote the row (resume and merge go by units)
    model: Name  # label of the checkpoint in the sweep
    checkpoint_sha256: Sha256
    dataset: Name
    k: Positive  # the top k latent layers were attacked (and come from the posterior)
    objective: Name
    optimizer: Name
    norm: Norm
    eps: Setting
    steps: Positive
    seed: Count
    temperature: Setting
    recon: Name  # the reconstruction rule (robustvae.protocol): default | authors
    temperature_convention: Name  # std | var: what the temperature scales
    kind: Kind  # attack | no_attack | floor | noise | unrelated
    point: Count  # index among the attacked points
    test_index: Count  # index of the image in its split
    label: Int
    restart: Count  # restart (attack) or draw (floor, noise)
    msssim: Score  # MS-SSIM(clean reconstruction, this reconstruction)
    msssim_input: Score  # MS-SSIM(x, x + delta)
    psnr: Number | None = None
    skl: PerLayer | None = None  # symmetric KL per attacked layer (attack and noise rows)
    delta_linf: UnitMeasure = 0.0
    delta_l2: Measure = 0.0
    final_loss: Number | None = None  # the attack's best objective
    nonfinite: bool = False
    target_point: Count | None = (
        None  # targeted objectives: the target's position in the seeded selection (``point``'s)
    )
    member: Name | None = (
        None  # ensemble runs (optimizer auto): the member that wrote the row (absent: a single attack)
    )
    member_steps: Count | None = None  # that member's steps per restart (its share of ``steps``)
    curve: Curve | None = None  # MS-SSIM of the best iterate after n steps, {"n": score} (attack rows)
    grad_norm: Measure | None = None  # norm of the objective's gradient at the start (gradient attacks)
    target_test_index: Count | None = None  # targeted objectives: the target's index in its split
    msssim_target: Score | None = None  # targeted: MS-SSIM(rec(target), rec(x + delta)) under the same prior noise
    msssim_target_before: Score | None = None  # targeted: MS-SSIM(rec(target), rec(x)) under that noise
    solver_s: Measure | None = None  # auto-v2's context member: seconds of MILP and level-flip search behind this row
    # (a point's MILP is shared by its restarts, each row carrying its share), apart from the model passes
    gradient_check: dict[str, float] | None = None  # an ensemble's boundary member, restart 0 of the first points: its
    # MS-SSIM with straight-through and with plain quantiser gradients from the same start ({"straight_through", "plain"})
    # a defended sweep (robustvae.defences.sweep); absent in an undefended one
    defence: Name | None = None  # the defence every scored pass went through (robustvae.defences.DEFENCES)
    adaptive: bool | None = None  # the attack differentiated through the defence (else it attacked the model)
    defence_settings: dict[str, float] | None = None  # the defence's settings (Defence.settings)
    defence_stats: dict[str, float] | None = None  # attack / no_attack rows: the scoring pass's accept, step_size,
    # passes and seconds per image (absent where the defence did nothing, e.g. no Gaussian layer among the top k)
    attack_cost: dict[str, float] | None = None  # attack rows: seconds and model forward passes of this restart


@dataclass(frozen=True)
class Selection:
    """How one point's attack rows (restarts, ensemble members) are ranked: by which score, and in which direction
    the attack is stronger. The one place that says so: the sweep's gallery and the report use it."""

    column: str
    higher_is_stronger: bool

    @property
    def sign(self) -> float:
        """-1 when higher is stronger, else 1: ``sign * score`` is lowest for the strongest row (tensors or frames)."""
        return -1.0 if self.higher_is_stronger else 1.0

    def strongest(self, frame, by: list[str]):
        """Per group of the (pandas) ``frame`` by ``by``: the index label of its strongest row (a non-finite score
        never wins unless nothing else is there; ties go to the first row)."""
        rank = self.sign * frame[self.column].astype(float)
        rank = rank.where(rank.abs() != float("inf"), float("inf")).fillna(float("inf"))
        return rank.groupby([frame[c] for c in by], sort=True).idxmin()


UNTARGETED = Selection("msssim", higher_is_stronger=False)  # damage: the lowest MS-SSIM to the clean reconstruction
TARGETED = Selection("msssim_target", higher_is_stronger=True)  # success: the highest MS-SSIM to the target's


def selection(targeted: bool) -> Selection:
    """The ranking of a point's attack rows for a targeted (or untargeted) attack."""
    return TARGETED if targeted else UNTARGETED


@dataclass(frozen=True)
class CompressionRecord(Record):
    """One row of a compression run: a model's reconstruction of an image from its top k layers, and JPEG beside it."""

    image: Name
    width: Positive
    height: Positive
    channels: Positive
    conversion: Text | None
    model: Name
    arch: Name
    checkpoint_sha256: Sha256
    k: Positive
    patch_size: Positive
    patches: Positive
    temperature: Setting
    seed: Count
    psnr: Number
    msssim: Score
    msssim_impl: Name
    bits: Number
    bpp: Number
    gaussian_bits: Number
    context_bits_prior: Number
    context_bits_raw: Number
    bpp_context_raw: Number
    jpeg_quality: Quality | None = None
    jpeg_psnr: Number | None = None
    jpeg_msssim: Score | None = None
    jpeg_bpp: Measure | None = None


@dataclass(frozen=True)
class CertifyRecord(Record):
    """One row of a certification run (``robustvae certify``): a model's context analysed at one point and eps.

    ``radius`` is the point's certified radius in the run's norm (the same in every eps
    row of the point; null when no image in [0, 1] can change the context). The
    ``optimal_*`` fields describe the optimal context attack (absent without it).
    """

    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "radius",
        "max_joint_changes",
        "max_joint_bound",
        "max_joint_proven",
        "optimal_decoded_l2",
        "optimal_bound",
        "optimal_proven",
        "optimal_changed",
        "msssim_k1",
        "k1_identical",
        "delta_linf",
        "delta_l2",
        "solve_time_s",
        "status",
        "gap",
    )

    unit: Name  # the work unit that wrote the row (resume and merge go by units)
    model: Name
    checkpoint_sha256: Sha256
    dataset: Name
    context: Name  # the codec's class
    norm: Norm
    eps: Setting
    seed: Count
    temperature: Setting
    point: Count  # index among the selected points (the same as an attack run's with the same seed)
    test_index: Count
    label: Int
    coefficients: Positive  # C * c * c
    certified: bool  # no image of the ball (and the box) changes any level: the k = 1 reconstruction is identical
    changeable: Count  # coefficients that may change level on their own
    reachable_levels: Count  # sum over coefficients of the levels each can reach (coefficients when certified)
    radius: Measure | None = None
    max_joint_changes: Count | None = None  # most coefficients that change level jointly (the count MILP's best)
    max_joint_bound: Number | None = None
    max_joint_proven: bool | None = None
    optimal_decoded_l2: Measure | None = None  # L2 change of the decoded context under the optimal attack
    optimal_bound: Number | None = None  # the solver's upper bound on it
    optimal_proven: bool | None = None
    optimal_changed: Count | None = None  # levels changed by that attack
    msssim_k1: Score | None = None  # MS-SSIM(clean, attacked k = 1 reconstruction) under the default rule
    k1_identical: bool | None = None  # that reconstruction equals the clean one bit for bit
    delta_linf: UnitMeasure | None = None
    delta_l2: Measure | None = None
    solve_time_s: Measure | None = None  # both MILPs together
    status: Text | None = None  # the decoded-change solve's message
    gap: Number | None = None  # (bound - value) / bound of the decoded-change solve (0: proven)


ATTACK_COLUMNS = AttackRecord.columns()
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
    return {
        **{c: full[c] for c in ATTACK_COLUMNS if c in full},
        **{c: v for c, v in full.items() if c not in ATTACK_COLUMNS},
    }


def read_attack_records(path: str | os.PathLike, repair: bool = False) -> list[dict[str, Any]]:
    """The complete rows of an attack records file, in the current schema (:func:`upgrade_attack_row`).

    A torn last line (a crash mid-write) is ignored, and cut from the file with ``repair``;
    a row with a missing or ill-typed field is an error naming the file, line and field.
    """
    return [upgrade_attack_row(r) for r in read_jsonl(Path(path), repair=repair, check=attack_row_problem)]


def attack_row_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with an attack row (a missing field, a type, a range: :mod:`robustvae.validation`), naming the
    field; else None.

    Measured numbers may be non-finite (a NaN score is data, counted by the report), but a
    finite MS-SSIM outside [0, 1] or a budget no threat model has is refused; ``layers`` is
    the old name of ``k`` and older rows lack ``recon`` and ``temperature_convention``.
    """
    return row_problem(AttackRecord, upgrade_attack_row(row), _budget)


def certify_row_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with a certification row (as :func:`attack_row_problem`); else None."""
    return row_problem(CertifyRecord, row, _budget)


JPEG_FIELDS = ("jpeg_quality", "jpeg_psnr", "jpeg_msssim", "jpeg_bpp")


def jpeg_match_problem(row: dict[str, Any]) -> str | None:
    """The JPEG matched to a row comes whole (quality, PSNR, MS-SSIM, bpp) or not at all (a non-finite reconstruction)."""
    given = [f for f in JPEG_FIELDS if row.get(f) is not None and row.get(f) == row.get(f)]
    if given and len(given) != len(JPEG_FIELDS):
        missing = next(f for f in JPEG_FIELDS if f not in given)
        return f"field '{missing}' is empty while {given[0]} is given (a matched JPEG has all four)"
    return None


def _budget(row: dict[str, Any]) -> str | None:
    found = eps_problem(row["norm"], row["eps"])
    return f"field 'eps': {found}" if found else None


def read_certify_rows(path: str | os.PathLike, repair: bool = False) -> list[dict[str, Any]]:
    """The complete rows of a certification records file, each checked (:func:`certify_row_problem`)."""
    return read_jsonl(Path(path), repair=repair, check=certify_row_problem)
