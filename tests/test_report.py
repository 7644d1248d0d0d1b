"""Reports from hand-written records: golden numbers, escaping, no external requests, merging, clear errors;
compression runs' figures drawn from their files."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import seaborn as sns
from matplotlib.collections import LineCollection
from PIL import Image

from robustvae.cli import main
from robustvae.errors import RobustVAEError
from robustvae.io import safe_name
from robustvae.records import COMPRESSION_COLUMNS, COMPRESSION_RUN_KIND
from robustvae.reporting import load_runs, make_report, write_compression_figures
from robustvae.reporting import compression as comp
from robustvae.reporting import aggregate as agg
from robustvae.reporting import figures
from robustvae.reporting.load import PANEL_KEYS

EVIL = "<script>alert(1)</script>"
SHA = {"vdvae-a": "a" * 64, EVIL: "b" * 64}

# attack MS-SSIM per (model, k): one list of restarts per point (3 points, 2 restarts)
ATTACK = {
    ("vdvae-a", 1): [[0.9, 0.7], [0.8, 0.6], [1.0, 0.5]],
    ("vdvae-a", 2): [[0.6, 0.4], [0.5, 0.5], [0.7, 0.3]],
    (EVIL, 1): [[0.95, 0.85], [0.9, 0.9], [0.99, 0.97]],
    (EVIL, 2): [[0.9, 0.8], [0.85, 0.75], [0.95, 0.9]],
}
NOISE = [[0.99, 0.97], [0.98, 0.96], [1.0, 0.98]]  # per point, 2 draws (every model and k)
FLOOR = [[0.995, 0.985], [0.99, 0.99], [1.0, 0.99]]


def _row(model: str, k: int, kind: str, point: int, restart: int, msssim: float, eps: float = 0.1, **extra) -> dict:
    row = {
        "unit": f"{model}|k={k}|points=0-2",
        "model": model,
        "checkpoint_sha256": SHA[model],
        "dataset": "mnist-offline",
        "k": k,
        "objective": "skl",
        "optimizer": "pgd",
        "norm": "linf",
        "eps": eps,
        "steps": 10,
        "seed": 0,
        "temperature": 0.1,
        "kind": kind,
        "point": point,
        "test_index": 100 + point,
        "label": point,
        "restart": restart,
        "msssim": msssim,
        "msssim_input": 0.9,
        "delta_linf": 0.0 if kind == "floor" else eps,
        "delta_l2": 0.0 if kind == "floor" else 2.0 * eps,
        "nonfinite": False,
    }
    if kind == "attack":
        row.update(psnr=30.0, skl=[0.5] * k, final_loss=1.0)
    if kind == "noise":
        row.update(skl=[0.01] * k)
    row.update(extra)
    return row


def records(eps: float = 0.1, models=("vdvae-a", EVIL)) -> list[dict]:
    rows = []
    for (model, k), points in ATTACK.items():
        if model not in models:
            continue
        for p, restarts in enumerate(points):
            rows += [_row(model, k, "attack", p, r, v, eps) for r, v in enumerate(restarts)]
            rows += [_row(model, k, "floor", p, d, v, eps) for d, v in enumerate(FLOOR[p])]
            rows += [_row(model, k, "noise", p, d, v, eps) for d, v in enumerate(NOISE[p])]
    return rows


def _diagnostics(model: str) -> list[dict]:
    if model == EVIL:  # a DCT-VAE: layer 1 is the context
        return [
            {
                "layer": 1,
                "resolution": 6,
                "shape": [1, 6, 6],
                "units": 36,
                "kl_nats": 20.0,
                "active_units": None,
                "kind": "context",
                "levels": 4,
                "levels_used": 3.5,
                "varying_units": 30,
            },
            {"layer": 2, "resolution": 7, "shape": [1, 7, 7], "units": 49, "kl_nats": 3.0, "active_units": 10},
        ]
    return [
        {"layer": 1, "resolution": 7, "shape": [1, 7, 7], "units": 49, "kl_nats": 0.01, "active_units": 0},
        {"layer": 2, "resolution": 7, "shape": [1, 7, 7], "units": 49, "kl_nats": 5.0, "active_units": 20},
    ]


def write_run(
    d: Path,
    rows: list[dict],
    *,
    shards: int = 1,
    restarts: int = 2,
    eps: float = 0.1,
    command: list[str] | None = None,
    gallery: bool = True,
    sha: dict[str, str] | None = None,
) -> Path:
    """A run directory as robustvae attack writes it (records, run.json, gallery)."""
    d.mkdir(parents=True, exist_ok=True)
    models = list(dict.fromkeys(r["model"] for r in rows))
    sha = {**SHA, **(sha or {})}
    attack = {
        "layers": "1-2",
        "eps": eps,
        "norm": "linf",
        "restarts": restarts,
        "points": 3,
        "steps": 10,
        "objective": "skl",
        "optimizer": "pgd",
        "step_size": None,
        "temperature": 0.1,
        "straight_through": False,
        "floor_draws": 2,
        "noise_draws": 2,
        "gallery_points": 2,
        "seed": 0,
        "split": "test",
        "max_batch_mib": 1024,
    }
    units = list(dict.fromkeys(r["unit"] for r in rows))
    for i in range(1, shards + 1):
        mine = [u for j, u in enumerate(units) if j % shards == i - 1]
        suffix = "" if shards == 1 else f"-shard-{i}-of-{shards}"
        info = {
            "command": command or ["robustvae", "attack", "m", "--out", str(d)],
            "settings": {
                "attack": attack,
                "models": [{"label": m, "sha256": sha[m]} for m in models],
                "shard": f"{i}/{shards}",
                "units": units,
            },
            "versions": {"python": "3.11", "robustvae": "0.1.0", "torch": "2"},
            "git_commit": "c0ffee",
            "device": "cpu",
            "torch_threads": 1,
            "status": "complete",
            "units_total": len(mine),
            "units_done": len(mine),
            "wall_time_s": 1.5,
            "models": [
                {
                    "label": m,
                    "path": f"/runs/{m}/best.pt",
                    "sha256": sha[m],
                    "config": {
                        "name": m,
                        "data": {"name": "mnist-offline"},
                        "model": {"arch": "dctvae", "context": "dct", "channels": 8, "hidden": 8}
                        if m == EVIL
                        else {"arch": "vdvae", "channels": 8, "hidden": 8},
                        "train": {"steps": 100, "batch_size": 32},
                    },
                    "num_layers": 2,
                    "layer_diagnostics": _diagnostics(m),
                }
                for m in models
            ],
        }
        (d / f"run{suffix}.json").write_text(json.dumps(info))
        (d / f"records{suffix}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["unit"] in mine))
    if gallery:
        g = np.random.default_rng(0)
        (d / "gallery").mkdir(exist_ok=True)
        for i, m in enumerate(models):
            x = g.random((2, 1, 28, 28), dtype=np.float32)
            np.savez_compressed(
                d / "gallery" / f"model{i}_k_1.npz",
                unit=np.array(f"{m}|k=1|points=0-2"),
                model=np.array(m),
                k=np.array(1),
                points=np.arange(2),
                restarts=np.zeros(2, dtype=np.int64),
                x=x,
                x_adv=np.clip(x + 0.1, 0, 1),
                rec=x,
                rec_adv=x[::-1].copy(),
                msssim=np.array([0.7, 0.6], dtype=np.float32),
            )
    return d


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One report of two models, k = 1, 2, two eps (two runs), with a gallery; rendered once for the module."""
    base = tmp_path_factory.mktemp("report")
    run1 = write_run(base / "eps01", records(0.1), command=["robustvae", "attack", f"--note={EVIL}"])
    rows2 = [{**r, "msssim": r["msssim"] * 0.9 if r["kind"] == "attack" else r["msssim"]} for r in records(0.2)]
    run2 = write_run(base / "eps02", rows2, eps=0.2)
    summary = make_report([run1, run2], base / "out")
    return base / "out", summary, (base / "out" / "index.html").read_text()


def _row_of(summary: dict, model: str, k: int, eps: float = 0.1) -> dict:
    (row,) = [r for r in summary["table"] if r["model"] == model and r["k"] == k and r["eps"] == eps]
    return row


def test_golden_numbers_computed_by_hand(report):
    out, summary, _ = report
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    for (model, k), points in ATTACK.items():
        row = _row_of(on_disk, model, k)
        mean_of_means = sum(sum(p) / len(p) for p in points) / len(points)
        mean_of_worst = sum(min(p) for p in points) / len(points)
        assert row["mean"] == pytest.approx(mean_of_means, abs=1e-12)
        assert row["worst"] == pytest.approx(mean_of_worst, abs=1e-12)
        assert row["noise"] == pytest.approx(sum(sum(p) / 2 for p in NOISE) / 3, abs=1e-12)
        assert row["floor"] == pytest.approx(sum(sum(p) / 2 for p in FLOOR) / 3, abs=1e-12)
        assert (row["points"], row["restarts"], row["nonfinite"]) == (3, 2, 0)
        assert row["max_delta_linf"] == pytest.approx(0.1) and row["max_delta_l2"] == pytest.approx(0.2)
        for view in ("mean", "worst"):
            assert row[f"{view}_lo"] <= row[view] <= row[f"{view}_hi"]
    # vdvae-a k=1: per point worst 0.7, 0.6, 0.5 -> 0.6; means 0.8, 0.7, 0.75 -> 0.75
    assert _row_of(summary, "vdvae-a", 1)["worst"] == pytest.approx(0.6)
    assert _row_of(summary, "vdvae-a", 1)["mean"] == pytest.approx(0.75)
    # the second run scaled every attack score by 0.9
    assert _row_of(summary, "vdvae-a", 1, 0.2)["worst"] == pytest.approx(0.54)
    # layer k's diagnostics sit beside its row; the context has no active units
    assert _row_of(summary, "vdvae-a", 2)["layer_active_units"] == 20
    assert _row_of(summary, EVIL, 1)["layer_active_units"] is None


def test_summary_holds_numbers_not_strings(report):
    _, summary, _ = report
    numeric = [
        "eps",
        "k",
        "points",
        "restarts",
        "mean",
        "mean_lo",
        "mean_hi",
        "worst",
        "worst_lo",
        "worst_hi",
        "noise",
        "floor",
        "max_delta_linf",
        "max_delta_l2",
        "nonfinite",
        "layer_kl_nats",
    ]
    for row in summary["table"]:
        for key in numeric:
            assert isinstance(row[key], (int, float)) and not isinstance(row[key], bool), (key, row[key])
    for c in summary["checks"]:
        assert isinstance(c["passed"], bool) and isinstance(c["limit"], float)
    assert summary["bootstrap"] == {"n_boot": agg.N_BOOT, "seed": agg.BOOT_SEED, "level": 95, "over": "points"}


def test_checks_pass_and_name_their_numbers(report):
    _, summary, _ = report
    by = {}
    for c in summary["checks"]:
        by.setdefault(c["check"], []).append(c)
    assert set(by) == {
        "budget respected",
        "attack beats noise",
        "attack below the no-attack level",
        "attack did measurable damage",
        "damage monotone in eps",
        "no non-finite rows",
        "restarts per point as configured",
        "run complete",
        "every planned unit present",
        "more restarts no longer pay",
        "few MS-SSIM scores clipped at 0",
    }  # the other strength flags
    # need curves or gradients
    assert all(
        c["passed"]
        for c in by["budget respected"]
        + by["no non-finite rows"]
        + by["run complete"]
        + by["every planned unit present"]
    )
    assert all(
        c["passed"]
        for c in by["restarts per point as configured"]
        + by["damage monotone in eps"]
        + by["few MS-SSIM scores clipped at 0"]
    )
    assert len(by["attack beats noise"]) == 8 and all(c["passed"] for c in by["attack beats noise"])
    assert len(by["attack did measurable damage"]) == 8 and all(c["passed"] for c in by["attack did measurable damage"])
    assert all(c["passed"] for c in by["attack below the no-attack level"])


def test_failed_checks_budget_nonfinite_restarts_noise(tmp_path):
    rows = records(models=("vdvae-a",))
    rows[0]["delta_linf"] = 0.25  # outside the 0.1 ball
    rows[1]["msssim"], rows[1]["nonfinite"] = float("nan"), True
    rows = [r for r in rows if not (r["kind"] == "attack" and r["point"] == 2 and r["restart"] == 1 and r["k"] == 2)]
    runs = load_runs([write_run(tmp_path / "r", rows, gallery=False)])
    table = agg.summarise(runs.records)
    checks = agg.checks(runs, table).set_index(["check", "scope"])
    scope = "vdvae-a (mnist-offline, linf eps 0.1)"
    budget = checks.loc[("budget respected", scope)]
    assert not budget.passed and budget.value == pytest.approx(0.25)
    nonfinite = checks.loc[("no non-finite rows", scope)]
    assert not nonfinite.passed and nonfinite.value == 1
    assert not checks.loc[("restarts per point as configured", scope)].passed
    # the non-finite restart is left out of the means and counted
    row = table[(table.k == 1)].iloc[0]
    assert row.nonfinite == 1 and row.worst == pytest.approx((0.9 + 0.6 + 0.5) / 3)  # point 0 keeps its 0.9
    # an attack that barely moves the score: below the no-attack level of 1, but not beyond the floor's scatter
    rows = records(models=("vdvae-a",))
    rows = [{**r, "msssim": 0.999} if r["kind"] == "attack" and r["k"] == 2 else r for r in rows]
    runs = load_runs([write_run(tmp_path / "m", rows, gallery=False)])
    checks = agg.checks(runs, agg.summarise(runs.records)).set_index(["check", "scope"])
    measurable = checks.loc[("attack did measurable damage", f"{scope} k=2")]
    spread = np.sqrt(np.mean([np.var(f, ddof=1) for f in FLOOR]))  # pooled within-point std of the floor draws
    assert (
        not measurable.passed and measurable.value == pytest.approx(0.001) and measurable.limit == pytest.approx(spread)
    )
    assert checks.loc[("attack did measurable damage", f"{scope} k=1")].passed
    assert not checks.loc[("attack beats noise", f"{scope} k=2")].passed
    assert ("damage monotone in k", scope) not in checks.index  # not a property of this protocol


def test_html_escapes_names_and_settings(report):
    _, _, html = report
    assert EVIL not in html and "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "--note=&lt;script&gt;" in html  # the command line of the run, escaped too


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.refs += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "srcset", "data", "action")]


def test_html_is_self_contained(report):
    _, summary, html = report
    p = _Refs()
    p.feed(html)
    srcs = [v for _, k, v in p.refs if k == "src"]
    assert len(srcs) >= 3 and all(v.startswith("data:image/png;base64,") for v in srcs)  # figure 10, layers, galleries
    assert all(v.startswith("#") for _, k, v in p.refs if k == "href")  # in-page links only
    assert not any("http" in v for _, _, v in p.refs)
    assert not p.tags & {"script", "link", "iframe", "object", "embed"}
    assert "@import" not in html and "url(" not in html
    assert "@media print" in html
    for needle in ("c0ffee", SHA["vdvae-a"], "python 3.11", "seed = 0", "eps = 0.2"):
        assert needle in html, needle


def test_report_writes_every_file(report):
    out, summary, _ = report
    for name in summary["files"]:
        assert (out / name).stat().st_size > 0, name
    assert {"gallery-vdvae-a.png", "figure10.svg", "table.tex"} <= set(summary["files"])
    md = (out / "table.md").read_text()
    assert "0.750 [" in md and "0.600 [" in md
    tex = (out / "table.tex").read_text()
    assert r"95\% CI" in tex and r"max L-inf(delta)" in tex  # LaTeX specials escaped


def test_figure_error_bars_are_the_table_intervals(tmp_path):
    runs = load_runs([write_run(tmp_path / "r", records(), gallery=False)])
    table = agg.summarise(runs.records)
    fig = figures.figure10(table)
    for ax, view in zip(fig.axes[:2], ("mean", "worst")):
        bars = sorted(
            (seg[0][0], seg[0][1], seg[1][1])
            for c in ax.collections
            if isinstance(c, LineCollection)
            for seg in c.get_segments()
        )
        want = sorted(zip(table.k, table[f"{view}_lo"], table[f"{view}_hi"]))
        np.testing.assert_allclose(np.array(bars), np.array(want, dtype=float), atol=1e-12)


def test_figure10_draws_what_seaborn_drew(tmp_path, monkeypatch):
    """Figure 10 from the table's numbers is, pixel for pixel, what seaborn's lineplot drew by re-bootstrapping."""
    runs = load_runs([write_run(tmp_path / "r", records(), gallery=False)])
    table = agg.summarise(runs.records)
    drawn = figures.png_bytes(figures.figure10(table))
    long = (
        agg.per_point(runs.records)
        .melt(
            id_vars=[*PANEL_KEYS, "model", "k", "point"],
            value_vars=list(agg.VIEWS),
            var_name="view",
            value_name="msssim",
        )
        .dropna(subset=["msssim"])
    )

    def seaborn_panel(ax, base, view, colours, markers):  # the panel as robustvae drew it before (88ee658)
        part = long[(long.view == view) & (long[PANEL_KEYS] == base[PANEL_KEYS].iloc[0]).all(axis=1)]
        sns.lineplot(
            data=part,
            x="k",
            y="msssim",
            hue="model",
            style="model",
            hue_order=list(colours),
            style_order=list(colours),
            palette=colours,
            markers=markers,
            dashes=False,
            errorbar=("ci", agg.CI_LEVEL),
            n_boot=agg.N_BOOT,
            seed=agg.BOOT_SEED,
            err_style="bars",
            err_kws={"capsize": 3},
            markersize=7,
            ax=ax,
        )
        ax.get_legend().remove()
        for model, g in base.groupby("model"):
            g = g.sort_values("k")
            ax.plot(g.k, g.noise, ls="--", lw=1.2, color=colours[model], alpha=0.8)
            ax.plot(g.k, g.floor, ls=":", lw=1.4, color=colours[model], alpha=0.8)

    monkeypatch.setattr(figures, "_panel", seaborn_panel)
    assert figures.png_bytes(figures.figure10(table)) == drawn


def test_shards_merge_into_the_same_numbers(tmp_path):
    whole = load_runs([write_run(tmp_path / "whole", records(), gallery=False)])
    sharded = load_runs([write_run(tmp_path / "sharded", records(), shards=2, gallery=False)])
    assert len(sharded.runs) == 2 and len(sharded.records) == len(whole.records)
    a = agg.summarise(whole.records)
    b = agg.summarise(sharded.records)
    assert a.equals(b)
    checks = agg.checks(sharded, b)
    # the hand-made records' restarts are random draws: the restart flag may fire on them, and is not under test here
    assert checks[checks.check != "more restarts no longer pay"].passed.all()


def test_incompatible_settings_in_one_curve_name_the_field(tmp_path):
    one = write_run(tmp_path / "one", records(models=("vdvae-a",)), gallery=False)
    other = [{**r, "seed": 5} for r in records(models=("vdvae-a",))]  # other points: not comparable point by point
    two = write_run(tmp_path / "two", other, gallery=False)
    with pytest.raises(RobustVAEError, match=r"mix seed = 0, 5") as e:
        load_runs([one, two])
    assert str(one) in str(e.value) and str(two) in str(e.value)
    retrained = write_run(
        tmp_path / "sha", [{**r, "checkpoint_sha256": "c" * 64} for r in records(models=("vdvae-a",))], gallery=False
    )
    with pytest.raises(RobustVAEError, match="mix checkpoint_sha256"):
        load_runs([one, retrained])
    # a setting only run.json holds (the split) is checked as well
    val = write_run(tmp_path / "val", records(models=("vdvae-a",)), gallery=False)
    info = json.loads((val / "run.json").read_text())
    info["settings"]["attack"]["split"] = "val"
    (val / "run.json").write_text(json.dumps(info))
    with pytest.raises(RobustVAEError, match="mix split"):
        load_runs([one, val])
    # runs that differ in the attack (steps, restarts, optimizer, objective) are curves side by side instead
    # (tests/test_report_attacks.py)
    # the same records twice (a copied run) would count twice
    twin = write_run(tmp_path / "twin", records(models=("vdvae-a",)), gallery=False)
    with pytest.raises(RobustVAEError, match="appear twice"):
        load_runs([one, twin])


def test_one_label_with_another_checkpoint_in_another_panel(tmp_path):
    one = write_run(tmp_path / "one", records(models=("vdvae-a",)), gallery=False)
    rows = [{**r, "checkpoint_sha256": "c" * 64} for r in records(0.2, models=("vdvae-a",))]
    two = write_run(tmp_path / "two", rows, eps=0.2, gallery=False, sha={"vdvae-a": "c" * 64})
    runs = load_runs([one, two])
    diag = agg.diagnostics_frame(runs)
    assert set(diag.model) == {"vdvae-a @aaaaaaaa", "vdvae-a @cccccccc"} and len(diag) == 4
    table = agg.summarise(runs.records, diag)
    assert set(table.checkpoint_sha256) == {"a" * 64, "c" * 64} and table.layer_kl_nats.notna().all()


def _error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, (code, err)
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert "does not exist" in _error(capsys, ["report", str(tmp_path / "missing"), "--out", out])
    (tmp_path / "nojson").mkdir()
    assert "holds no run.json" in _error(capsys, ["report", str(tmp_path / "nojson"), "--out", out])
    empty = write_run(tmp_path / "empty", [], gallery=False)
    assert "no records in" in _error(capsys, ["report", str(empty), "--out", out])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    assert "not valid JSON" in _error(capsys, ["report", str(tmp_path / "bad"), "--out", out])
    assert not Path(out).exists()  # nothing written on error


def test_cli_report_refuses_to_overwrite_without_force(tmp_path, capsys):
    run = write_run(tmp_path / "r", records(models=("vdvae-a",)))
    ev = tmp_path / "eval.json"
    ev.write_text(
        json.dumps(
            {
                "results": [
                    {
                        "checkpoint_sha256": SHA["vdvae-a"],
                        "nll_nats": 91.25,
                        "nelbo_nats": 95.0,
                        "split": "test",
                        "images": 200,
                        "iw_samples": 100,
                        "active_units": 20,
                        "total_units": 98,
                    }
                ]
            }
        )
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("trained for 5 minutes <b>on a CPU</b>")
    args = ["report", str(run), "--out", str(tmp_path / "o"), "--eval", str(ev), "--notes", str(notes)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "MS-SSIM" in text and "checks:" in text
    html = (tmp_path / "o" / "index.html").read_text()
    assert "91.25" in html and "&lt;b&gt;on a CPU&lt;/b&gt;" in html
    assert "already holds a report" in _error(capsys, args)
    assert main([*args, "--force"]) == 0


# --------------------------------------------------------------------------- compression runs' own figures

COMPRESSION_MODELS = {"vdvae-a": [1, 2], "dct/b": [1]}  # a label that is no file name


def _compression_run(d: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A compression run directory as the experiment writes it (small synthetic images, a few records).

    Returns what it was written from: (records, JPEG sweep, arrays by image: original, reconstructions, JPEG files).
    """
    g = np.random.default_rng(1)
    images = {
        "001": g.integers(0, 256, (1, 30, 33), dtype=np.uint8),
        "tile": g.integers(0, 256, (1, 28, 28), dtype=np.uint8),
    }
    rows, sweep, arrays = [], [], {}
    for name, pixels in images.items():
        folder = d / "images" / safe_name(name)
        folder.mkdir(parents=True)
        Image.fromarray(pixels[0]).save(folder / "original.png")
        files = {}
        for q in (10, 50, 90):
            buf = BytesIO()
            Image.fromarray(pixels[0]).save(buf, format="JPEG", quality=q)
            files[q] = buf.getvalue()
            sweep.append(
                {
                    "image": name,
                    "width": 33,
                    "height": 30,
                    "channels": 1,
                    "quality": q,
                    "bytes": len(files[q]),
                    "bpp": 8 * len(files[q]) / pixels[0].size,
                    "psnr": 10.0 + q / 5,
                    "msssim": 0.5 + q / 200,
                    "msssim_impl": "robustvae standard (small-image)",
                }
            )
        recs = {}
        for model, ks in COMPRESSION_MODELS.items():
            for k in ks:
                rec = np.clip(pixels.astype(int) + g.integers(-40 // k, 40 // k + 1, pixels.shape), 0, 255).astype(
                    np.uint8
                )
                Image.fromarray(rec[0]).save(folder / f"{safe_name(model)}-k{k}.png")
                recs[model, k] = rec
                q = (10, 50, 90)[k]
                (folder / f"jpeg-q{q}.jpg").write_bytes(files[q])
                rows.append(
                    {
                        **dict.fromkeys(COMPRESSION_COLUMNS),
                        "arch": model.split("/")[0][:5],
                        "checkpoint_sha256": "c" * 64,
                        "patch_size": 28,
                        "patches": 4,
                        "temperature": 0.1,
                        "seed": 0,
                        "msssim_impl": "robustvae standard (small-image)",
                        "bits": 10.0 * k,
                        "gaussian_bits": 10.0 * k,
                        "context_bits_prior": 0.0,
                        "context_bits_raw": 0.0,
                        "image": name,
                        "width": pixels.shape[2],
                        "height": pixels.shape[1],
                        "channels": 1,
                        "model": model,
                        "k": k,
                        "psnr": 12.0 + 3 * k,
                        "msssim": 0.3 + 0.2 * k,
                        "bpp": 0.05 * k,
                        "bpp_context_raw": 0.2 if model == "dct/b" else None,
                        "jpeg_quality": q,
                        "jpeg_psnr": 10.0 + q / 5,
                        "jpeg_msssim": 0.5 + q / 200,
                        "jpeg_bpp": 8 * len(files[q]) / pixels[0].size,
                    }
                )
        arrays[name] = (pixels, recs, files)
    records, jpeg = pd.DataFrame(rows), pd.DataFrame(sweep)
    records.to_csv(d / "records.csv", index=False)
    jpeg.to_csv(d / "jpeg.csv", index=False)
    models = [
        {
            "label": m,
            "path": f"/runs/{m}",
            "sha256": "c" * 64,
            "layers": ks,
            "patch_size": 28,
            "patches": 4,
            "patches_per_s": 10.0,
            "reconstructions_per_s": 10.0 * len(ks),
        }
        for m, ks in COMPRESSION_MODELS.items()
    ]
    (d / "run.json").write_text(
        json.dumps(
            {
                "kind": COMPRESSION_RUN_KIND,
                "command": ["robustvae", "compress"],
                "settings": {},
                "wall_time_s": 1.0,
                "models": models,
                "images": [{"name": n, "width": p.shape[2], "height": p.shape[1]} for n, (p, _, _) in arrays.items()],
            }
        )
    )
    return records, jpeg, arrays


def _pixels(png) -> np.ndarray:
    with Image.open(png) as im:
        return np.asarray(im)


def _drawn(fig, dpi: int) -> np.ndarray:
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return _pixels(buf)


def test_compression_figures_from_the_run_directory_alone(tmp_path):
    d = tmp_path / "compress"
    records, jpeg, arrays = _compression_run(d)
    written = write_compression_figures(d)
    pictures = [d / "side-by-side" / f"{safe_name(n)}.png" for n in arrays]
    assert written == [d / "rd.png", d / "rd.pdf", *pictures]
    assert (d / "rd.pdf").read_bytes().startswith(b"%PDF")
    # the same pictures as drawn from the arrays in memory (as the experiment did before)
    np.testing.assert_array_equal(_pixels(d / "rd.png"), _drawn(comp.rd_figure(records, jpeg), 130))
    for path, (name, (pixels, recs, files)) in zip(pictures, arrays.items()):
        panels = [
            (r, recs[r.model, r.k], comp.read_image(BytesIO(files[r.jpeg_quality])))
            for _, r in records[records.image == name].iterrows()
        ]
        assert len(panels) == 3
        np.testing.assert_array_equal(_pixels(path), _drawn(comp.side_by_side_figure(name, pixels, panels), 90))
    # and the report's compression section shows them
    summary = make_report([d], tmp_path / "report")
    assert summary["compression"]["models"] == ["dct/b", "vdvae-a"]
    assert "side-by-side of 001" in (tmp_path / "report" / "index.html").read_text()


def test_compression_figures_name_a_missing_file(tmp_path):
    d = tmp_path / "compress"
    _compression_run(d)
    (d / "images" / "tile" / "original.png").unlink()
    with pytest.raises(RobustVAEError, match="original.png"):
        write_compression_figures(d)


def test_figures_keep_coinciding_curves_na_and_zero_and_the_worst_points_visible(tmp_path):
    """Two models with the same numbers: their curves are drawn side by side (shifted along k), not on top of
    each other; the y axis reaches the lowest interval; the layer chart writes "n/a" where a layer has no number
    and a dash where it is 0; the gallery shows the most damaged saved points first."""
    from matplotlib.text import Text

    from robustvae.reporting.load import GalleryEntry

    table = agg.summarise(load_runs([write_run(tmp_path / "r", records(), gallery=False)]).records)
    one = table[table.model == table.model.iloc[0]]
    twin = pd.concat([one, one.assign(model="zz-twin")])
    fig = figures.figure10(twin)
    xs = [tuple(line.get_xdata()) for line in fig.axes[0].lines if line.get_marker() in figures.MARKERS]
    assert len(xs) == 2 and xs[0] != xs[1] and np.allclose(np.array(xs[0]) + figures.DODGE, xs[1])
    low = float(twin[["mean_lo", "worst_lo", "floor", "noise"]].min().min())
    assert fig.axes[0].get_ylim()[0] <= low and (low > 0.8 or fig.axes[0].get_ylim()[0] < 0.8)
    plain = figures.figure10(table)  # distinct curves are not moved
    assert {tuple(line.get_xdata()) for line in plain.axes[0].lines} <= {tuple(sorted(set(table.k)))}

    diag = pd.DataFrame(
        {
            "model": ["a", "a", "b"],
            "layer": [1, 2, 1],
            "kind": ["gaussian"] * 3,
            "kl_nats": [1.0, 0.0, 2.0],
            "active_fraction": [0.5, 0.0, 1.0],
            "levels_used": [None] * 3,
            "levels": [None] * 3,
        }
    )
    layers = figures.layers_figure(diag)
    texts = [t.get_text() for t in layers.axes[0].findobj(Text)]
    assert texts.count("n/a") == 1  # model b has no layer 2
    dashes = [ln for ln in layers.axes[0].lines if ln.get_marker() == "_"]
    assert len(dashes) == 1 and list(dashes[0].get_ydata()) == [0]  # model a's layer 2: KL exactly 0

    x = np.zeros((3, 1, 28, 28), dtype=np.float32)
    arrays = {
        "points": np.array([0, 1, 2]),
        "x": x,
        "x_adv": x,
        "rec": x,
        "rec_adv": x,
        "msssim": np.array([0.9, 0.2, 0.5], dtype=np.float32),
    }
    entry = GalleryEntry(dataset="mnist", norm="linf", eps=0.1, model="m", k=1, arrays=arrays)
    assert [i for _, i in figures.worst_examples([entry], per_k=2)] == [1, 2]


def test_the_sweep_saves_the_most_damaged_points_for_the_gallery():
    """Per unit, the gallery keeps the ``gallery_points`` points whose worst restart scored lowest (not the first
    points), each at its worst restart; a non-finite score never counts as damage."""
    from types import SimpleNamespace

    import torch

    from robustvae.experiments.attack import _gallery

    R, pts = 2, [10, 11, 12, 13]
    score = torch.tensor([0.9, 0.8, 0.3, 0.7, float("nan"), 0.95, 0.5, 0.1])  # point x restart
    ctx = SimpleNamespace(cfg=SimpleNamespace(restarts=R, gallery_points=2), pts=pts)
    X = torch.arange(8.0).view(8, 1, 1, 1)
    out = _gallery(ctx, X, X + 100, torch.arange(4.0).view(4, 1, 1, 1), X + 200, score, R)
    assert out["points"].tolist() == [11, 13] and out["restarts"].tolist() == [0, 1]
    assert out["msssim"].tolist() == pytest.approx([0.3, 0.1]) and out["x"].flatten().tolist() == [2.0, 7.0]
    assert out["rec"].flatten().tolist() == [1.0, 3.0]
    assert (
        _gallery(SimpleNamespace(cfg=SimpleNamespace(restarts=R, gallery_points=0), pts=pts), X, X, X, X, score, R)
        is None
    )


def test_the_report_names_the_image_sets_of_eval_and_of_the_layer_atlas(tmp_path):
    """An --eval file's active units and the layer atlas come from different images: the page says which."""
    run = write_run(tmp_path / "r", records(models=("vdvae-a",)), gallery=False)
    info = json.loads((run / "run.json").read_text())
    info["models"][0]["layer_diagnostics_images"] = {
        "split": "test",
        "images": 500,
        "selection": "label-stratified with the attack's seed 0",
    }
    (run / "run.json").write_text(json.dumps(info))
    ev = tmp_path / "eval.json"
    ev.write_text(
        json.dumps(
            {
                "checkpoint_sha256": SHA["vdvae-a"],
                "nll_nats": 91.25,
                "nelbo_nats": 95.0,
                "split": "test",
                "images": 200,
                "iw_samples": 100,
                "active_units": 20,
                "total_units": 98,
                "image_set": {"selection": "label-stratified subset"},
            }
        )
    )
    make_report([run], tmp_path / "o", evals=[ev])
    import html

    text = html.unescape(" ".join((tmp_path / "o" / "index.html").read_text().split()))
    assert (
        "test, 200 images (label-stratified subset), K = 100, active units 20/98 on those images; layer atlas: "
        "500 test images, label-stratified with the attack's seed 0"
    ) in text
