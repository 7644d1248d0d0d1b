"""The optimality gap in reports: each attack's per-point gap to the optimal context attack, the side-by-side
table (generic over attack names and ensemble versions) and the check on the ensemble's mean, against numbers
computed by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from robustvae.reporting.certify import (
    GAP_LIMIT,
    gap_checks,
    gap_figure,
    gap_side_by_side,
    gradient_gap,
    optimality_gap,
)

OPT = [0.40, 0.50, 0.60]
ATTACKS = {  # name: (is an ensemble, worst k = 1 MS-SSIM per point)
    "auto-v1": (True, [0.45, 0.56, 0.66]),  # mean gap 0.17 / 3 = 0.0567 > 0.02: must fail
    "auto-v2": (True, [0.41, 0.49, 0.61]),  # mean gap 0.01 / 3 = 0.0033 (one point below the optimum): passes
    "pgd on skl": (False, [0.90, 0.95, 1.00]),  # not an ensemble: shown, never checked
}


def frames():
    cert = pd.DataFrame(
        {
            "run": "certify",
            "model": "dctvae",
            "norm": "linf",
            "eps": 0.1,
            "point": [0, 1, 2],
            "test_index": [7, 3, 5],
            "checkpoint_sha256": "abc",
            "msssim_k1": OPT,
            "optimal_proven": [True, False, True],
        }
    )
    rows = []
    for name, (ens, worst) in ATTACKS.items():
        rows += [
            {
                "checkpoint_sha256": "abc",
                "norm": "linf",
                "eps": 0.1,
                "test_index": t,
                "attack": name,
                "ensemble": ens,
                "worst": w,
            }
            for t, w in zip([7, 3, 5], worst)
        ]
    # rows that must not match: another checkpoint, another eps, a point the certify run lacks
    rows += [
        {
            "checkpoint_sha256": "other",
            "norm": "linf",
            "eps": 0.1,
            "test_index": 7,
            "attack": "auto-v1",
            "ensemble": True,
            "worst": 0.0,
        },
        {
            "checkpoint_sha256": "abc",
            "norm": "linf",
            "eps": 0.2,
            "test_index": 7,
            "attack": "auto-v1",
            "ensemble": True,
            "worst": 0.0,
        },
        {
            "checkpoint_sha256": "abc",
            "norm": "linf",
            "eps": 0.1,
            "test_index": 99,
            "attack": "auto-v1",
            "ensemble": True,
            "worst": 0.0,
        },
    ]
    return cert, pd.DataFrame(rows)


def test_per_point_gap_is_attack_minus_optimum_on_the_same_points():
    pts = optimality_gap(*frames())
    assert len(pts) == 9 and set(pts.test_index) == {7, 3, 5}
    for name, (_, worst) in ATTACKS.items():
        g = pts[pts.attack == name].sort_values("point")
        assert g.gap.tolist() == pytest.approx([w - o for w, o in zip(worst, OPT)], abs=1e-12)
        assert g.optimal_proven.tolist() == [True, False, True]


def test_side_by_side_table_names_every_attack():
    side = gap_side_by_side(optimality_gap(*frames()))
    (row,) = side.to_dict("records")
    assert row["points"] == 3 and row["optimum"] == pytest.approx(0.5) and row["proven"] == pytest.approx(2 / 3)
    assert row["auto-v1"] == pytest.approx(0.5566666667) and row["auto-v1: gap mean"] == pytest.approx(0.17 / 3)
    assert row["auto-v1: gap max"] == pytest.approx(0.06)
    assert row["auto-v2"] == pytest.approx(0.5033333333) and row["auto-v2: gap mean"] == pytest.approx(0.01 / 3)
    assert row["auto-v2: gap max"] == pytest.approx(0.01)
    assert row["pgd on skl: gap mean"] == pytest.approx((0.5 + 0.45 + 0.4) / 3)
    rows = gradient_gap(optimality_gap(*frames())).set_index("attack")
    assert rows.loc["auto-v1", "gap"] == pytest.approx(0.17 / 3) and rows.loc["auto-v1", "gap_max"] == pytest.approx(
        0.06
    )
    assert (rows.points == 3).all()


def test_the_check_fails_above_the_limit_and_passes_within_it():
    checks = {c["scope"].split()[-1]: c for c in gap_checks(optimality_gap(*frames()))}
    assert set(checks) == {"auto-v1", "auto-v2"}  # ensembles only
    v1, v2 = checks["auto-v1"], checks["auto-v2"]
    assert not v1["passed"] and v1["value"] == pytest.approx(0.17 / 3) and v1["limit"] == GAP_LIMIT == 0.02
    assert v1["detail"].startswith("more than 0.02 above the optimum")
    assert v2["passed"] and v2["value"] == pytest.approx(0.01 / 3) and v2["detail"].startswith("within 0.02")
    # the limit is inclusive and the check reads the mean, not the largest point
    assert gap_checks(optimality_gap(*frames()), limit=0.17 / 3 + 1e-12)[0]["passed"]


def test_nothing_to_compare_gives_no_rows():
    cert, att = frames()
    assert optimality_gap(cert, att.iloc[0:0]).empty and gap_side_by_side(pd.DataFrame()).empty
    assert gap_checks(pd.DataFrame()) == [] and gradient_gap(pd.DataFrame()).empty
    assert optimality_gap(cert.assign(msssim_k1=float("nan")), att).empty


def test_gap_figure_has_a_panel_per_model_and_eps():
    cert, att = frames()
    cert2 = cert.assign(model="other", checkpoint_sha256="other")
    fig = gap_figure(optimality_gap(pd.concat([cert, cert2], ignore_index=True), att))
    assert len(fig.axes) == 2
    assert sorted(len(line.get_xdata()) for line in fig.axes[0].lines if line.get_marker() != "None")[-1] == 3
