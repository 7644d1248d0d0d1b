"""Reports of the golden attack runs equal what the report produced before the refactor (git 88ee658).

``tests/golden/runs/attack-<name>/`` are run directories written at 88ee658 (old field
name ``layers`` for the attacked-layer count, now ``k``); ``tests/golden/report-<name>.json``
hold the table, checks and layer diagnostics of ``summary.json`` made from them then
(``tests/golden/make_golden_88ee658.py``). Floats must agree to a relative 1e-9; the one
scope that names a run file (``run complete``) is compared without its directory.

The tolerance is float64 rounding: the report is float64 arithmetic (pandas, numpy) on the
recorded numbers, with no float32 kernel in between, so another CPU changes a result by a few
float64 roundings at most: a few 2^-52 absolute on the MS-SSIM scale, 1e-14 relative to the
smallest table value compared (0.04). 1e-9 leaves five digits for cancellation within an
aggregate (a mean of differences, a confidence interval's end).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from robustvae.records import LEGACY_NAMES
from robustvae.reporting import make_report
from robustvae.reporting.confounders import CARRIED_COLUMNS

pytestmark = pytest.mark.numerical  # CI runs these again under ATEN_CPU_CAPABILITY=default

GOLDEN = Path(__file__).parent / "golden"
NAMES = ["default", "l2-kl_forward", "sgd-supervised"]
REL = 1e-9


def _upgrade(row: dict) -> dict:
    """Current field names (``layers`` -> ``k``); a scope naming a run file keeps only the file's name."""
    row = {LEGACY_NAMES.get(key, key): value for key, value in row.items()}
    if row.get("check") == "run complete":
        row["scope"] = "<run dir>/" + Path(row["scope"]).name
    return row


def _same(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, sorted(set(got) ^ set(want)))
        for key in want:
            _same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        assert math.isclose(got, want, rel_tol=REL, abs_tol=0.0), (where, got, want)
    else:
        assert got == want and type(got) is type(want), (where, got, want)


def _numbers(check: dict) -> dict:
    """A check without its text: the texts were reworded since (they say what was found, differently on pass and
    fail); what a check decides (passed, value, limit, scope) must not change."""
    return {k: v for k, v in check.items() if k != "detail"}


REMOVED_CHECKS = {"damage monotone in k"}  # wrong for this protocol (damage shrinks towards k = L); removed on purpose
NEW_COLUMNS = {
    "recon",
    "no_attack",
    "drop_mean",
    "drop_mean_lo",
    "drop_mean_hi",
    "drop_worst",
    "drop_worst_lo",
    "drop_worst_hi",
    "model_label",
    "attack",
    "unrelated",
    *CARRIED_COLUMNS,
}  # the reconstruction rule
# and the paired drop, added since; a curve's checkpoint label and attack configuration (attack runs side by side);
# the unrelated-image level and what the attacked layers carry


@pytest.mark.parametrize("name", NAMES)
def test_report_of_golden_runs_is_unchanged(name, tmp_path):
    """The numbers that existed are unchanged; what was added since is exactly the new columns and checks."""
    run = shutil.copytree(GOLDEN / "runs" / f"attack-{name}", tmp_path / f"attack-{name}")
    summary = make_report([run], tmp_path / "report")
    assert json.loads((tmp_path / "report" / "summary.json").read_text()) == summary
    golden = json.loads((GOLDEN / f"report-{name}.json").read_text())
    table = [_upgrade(r) for r in summary["table"]]
    assert all(set(r) - set(_upgrade(golden["table"][0])) == NEW_COLUMNS for r in table)
    assert all(r["recon"] == "default" and r["no_attack"] == 1.0 for r in table)  # old runs: the default rule
    _same(
        [{k: r[k] for k in _upgrade(w)} for r, w in zip(table, golden["table"])],
        [_upgrade(r) for r in golden["table"]],
        "table",
    )
    kept = [_numbers(_upgrade(c)) for c in golden["checks"] if c["check"] not in REMOVED_CHECKS]
    names = {c["check"] for c in kept}
    _same([_numbers(_upgrade(c)) for c in summary["checks"] if c["check"] in names], kept, "checks")
    assert {d.pop("source") for d in summary["layers"]} == {"run.json"}  # where a layer's numbers come from: new
    _same(summary["layers"], golden["diagnostics"], "diagnostics")
