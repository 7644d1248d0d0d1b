"""Attack configurations side by side: runs of one model that differ in the attack are curves of one report, named by
what differs, each with the numbers it has alone; what makes two measurements incomparable is still refused."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from robustvae.errors import RobustVAEError
from robustvae.reporting import aggregate as agg
from robustvae.reporting import figures, load_runs, make_report
from robustvae.reporting.load import CURVE_SEP, name_curves
from test_report import records, write_run

M = "vdvae-a"


def ensemble_run(d: Path, version: str = "auto-v1", eps: float = 0.1, optimizer: str = "auto") -> Path:
    """A run of the ensemble as the sweep writes it: member rows, ``optimizer`` auto, the version in run.json."""
    rows = [
        {
            **r,
            "optimizer": optimizer,
            "msssim": r["msssim"] * 0.8 if r["kind"] == "attack" else r["msssim"],
            **({"member": "apgd-skl"} if r["kind"] == "attack" else {}),
        }
        for r in records(eps, models=(M,))
    ]
    write_run(d, rows, eps=eps)
    info = json.loads((d / "run.json").read_text())
    info["settings"]["attack"]["optimizer"] = optimizer
    info["ensemble"] = {"version": version, "plans": {}}
    (d / "run.json").write_text(json.dumps(info))
    return d


def _without_names(table: pd.DataFrame) -> pd.DataFrame:
    """The numbers of a table (the columns that only one side has are all NaN: members of an ensemble)."""
    return table.drop(columns=["model", "model_label", "attack"]).dropna(axis=1, how="all").reset_index(drop=True)


def test_pgd_and_the_ensemble_are_two_curves_with_the_numbers_each_has_alone(tmp_path):
    pgd = write_run(tmp_path / "pgd", records(models=(M,)))
    auto = ensemble_run(tmp_path / "auto")
    runs = load_runs([pgd, auto])
    table = agg.summarise(runs.records)
    names = {f"{M}{CURVE_SEP}pgd on skl", f"{M}{CURVE_SEP}auto-v1"}
    assert set(table.model) == names and set(table.model_label) == {M}
    assert dict(zip(table.model, table.attack)) == {
        f"{M}{CURVE_SEP}pgd on skl": "pgd on skl",
        f"{M}{CURVE_SEP}auto-v1": "auto-v1",
    }
    for run, name in ((pgd, "pgd on skl"), (auto, "auto-v1")):  # each curve: the numbers of its run alone
        alone = agg.summarise(load_runs([run]).records)
        assert set(alone.model) == {M}  # alone, a model keeps its plain label
        pd.testing.assert_frame_equal(
            _without_names(table[table.attack == name]), _without_names(alone), check_dtype=False
        )  # members: float beside a single attack's NaN
    # the checks and Figure 10's legend name both curves; each curve has its own gallery file
    checks = agg.checks(runs, table)
    for name in names:
        assert (checks.scope.str.startswith(name + " (")).sum() > 5, name
    legend = [t.get_text() for t in figures.figure10(table).legends[0].get_texts()]
    assert names <= set(legend)
    # the layer atlas: KL per checkpoint, the marginal damage per curve, each curve in its Figure 10 colour
    diag = agg.diagnostics_frame(runs)
    fig = figures.layers_figure(diag, agg.layer_atlas(table, diag))
    assert names | {M} <= {t.get_text() for t in fig.legends[0].get_texts()}
    colours = figures.palette(sorted(names))
    drawn = {tuple(p.get_facecolor()[:3]) for p in fig.axes[2].patches}
    assert {tuple(float(c) for c in colours[n]) for n in names} <= {tuple(float(c) for c in d) for d in drawn}
    summary = make_report([pgd, auto], tmp_path / "out")
    assert {"gallery-vdvae-a___pgd_on_skl.png", "gallery-vdvae-a___auto-v1.png"} <= set(summary["files"])
    html = (tmp_path / "out" / "index.html").read_text()
    assert f"{M}{CURVE_SEP}auto-v1" in html and "report these runs separately" not in html


def test_curves_are_named_by_what_differs_only(tmp_path):
    base = records(models=(M,))
    steps = load_runs(
        [
            write_run(tmp_path / "s10", base, gallery=False),
            write_run(tmp_path / "s50", [{**r, "steps": 50} for r in base], gallery=False),
        ]
    )
    assert set(steps.records.model) == {f"{M}{CURVE_SEP}10 steps", f"{M}{CURVE_SEP}50 steps"}
    objective = load_runs(
        [
            write_run(tmp_path / "skl", base, gallery=False),
            write_run(tmp_path / "kl", [{**r, "objective": "kl_forward"} for r in base], gallery=False),
        ]
    )
    assert set(objective.records.model) == {f"{M}{CURVE_SEP}pgd on skl", f"{M}{CURVE_SEP}pgd on kl_forward"}
    # two versions of the ensemble, both asked for as "auto" (the name of whichever version was current)
    versions = load_runs([ensemble_run(tmp_path / "v1"), ensemble_run(tmp_path / "v2", "auto-v2")])
    assert set(versions.records.model) == {f"{M}{CURVE_SEP}auto-v1", f"{M}{CURVE_SEP}auto-v2"}
    # "auto" and its explicit version "auto-v1" are one configuration: given twice, the records are refused as twins
    with pytest.raises(RobustVAEError, match="appear twice"):
        load_runs([ensemble_run(tmp_path / "a"), ensemble_run(tmp_path / "b", optimizer="auto-v1")])


def test_a_name_is_the_same_in_every_panel_and_the_eps_checks_follow_it(tmp_path):
    """pgd at eps 0.1 and 0.2, the ensemble at 0.1 only: the pgd curve keeps its name at 0.2, and 'damage monotone
    in eps' compares pgd with pgd."""
    pgd1 = write_run(tmp_path / "pgd1", records(models=(M,)), gallery=False)
    pgd2 = write_run(tmp_path / "pgd2", records(0.2, models=(M,)), eps=0.2, gallery=False)
    auto = ensemble_run(tmp_path / "auto")
    runs = load_runs([pgd1, pgd2, auto])
    by_eps = runs.records.groupby("eps").model.unique()
    assert set(by_eps[0.2]) == {f"{M}{CURVE_SEP}pgd on skl"}
    table = agg.summarise(runs.records)
    mono = agg.checks(runs, table)
    mono = mono[mono.check == "damage monotone in eps"]
    assert len(mono) == 2 and mono.scope.str.startswith(f"{M}{CURVE_SEP}pgd on skl (").all()


def test_name_curves_leaves_a_model_attacked_one_way_alone():
    df = pd.DataFrame(
        {
            "model": ["a", "a", "b", "b"],
            "attack": ["pgd on skl"] * 2 + ["pgd on skl", "auto-v1"],
            "steps": [10, 10, 10, 10],
            "restarts_configured": [2, 2, 2, 2],
            "step_size": [None] * 4,
            "straight_through": [False] * 4,
        }
    )
    out = name_curves(df)
    assert out.model.tolist() == ["a", "a", f"b{CURVE_SEP}pgd on skl", f"b{CURVE_SEP}auto-v1"]
    assert out.model_label.tolist() == ["a", "a", "b", "b"]
    steps = name_curves(df.assign(step_size=[None, None, 0.01, None], attack="pgd on skl"))
    assert steps.model.tolist() == ["a", "a", f"b{CURVE_SEP}step size 0.01", f"b{CURVE_SEP}default step size"]
