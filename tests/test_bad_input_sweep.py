"""The generated bad-input sweep (tests/bad_input_sweep.py): every option of every command, given NaN, inf, a
negative number, zero and a wrong type, ends in one clean line (exit 2) or a clean success, and changes nothing
outside --out.

The default suite runs the cases whose value is invalid (they must be refused, so each is quick); the whole
sweep, valid values included (each then runs its command on tiny inputs), is marked slow.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import bad_input_sweep as sweep


def _assert_clean(results):
    bad = [r for r in results if r.kind not in ("clean", "ok")]
    assert not bad, "\n".join(
        f"{r.kind}: {r.case.command} {r.case.option} {r.case.value}: {r.detail}" for r in bad[:20]
    )


def test_the_sweep_covers_every_command_and_numeric_option():
    cases = sweep.cases()
    commands = {c.command for c in cases}
    assert {"train", "eval", "sample", "attack", "compress", "report", "demo"} <= commands
    numeric = {(c.command, c.option) for c in cases if c.numeric}
    assert {
        ("attack", "--eps"),
        ("attack", "--temperature"),
        ("sample", "--temperature"),
        ("compress", "--temperature"),
        ("train", "--steps"),
        ("eval", "--iw-samples"),
        ("demo", "--points"),
    } <= numeric
    assert all({c.value for c in cases if (c.command, c.option) == key} == set(sweep.VALUES) for key in numeric)


def test_invalid_values_of_every_option_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTVAE_DATA", str(tmp_path / "data"))
    fx = sweep.Fixtures(tmp_path / "root")
    cases = [c for c in sweep.cases() if c.numeric and not sweep.expected_valid(c)]
    assert len(cases) > 100
    results = [sweep.run_case(fx, c, i) for i, c in enumerate(cases)]
    _assert_clean(results)
    assert all(r.kind == "clean" for r in results)  # none accepted


def test_bad_image_files_are_one_line_errors_and_write_nothing(tmp_path, monkeypatch):
    """Wrong size, channels, dtype, range, NaN / inf, pickled objects, unreadable or unknown files, empty sets: for
    attack, eval, certify and compress, one line (exit 2) and no output at all."""
    monkeypatch.setenv("ROBUSTVAE_DATA", str(tmp_path / "data"))
    fx = sweep.Fixtures(tmp_path / "root")
    cases = sweep.image_cases(fx)
    assert len(cases) == 4 * len(sweep.BAD_IMAGE_REASONS) and {c.command for c in cases} == set(sweep.IMAGE_COMMANDS)
    with warnings.catch_warnings(record=True) as caught:  # a warning would print as a second line on the terminal
        warnings.simplefilter("always")
        results = [sweep.run_case(fx, c, i) for i, c in enumerate(cases)]
    _assert_clean(results)
    assert all(r.kind == "clean" for r in results) and [str(w.message) for w in caught] == []
    wrong = [
        f"{r.case.command} {Path(r.case.value).name}: {r.detail}"
        for r in results
        if not any(f in r.detail for f in sweep.BAD_IMAGE_REASONS[Path(r.case.value).name])
    ]
    assert wrong == []  # each refused for its own reason, not for another one
    assert not any((fx.root / "cases" / f"c{i}" / "out").exists() for i in range(len(cases)))  # nothing written


@pytest.mark.slow
def test_the_whole_sweep_is_clean(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTVAE_DATA", str(tmp_path / "data"))
    results = sweep.sweep(tmp_path / "root")
    _assert_clean(results)
