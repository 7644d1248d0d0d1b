"""Checks a CI can gate on: ``robustvae report --strict`` exits 1 on any failed check and lists them on stderr, and
every check's text says what it found, differently when it passes and when it fails."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from robustvae.cli import main
from robustvae.reporting import aggregate as agg
from robustvae.reporting import load_runs
from robustvae.reporting.checklist import CheckList, failed_lines
from test_report import FLOOR, _row, records, write_run

# per point, two restarts whose second never beats the first: "more restarts no longer pay" passes too
GOOD = {1: [[0.5, 0.6], [0.6, 0.7], [0.55, 0.6]], 2: [[0.4, 0.45], [0.5, 0.5], [0.45, 0.5]]}


def good_records(eps: float = 0.1) -> list[dict]:
    """One model whose every check passes (hand-made: damage far beyond noise and the floor's spread)."""
    rows = []
    for k, points in GOOD.items():
        for p, restarts in enumerate(points):
            rows += [_row("vdvae-a", k, "attack", p, r, v, eps) for r, v in enumerate(restarts)]
            rows += [_row("vdvae-a", k, "floor", p, d, v, eps) for d, v in enumerate(FLOOR[p])]
            rows += [_row("vdvae-a", k, "noise", p, d, 0.97 - 0.01 * d, eps) for d in range(2)]
    return rows


def bad_runs(tmp_path) -> list:
    """Runs of one model in two eps panels where every check the protocol has can fail."""
    rows = records(models=("vdvae-a",))
    rows[0]["delta_linf"] = 0.25  # outside the 0.1 ball
    rows[1]["msssim"], rows[1]["nonfinite"] = float("nan"), True
    rows = [r for r in rows if not (r["kind"] == "attack" and r["point"] == 2 and r["restart"] == 1 and r["k"] == 2)]
    rows = [{**r, "msssim": 0.999} if r["kind"] == "attack" and r["k"] == 2 else r for r in rows]  # no damage at k=2
    rows = [{**r, "msssim": 0.0} if r["kind"] == "attack" and r["k"] == 1 and r["point"] < 2 else r for r in rows]
    one = write_run(tmp_path / "eps01", rows, gallery=False)
    info = json.loads((one / "run.json").read_text())
    info.update(status="running", units_done=1)
    info["settings"]["units"].append("vdvae-a|k=3|points=0-2")  # planned, never run
    (one / "run.json").write_text(json.dumps(info))
    # at eps 0.2 the attack is weaker than at 0.1 (damage shrinks as eps grows), and at k = 2 does nothing at all
    weaker = [
        {**r, "msssim": 0.95 if r["k"] == 1 else 1.0} if r["kind"] == "attack" else r
        for r in records(0.2, models=("vdvae-a",))
    ]
    return [one, write_run(tmp_path / "eps02", weaker, eps=0.2, gallery=False)]


def test_strict_exits_1_on_failed_checks_lists_them_on_stderr_and_writes_the_report(tmp_path, capsys):
    runs = bad_runs(tmp_path)
    out = tmp_path / "out"
    assert main(["report", *map(str, runs), "--out", str(out), "--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    summary = json.loads((out / "summary.json").read_text())  # written either way
    assert (out / "index.html").is_file() and summary["checks_failed"] > 0
    failed = [c for c in summary["checks"] if not c["passed"]]
    assert err[0] == f"report --strict: {len(failed)} check(s) failed:"
    assert err[1:] == failed_lines(summary["checks"]) and len(err[1:]) == len(failed)
    assert all(line.startswith("FAIL ") and "\n" not in line for line in err[1:])
    # without --strict the same report exits 0 (and says how many failed on stdout)
    assert main(["report", *map(str, runs), "--out", str(out), "--force"]) == 0
    assert f"{len(failed)} failed" in capsys.readouterr().out


def test_strict_exits_0_when_every_check_passes(tmp_path, capsys):
    run = write_run(tmp_path / "r", good_records(), gallery=False)
    assert main(["report", str(run), "--out", str(tmp_path / "out"), "--strict"]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["checks_failed"] == 0 and summary["checks_passed"] > 10
    assert capsys.readouterr().err == ""


def _checks(runs) -> pd.DataFrame:
    rs = load_runs(runs)
    return agg.checks(rs, agg.summarise(rs.records))


def test_every_check_says_what_it_found_differently_on_pass_and_fail(tmp_path):
    good = _checks(
        [
            write_run(tmp_path / "good", good_records(), gallery=False),
            write_run(tmp_path / "good2", good_records(0.2), eps=0.2, gallery=False),
        ]
    )
    bad = _checks(bad_runs(tmp_path))
    both = pd.concat([good, bad])
    for check in [
        "budget respected",
        "attack beats noise",
        "attack below the no-attack level",
        "attack did measurable damage",
        "damage monotone in eps",
        "no non-finite rows",
        "few MS-SSIM scores clipped at 0",
        "restarts per point as configured",
        "run complete",
        "every planned unit present",
    ]:
        rows = both[both.check == check]
        passed, failed = rows[rows.passed], rows[~rows.passed]
        assert len(passed) and len(failed), check  # the two runs show both outcomes of every check
        verdict = lambda texts: {t.split(":")[0] for t in texts}  # noqa: E731 - the phrase before the numbers
        assert not verdict(passed.detail) & verdict(failed.detail), (
            check,
            verdict(passed.detail),
            verdict(failed.detail),
        )
    measurable = bad[(bad.check == "attack did measurable damage") & ~bad.passed].iloc[0]
    assert measurable.detail.startswith("no measurable damage: mean paired drop +0.0010 <= ")
    ok = good[good.check == "attack did measurable damage"].iloc[0]
    assert ok.detail.startswith("attack did measurable damage: mean paired drop ") and " > " in ok.detail
    clipped = bad[bad.check == "few MS-SSIM scores clipped at 0"]
    # eps 0.1: points 0 and 1 at k = 1, two restarts each -> 4 of the 11 attack rows (one restart was dropped) are 0
    (row,) = clipped[clipped.scope.str.contains("eps 0.1")].itertuples()
    assert not row.passed and row.value == pytest.approx(4 / 11) and row.detail.startswith("4 of 11 attack scores")


def test_checklist_keeps_numbers_and_picks_the_text_by_outcome():
    c = CheckList()
    c.add("x", "s", True, 1, 2, "found it", "missed it")
    c.add("x", "t", False, 3, 2, "found it", "missed it")
    df = c.frame()
    assert df.detail.tolist() == ["found it", "missed it"] and df.value.tolist() == [1.0, 3.0]
    assert list(df.columns) == ["check", "scope", "passed", "value", "limit", "detail"]
    assert failed_lines(df.to_dict("records")) == ["FAIL x | t | missed it"]


def _strength_rows(good: bool) -> pd.DataFrame:
    """Hand-made ensemble rows (3 points x 2 restarts x 2 members, k = 1, two eps) on which every strength flag
    passes (``good``) or fires: vanished gradients, Square winning, curves still falling, restarts still paying,
    the largest eps far from the unrelated level."""
    rows = []
    for eps in (0.1, 1.0):
        for p in range(3):
            for r in range(2):
                for m in ("apgd-skl", "square-recon"):
                    apgd = (0.3 if good else 0.9) if eps == 1.0 else 0.5
                    end = apgd if m == "apgd-skl" else 1.0 if good else apgd - 0.1 - 0.1 * r
                    rows.append(
                        {
                            "dataset": "d",
                            "norm": "linf",
                            "eps": eps,
                            "recon": "default",
                            "model": "m",
                            "k": 1,
                            "kind": "attack",
                            "point": p,
                            "restart": r,
                            "member": m,
                            "msssim": end,
                            "curve": {"2": end if good else end + 0.2, "4": end},
                            "grad_norm": None if m.startswith("square") else (1.0 if good else 0.0),
                        }
                    )
            rows.append(
                {
                    "dataset": "d",
                    "norm": "linf",
                    "eps": eps,
                    "recon": "default",
                    "model": "m",
                    "k": 1,
                    "kind": "unrelated",
                    "point": p,
                    "restart": 0,
                    "msssim": 0.3,
                }
            )
    return pd.DataFrame(rows)


def test_strength_flags_say_what_they_found_differently_on_pass_and_fail():
    from robustvae.reporting.strength import strength_checks

    good, bad = (
        pd.DataFrame(strength_checks(_strength_rows(True))),
        pd.DataFrame(strength_checks(_strength_rows(False))),
    )
    for check in [
        "no vanishing gradient",
        "gradient-free member rarely wins",
        "more steps no longer pay",
        "more restarts no longer pay",
        "largest eps reaches unrelated images",
    ]:
        passed, failed = good[good.check == check], bad[bad.check == check]
        assert len(passed) and passed.passed.all() and len(failed) and not failed.passed.all(), check
        failed = failed[~failed.passed]
        verdict = lambda texts: {t.split(":")[0] for t in texts}  # noqa: E731
        assert not verdict(passed.detail) & verdict(failed.detail), check
