"""The bad-input sweep over every file robustvae reads (tests/file_sweep.py): each field of each file kind, missing,
null, of the wrong type, out of range, NaN and huge, ends in one clean line or a clean success; nothing invalid is
accepted and nothing valid refused.

The default suite runs a representative case of each file kind; the whole sweep (about 1,500 cases) is marked slow.
"""

from __future__ import annotations

import json
import math

import pytest

import file_sweep as sweep

REPRESENTATIVE = {  # (kind, field, mutation): one per file kind, the invalid kinds a reader meets most
    ("attack records", "msssim", "out_of_range"),
    ("attack records", "curve.1", "huge"),
    ("attack run.json", "", "null"),
    ("attack run.json", "settings.attack.eps", "nan"),
    ("gallery", "x", "out_of_range"),
    ("eval", "layers.0.units", "wrong_type"),
    ("certify records", "msssim_k1", "out_of_range"),
    ("certify run.json", "settings.certify", "wrong_type"),
    ("compress records.csv", "msssim", "huge"),
    ("compress jpeg.csv", "quality", "out_of_range"),
    ("compress run.json", "images.0.width", "null"),
    ("metrics.jsonl", "step", "wrong_type"),
    ("summary.json", "", "wrong_type"),
    ("train state", "step", "out_of_range"),
    ("suite", "eps", "huge"),
    ("checkpoint config", "model.channels", "huge"),
}


def _assert_clean(results):
    bad = [r for r in results if r.kind != "ok"]
    assert not bad, "\n".join(
        f"{r.kind}: {r.case.kind}: {r.case.field} {r.case.mutation}: {r.detail}" for r in bad[:20]
    )


def test_every_file_kind_and_mutation_is_covered():
    cases = sweep.cases()
    assert {c.kind for c in cases} == set(sweep.SPECS) and len(cases) > 1000
    assert {k for k, _, _ in REPRESENTATIVE} == set(sweep.SPECS)
    # the table decides validity by itself: an MS-SSIM may be NaN (a failed reconstruction), never 5
    assert sweep.expected_valid(sweep.Case("attack records", "msssim", "nan"))
    assert not sweep.expected_valid(sweep.Case("attack records", "msssim", "out_of_range"))
    assert not sweep.expected_valid(sweep.Case("attack records", "eps", "huge"))


def test_a_representative_bad_value_of_every_file_kind_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTVAE_DATA", str(tmp_path / "data"))
    results = sweep.sweep(tmp_path / "root", only=lambda c: (c.kind, c.field, c.mutation) in REPRESENTATIVE)
    assert len(results) == len(REPRESENTATIVE)
    _assert_clean(results)


def test_valid_extremes_are_drawn_for_real(tmp_path, monkeypatch):
    """The sweep stubs the figures' pixels; here the extremes it accepts (NaN scores, a huge distance) are drawn."""
    from robustvae.cli import main

    monkeypatch.setenv("ROBUSTVAE_DATA", str(tmp_path / "data"))
    fx = sweep.Fixtures(tmp_path / "root")
    import shutil

    run = shutil.copytree(fx.attack, tmp_path / "a")
    rows = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
    attack = [i for i, r in enumerate(rows) if r["kind"] == "attack"]
    rows[attack[0]].update(msssim=math.nan, delta_l2=1e308, psnr=1e308, grad_norm=math.inf, final_loss=-1e308)
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "figure10.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_whole_file_sweep_is_clean(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTVAE_DATA", str(tmp_path / "data"))
    results = sweep.sweep(tmp_path / "root")
    _assert_clean(results)
