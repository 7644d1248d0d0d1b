"""Record schemas: the rows that experiments write and reports read, defined once.

* :class:`AttackRecord`: one row of an attack sweep (``records.jsonl``), of kind
  ``attack`` (one per model, k, point and restart), ``no_attack`` (the same score with
  delta = 0 under the same rule and noise, paired with each attack row), ``floor``
  (clean vs clean under other prior noise) or ``noise`` (a random perturbation of the
  same budget) or ``unrelated`` (the point's reconstruction against that of another,
  unrelated test image: the damage level a large enough budget must reach);
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
                                            "curve", "grad_norm")

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


ATTACK_COLUMNS = AttackRecord.columns()
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

    A torn last line (a crash mid-write) is ignored, and cut from the file with ``repair``.
    """
    return [upgrade_attack_row(r) for r in read_jsonl(Path(path), repair=repair)]
