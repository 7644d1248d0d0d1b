"""Records on disk: a torn last line is a crash's trace and is repaired; anything else unreadable is an error."""

from __future__ import annotations

import json

import pytest

from robustvae.errors import RobustVAEError
from robustvae.io import append_jsonl, read_jsonl
from robustvae.records import ATTACK_COLUMNS, LEGACY_DEFAULTS, read_attack_records, upgrade_attack_row


def _write(path, rows, tail: bytes = b""):
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + tail)


def test_a_torn_last_line_is_dropped_and_cut_on_repair(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, [{"a": 1}, {"a": 2}], b'{"a": 3, "b')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes().endswith(b'"b')  # reading alone changes nothing
    assert read_jsonl(path, repair=True) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    append_jsonl(path, [{"a": 3}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]


@pytest.mark.parametrize(
    "bad, what",
    [(b"garbage\n", "is not valid JSON"), (b"[1, 2]\n", "is not a JSON object"), (b"\xff\xfe\n", "is not valid JSON")],
)
def test_an_unreadable_line_before_the_end_is_an_error_and_nothing_is_cut(tmp_path, bad, what):
    path = tmp_path / "r.jsonl"
    rows = [{"a": i} for i in range(5)]
    path.write_bytes(
        b"".join(json.dumps(r).encode() + b"\n" for r in rows[:2])
        + bad
        + b"".join(json.dumps(r).encode() + b"\n" for r in rows[2:])
    )
    before = path.read_bytes()
    with pytest.raises(RobustVAEError, match=f"line 3 {what}"):
        read_jsonl(path, repair=True)
    assert path.read_bytes() == before  # no data loss


def test_old_attack_rows_read_in_the_current_schema(tmp_path):
    old = {
        "unit": "u",
        "model": "m",
        "checkpoint_sha256": "s",
        "dataset": "d",
        "layers": 2,
        "objective": "skl",
        "optimizer": "pgd",
        "norm": "linf",
        "eps": 0.1,
        "steps": 5,
        "seed": 0,
        "temperature": 0.1,
        "kind": "attack",
        "point": 0,
        "test_index": 3,
        "label": 1,
        "restart": 0,
        "msssim": 0.5,
        "msssim_input": 0.9,
        "delta_linf": 0.1,
        "delta_l2": 1.0,
        "nonfinite": False,
        "extra": 7,
    }
    row = upgrade_attack_row(old)
    assert row["k"] == 2 and "layers" not in row and row["extra"] == 7
    assert {k: row[k] for k in LEGACY_DEFAULTS} == LEGACY_DEFAULTS
    assert [c for c in row if c in ATTACK_COLUMNS] == [c for c in ATTACK_COLUMNS if c in row]  # schema order
    _write(tmp_path / "r.jsonl", [old])
    assert read_attack_records(tmp_path / "r.jsonl") == [row]


def test_a_run_resumes_after_a_torn_metrics_line(tmp_path):
    """A crash mid-write of metrics.jsonl leaves a torn tail: resuming cuts it instead of crashing."""
    import robustvae
    from conftest import tiny_config

    out = tmp_path / "run"
    robustvae.train(tiny_config(steps=4), out, device="cpu")
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b'{"kind": "train", "step": 5, "loss')
    res = robustvae.train(None, out, resume=True, steps=6, device="cpu")
    rows = read_jsonl(out / "metrics.jsonl")
    assert res.summary["steps"] == 6 and [r["step"] for r in rows if r["kind"] == "train"] == [2, 4, 6]


@pytest.mark.parametrize(
    "curve, problem",
    [({"10": 0.9, "25": 0.8}, None), (None, None), ({"10": "x"}, "field 'curve.10'"), ([0.9], "field 'curve'")],
)
def test_an_ensemble_rows_curve_is_checked_by_type(curve, problem):
    from robustvae.records import attack_row_problem

    row = {
        "unit": "u",
        "model": "m",
        "checkpoint_sha256": "s",
        "dataset": "d",
        "k": 1,
        "objective": "skl",
        "optimizer": "apgd",
        "norm": "linf",
        "eps": 0.1,
        "steps": 5,
        "seed": 0,
        "temperature": 0.1,
        "kind": "attack",
        "point": 0,
        "test_index": 3,
        "label": 1,
        "restart": 0,
        "msssim": 0.5,
        "msssim_input": 0.9,
        "delta_linf": 0.1,
        "delta_l2": 1.0,
        "nonfinite": False,
        "member": "apgd-skl",
        "curve": curve,
    }
    found = attack_row_problem(row)
    assert found is None if problem is None else (found or "").startswith(problem)
