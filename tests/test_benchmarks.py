"""The benchmark suite runs and reports self-consistent numbers; its 'same results' check is real.

No timing is asserted (speed is a ratio measured in one run, never a timed test): only structure, consistency and the equality checks.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.attack import assert_same, compare
from robustvae.attacks import LatentPGD
from robustvae.registry import build_model, get_preset
from tolerance import msssim_rounding


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    res = main(["--quick", "--device", "cpu", "--out", str(out)])
    return res, json.loads(out.read_text())


def test_quick_suite_writes_one_consistent_json(quick, capsys):
    res, saved = quick
    assert saved["table"] == res["table"] and "| benchmark |" in res["table"]
    assert saved["command"].startswith("python -m benchmarks") and saved["quick"] is True
    limit = saved["limit"]["flops_per_s"]
    assert limit == max(saved["limit"]["per_layout"].values()) > 0
    assert [r["preset"] for r in saved["training"]] == ["vdvae-mnist", "dctvae-mnist"]
    for r in saved["training"]:
        assert r["flops_per_image"] > 0 and r["images_per_s"] > 0 and r["channels_last_speedup"] > 0
        assert r["fraction_of_limit"] == pytest.approx(r["achieved_flops_per_s"] / limit, rel=1e-12)
        assert r["peak_memory"]["bytes"] > 0
    assert [r["k"] for r in saved["attack"]] == [1, 8]
    assert "freshly initialised vdvae-mnist" in saved["attack_model"]
    for r in saved["attack"]:
        assert r["same"] is True and r["speedup"] > 0 and r["flops"] > 0
        assert r["fraction_of_limit"] == pytest.approx(r["achieved_flops_per_s"] / limit, rel=1e-12)
        assert r["peak_memory"]["bytes"] > r["one_at_a_time_peak_memory"]["bytes"] > 0
    assert saved["ms_ssim"]["speedup"] > 0 and saved["ms_ssim"]["max_abs_difference"] < 1e-4
    assert set(saved["goals"]) == {"train_fraction_of_limit", "attack_speedup", "ms_ssim_speedup"}


def test_the_same_results_check_catches_a_different_attack(gen):
    """Runs with other seeds are a genuinely different result: the check must say so; the same seeds pass."""
    torch.manual_seed(0)
    m = build_model(get_preset("vdvae-mnist-tiny").model).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.rand(2, 1, 28, 28, generator=gen)
    batched = LatentPGD(m, k=2, eps=0.1, steps=3)
    adv = batched(x, seeds=[0, 1])
    runs = {}
    for name, seeds in (("same", [0, 1]), ("other", [7, 8])):
        singles = [LatentPGD(m, k=2, eps=0.1, steps=3) for _ in seeds]
        one = torch.cat([a(x[i : i + 1], seeds=[s]) for i, (a, s) in enumerate(zip(singles, seeds))])
        runs[name] = compare(one, torch.cat([a.best_loss for a in singles]), adv, batched.best_loss)
    assert_same(runs["same"], "same seeds")
    assert runs["other"]["same"] is False
    with pytest.raises(AssertionError, match="results differ"):
        assert_same(runs["other"], "other seeds")
    # and a single objective off by more than the 1 % tolerance is enough
    loss = batched.best_loss.clone()
    loss[1] *= 1.02
    assert compare(adv, loss, adv, batched.best_loss)["same"] is False


def test_old_commands_are_thin_wrappers(tmp_path):
    from benchmarks.train_throughput import main as train_main

    res = train_main(["--quick", "--preset", "vdvae-mnist-tiny", "--out", str(tmp_path / "t.json")])
    assert [r["preset"] for r in res["training"]] == ["vdvae-mnist-tiny"] and "attack" not in res


@pytest.mark.slow  # needs the git history back to BEFORE, which a shallow CI clone may lack
def test_before_after_loads_the_old_code_and_compares(capsys):
    from benchmarks.before_after import main as ba_main

    rows = ba_main(["--quick", "--repeats", "1"])
    assert {r["change"] for r in rows} >= {"MS-SSIM as matrix products, cached windows", "channels-last layout"}
    exact = [
        r for r in rows if r["change"] in ("encode(x, k) skips the k-th prior net", "attack loop without host syncs")
    ]
    assert exact and all(r["max_rel_difference"] == 0 for r in exact)
    assert all(r["ratio"] > 0 and r["equal_share"] > 0.9 for r in rows)
    assert "| change |" in capsys.readouterr().out


@pytest.mark.numerical
def test_the_ensemble_benchmark_sets_old_default_beside_auto(tmp_path, monkeypatch):
    """Tiny models, tiny sizes: both attacks per model and k, the passes each used from the attacks' definitions."""
    from robustvae.attacks import ensemble_plan
    from robustvae.attacks.registry import AUTO_VERSION
    from robustvae.experiments import attack as engine

    monkeypatch.setattr(engine, "layer_diagnostics", lambda *a, **kw: [])  # run.json's diagnostics: not used here
    res = main(
        [
            "--quick",
            "--device",
            "cpu",
            "--only",
            "ensemble",
            "--ensemble-layers",
            "1",
            "--out",
            str(tmp_path / "e.json"),
        ]
    )
    ens = res["ensemble"]
    assert {(r["attack"], r["model"], r["k"]) for r in ens["rows"]} == {
        (a, m, 1) for a in ("pgd", "auto") for m in ("vdvae", "dctvae")
    }
    # MS-SSIM in [0, 1] up to its float32 rounding (an unchanged reconstruction may score 1.000002)
    assert all(0 <= r["worst_min"] <= r["worst_mean"] <= 1 + msssim_rounding() for r in ens["rows"])
    passes = {(p["attack"], p["model"]): p for p in ens["passes"]}
    R, S = 2, 2  # --quick: restarts and steps
    assert passes[("pgd", "vdvae")]["backward"] == R * S and passes[("pgd", "vdvae")]["forward"] == R * (S + 1)
    model = build_model(get_preset("dctvae-mnist-tiny").model)
    plan = ensemble_plan(model, 1, AUTO_VERSION, S)  # 2 steps, more members than steps: one step each
    assert passes[("auto", "dctvae")]["backward"] == R * sum(n for m, n in plan if m.optimizer != "square")
    assert "| dctvae | 1 |" in ens["table"] and "old default (pgd) against the ensemble" in res["table"]


def test_real_size_part_reports_seconds_per_point_passes_and_memory(tmp_path):
    """The real-size part on a tiny stand-in model: its structure, and the attack's passes follow the budget."""
    out = tmp_path / "rs.json"
    res = main(
        [
            "--only",
            "real-size",
            "--quick",
            "--device",
            "cpu",
            "--real-preset",
            "openai-vdvae-tiny",
            "--real-ks",
            "4",
            "--real-max-batch-mib",
            "1",
            "--real-eval-k",
            "4",
            "--out",
            str(out),
        ]
    )
    rs = json.loads(out.read_text())["real_size"]
    assert rs == json.loads(json.dumps(res["real_size"])) and "seconds per point" in res["table"]
    assert [(a["k"], a["optimizer"]) for a in rs["attacks"]] == [(4, "pgd"), (4, "auto")]
    for a in rs["attacks"]:
        rows = max(1, min(2, 2**20 // (3 * a["bytes_per_image_estimate"])))  # --real-max-batch-mib 1, 2 restarts
        assert a["images_per_pass"] == rows and a["passes_per_point"] == -(-2 // rows)
        assert a["seconds_per_point"] > 0 and a["pass_peak_memory"]["bytes"] > 0 and a["members"]
    assert len(rs["attacks"][1]["members"]) > 1  # the ensemble's members, each timed
    assert rs["eval"]["seconds_per_image"] > 0 and rs["eval"]["flops_per_sample"] > 0
    assert rs["flops_per_pgd_step"]["4"] > 0


def _milp_rows(values_after):
    """Two points at one limit: before proves point 0 only, after proves both (values as given)."""
    rows = []
    for p, (vb, va) in enumerate(zip([3.0, 2.0], values_after)):
        rows.append(
            {
                "time_limit": 5.0,
                "point": p,
                "version": "before",
                "cpu_s": 4.0,
                "wall_s": 5.0,
                "proven": p == 0,
                "value": vb,
                "bound": 4.0,
                "gap": (4.0 - vb) / 4.0,
            }
        )
        rows.append(
            {
                "time_limit": 5.0,
                "point": p,
                "version": "after",
                "cpu_s": 1.0 + p,
                "wall_s": 2.0,
                "proven": True,
                "value": va,
                "bound": va,
                "gap": 0.0,
            }
        )
    return rows


def test_milp_summary_counts_proofs_and_ratios_and_catches_disagreeing_optima():
    from benchmarks.milp import check_agreement, summary, table

    (s,) = summary(_milp_rows([3.0, 2.5]))
    assert s["before"]["proven"] == 1 and s["after"]["proven"] == 2 and s["both_proven"] == 1
    assert s["before"]["cpu_s_per_point"] == 4.0 and s["after"]["cpu_s_per_point"] == 1.5
    assert s["cpu_ratio_after_over_before"] == pytest.approx(1.5 / 4.0)
    assert s["before"]["mean_gap"] == pytest.approx((0.25 + 0.5) / 2) and s["after"]["mean_gap"] == 0.0
    check_agreement([s])
    assert "| 5 | 2 | 1 | 2 | 4.00 | 1.50 | 0.38 |" in table([s])
    # point 0 proven optimal by both with different values: a changed formulation changed the answer
    with pytest.raises(AssertionError, match="different optima"):
        check_agreement(summary(_milp_rows([3.1, 2.5])))


@pytest.mark.slow  # needs the git history back to benchmarks.milp.BEFORE, which a shallow CI clone may lack
def test_milp_benchmark_runs_before_and_after_in_one_run(tmp_path):
    from benchmarks.milp import main as milp_main

    res = milp_main(["--points", "1", "--time-limits", "0.5", "--out", str(tmp_path / "m.json")])
    (s,) = res["summary"]
    assert s["before"]["points"] == s["after"]["points"] == 1 and s["before"]["cpu_s_per_point"] > 0
    assert json.loads((tmp_path / "m.json").read_text())["table"] == res["table"]


def test_milp_cpu_to_proof_counts_points_proven_within_each_budget():
    from benchmarks.milp import cpu_to_proof

    rows = [
        {"version": "after", "time_limit": 40.0, "cpu_s": c, "proven": ok}
        for c, ok in ((2.0, True), (7.0, True), (12.0, True), (3.0, False))
    ]
    (r,) = cpu_to_proof(rows, [5.0, 10.0])
    assert r["proven_within"] == {"5": 1, "10": 2} and r["proven_at_wall_limit"] == 3 and r["points"] == 4
    assert r["mean_cpu_s_of_proven"] == pytest.approx(7.0)
