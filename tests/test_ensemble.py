"""The attack ensemble (``--attack auto``) and the evidence of attack strength: members, budget, per-point worst
case, batching, resume and shards with members, eps sweeps, the unrelated-images baseline, and the failure flags.

The ensemble's per-point worst case is checked against each member run alone (an independent sweep), the
evidence tables against brute-force computations over hand-made records, and each flag on a model or ensemble
made to trip it. That the context-boundary objective changes at least as many quantiser levels as the L2
surrogate on every point of a tiny DCT-VAE is tests/test_objectives.py's
``test_boundary_changes_at_least_as_many_levels_as_the_l2_surrogate_on_every_point``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robustvae
from robustvae.attacks import ENSEMBLES, ensemble_plan, ensemble_version
from robustvae.attacks.registry import AUTO_VERSION, EnsembleSpec, Member
from robustvae.cli import main
from robustvae.config import AttackConfig
from robustvae.protocol import NORMS
from robustvae.errors import RobustVAEError
from robustvae.experiments import attack as engine
from robustvae.reporting import strength
from robustvae.reporting.aggregate import per_point
from functools import lru_cache

from robustvae.registry import build_model, get_preset

DCT = "dctvae-mnist-tiny"
VD = "vdvae-mnist-tiny"
SMALL = dict(points=3, restarts=2, steps=4, floor_draws=1, noise_draws=1, gallery_points=1)


@lru_cache(maxsize=None)
def tiny(preset: str, scramble: float = 0.5):
    """An untrained tiny model with weights scrambled by Gaussian noise of size ``scramble`` (so that its
    reconstruction depends on its input), DCT-VAE's context fitted on random binary images; eval mode."""
    torch.manual_seed(0)
    m = build_model(get_preset(preset).model)
    m.fit_data((torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5).float())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * scramble)
    return m.eval()


@pytest.fixture(autouse=True)
def _no_layer_diagnostics(monkeypatch):
    """run.json's per-layer diagnostics are not under test here, and cost more than these small sweeps; nor is the
    strength of auto-v2's context member (tests/test_auto_v2.py), whose MILP gets a short time limit here."""
    monkeypatch.setattr(engine, "layer_diagnostics", lambda *a, **kw: [])
    monkeypatch.setattr("robustvae.attacks.context.CONTEXT_TIME_LIMIT", 0.1)


def sweep(preset: str, cfg: AttackConfig, out=None, scramble: float = 0.5, **kw) -> pd.DataFrame:
    return robustvae.attack([tiny(preset, scramble)], cfg, out, data="synthetic", device="cpu", **kw).records


def attack_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.kind == "attack"]


# --------------------------------------------------------------------------- the ensemble's plan


@settings(max_examples=30, deadline=None)
@given(
    steps=st.integers(len(ENSEMBLES[AUTO_VERSION].members), 400),
    k=st.sampled_from([1, 2]),
    preset=st.sampled_from([DCT, VD]),
)
def test_the_members_share_the_steps_of_one_attack(steps, k, preset):
    plan = ensemble_plan(tiny(preset), k, AUTO_VERSION, steps)
    names = [m.name for m, _ in plan]
    assert sum(n for _, n in plan) == steps and all(n >= 1 for _, n in plan)
    # the context members only where the attacked layers include the quantised context (DCT-VAE's layer 1, so every k)
    assert ("apgd-boundary" in names) == (preset == DCT) == ("context-levels" in names)
    assert {"apgd-skl", "apgd-recon", "square-recon"} <= set(names)


def test_auto_names_the_current_version_and_bad_names_are_refused(capsys):
    assert ensemble_version("auto") == AUTO_VERSION and ensemble_version("pgd") is None
    assert AttackConfig(optimizer="auto").optimizer == "auto"
    with pytest.raises(RobustVAEError, match="unknown optimizer 'auto-v9'.*auto-v1"):
        AttackConfig(optimizer="auto-v9")
    with pytest.raises(RobustVAEError, match="eps_sweep"):
        AttackConfig(eps_sweep="0.1,big")
    with pytest.raises(RobustVAEError, match="eps_sweep"):
        AttackConfig(eps_sweep="0.1,0")
    assert main(["attack", "x", "--attack", "best", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "unknown optimizer 'best'" in err and "Traceback" not in err


# --------------------------------------------------------------------------- the sweep with members


def test_each_member_is_its_attack_alone_and_the_worst_case_is_never_above_any_member(tmp_path):
    """Every member but auto-v2's context member, which also starts from the earlier members' best iterate
    (tests/test_auto_v2.py), equals its attack run alone."""
    cfg = AttackConfig(layers="1", optimizer="auto", **SMALL)
    auto = sweep(DCT, cfg, tmp_path / "auto")
    att = attack_rows(auto)
    worst = per_point(auto).set_index(["k", "point"]).worst
    for k in (1,):
        plan = ensemble_plan(tiny(DCT, 0.5), k, AUTO_VERSION, cfg.steps)
        assert set(att[att.k == k].member) == {m.name for m, _ in plan}
        for m, n in plan:
            if m.optimizer == "context":
                member_worst = att[(att.k == k) & (att.member == m.name)].groupby("point").msssim.min()
                assert (worst.loc[k].loc[member_worst.index] <= member_worst + 1e-9).all()
                continue
            alone = sweep(
                DCT, dataclasses.replace(cfg, layers=str(k), optimizer=m.optimizer, objective=m.objective, steps=n)
            )
            mine = att[(att.k == k) & (att.member == m.name)].sort_values(["point", "restart"])
            ref = attack_rows(alone).sort_values(["point", "restart"])
            assert (mine.member_steps == n).all()
            np.testing.assert_allclose(mine.msssim.to_numpy(), ref.msssim.to_numpy(), rtol=1e-5, atol=1e-6)
            # per point, not on average: the ensemble's worst case is at most this member's
            member_worst = ref.groupby("point").msssim.min()
            assert (worst.loc[k].loc[member_worst.index] <= member_worst + 1e-9).all()


def test_run_json_states_the_version_and_the_passes(tmp_path):
    import json

    sweep(
        VD,
        AttackConfig(layers="1", optimizer="auto", points=1, restarts=3, steps=10, floor_draws=0, noise_draws=0),
        tmp_path / "r",
    )
    ens = json.loads((tmp_path / "r" / "run.json").read_text())["ensemble"]
    plan = ens["plans"]["vdvae|k=1"]
    # VDVAE has no quantised context: auto-v2's plan is auto-v1's, and no solver time is recorded
    assert ens["version"] == AUTO_VERSION == "auto-v2" and plan["passes_per_point"] == 30
    assert sum(plan["members"].values()) == 10 and "solver_s_per_point" not in plan


def test_batch_resume_and_shards_are_exact_with_members(tmp_path, monkeypatch):
    cfg = AttackConfig(layers="1", optimizer="auto", **SMALL)
    whole = sweep(DCT, cfg, tmp_path / "whole")
    key = ["kind", "k", "point", "restart", "member"]

    def same(a, b):
        cols = ["kind", "k", "point", "restart", "member", "msssim", "delta_linf"]
        a, b = (d[cols].sort_values(key).reset_index(drop=True) for d in (a, b))
        pd.testing.assert_frame_equal(a, b, rtol=1e-5, atol=1e-6)

    real, calls = engine.run_unit, {"n": 0}

    def dies(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    killed = dataclasses.replace(cfg, max_batch_mib=1)  # one point per unit
    monkeypatch.setattr(engine, "run_unit", dies)
    with pytest.raises(KeyboardInterrupt):
        sweep(DCT, killed, tmp_path / "killed")
    monkeypatch.setattr(engine, "run_unit", real)
    one = sweep(DCT, killed, tmp_path / "killed")  # resumed: its units one at a time equal the one batch
    assert one.unit.nunique() == 3 and whole.unit.nunique() == 1
    same(whole, one)
    s1 = sweep(DCT, killed, tmp_path / "shards", shard=(1, 2))
    s2 = sweep(DCT, killed, tmp_path / "shards", shard=(2, 2))
    assert not set(s1.unit) & set(s2.unit)
    same(pd.concat([s1, s2]), one)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(norm=st.sampled_from(NORMS), eps=st.floats(0.01, 3.0), seed=st.integers(0, 1000))
def test_every_member_respects_the_budget(norm, eps, seed):
    eps = eps / 3.01 if norm == "linf" else eps  # an L-inf budget is below 1 (at 1 the ball holds every image)
    cfg = AttackConfig(
        layers="1",
        optimizer="auto",
        norm=norm,
        eps=eps,
        points=2,
        restarts=1,
        steps=5,
        floor_draws=0,
        noise_draws=0,
        gallery_points=0,
        seed=seed,
    )
    att = attack_rows(sweep(DCT, cfg))
    size = att.delta_linf if norm == "linf" else att.delta_l2
    assert att.member.nunique() == 5 and (size <= eps * (1 + 1e-5) + 1e-7).all(), (size.max(), eps)


def test_eps_sweep_and_the_unrelated_baseline():
    cfg = AttackConfig(
        optimizer="pgd",
        layers="1",
        eps_sweep="0.05,0.9",
        points=2,
        restarts=1,
        steps=3,
        floor_draws=0,
        noise_draws=0,
        gallery_points=0,
    )
    df = sweep(VD, cfg)
    att = attack_rows(df)
    assert sorted(att.eps.unique()) == [0.05, 0.9] and len(att) == 4
    assert (att[att.eps == 0.05].delta_linf <= 0.05 + 1e-7).all() and (att.delta_linf > 0.05 + 1e-3).any()
    unrel = df[df.kind == "unrelated"].sort_values(["eps", "point"])
    assert len(unrel) == 4  # per point and eps
    # the reference: MS-SSIM between the point's reconstruction and that of the image after the attacked points,
    # both under the point's prior noise at temperature 0.1
    from robustvae.experiments.models import load_models
    from robustvae.metrics import ms_ssim
    from robustvae.seeding import derive_seed

    m = tiny(VD, 0.5)
    pts = engine.select_points(load_models([m], torch.device("cpu"), "synthetic")[0], cfg, None)
    want = []
    for p in range(2):
        noise = m.make_noise(1, torch.Generator().manual_seed(derive_seed(cfg.seed, "prior", p)))
        with torch.no_grad():
            a = m.reconstruct(pts.images[p : p + 1], 1, 0.1, noise)
            b = m.reconstruct(pts.images[2 + p : 3 + p], 1, 0.1, noise)
        want.append(float(ms_ssim(b, a)))
    np.testing.assert_allclose(unrel.msssim.to_numpy(), want * 2, rtol=1e-5)


# --------------------------------------------------------------------------- the evidence, against brute force


def _records() -> pd.DataFrame:
    """Hand-made attack rows: one curve, k = 1, 3 points x 2 restarts x 2 members, with curves."""
    g = np.random.default_rng(0)
    rows = []
    for p in range(3):
        for r in range(2):
            for m in ("apgd-skl", "square-recon"):
                a, b = sorted(g.uniform(0.3, 1.0, 2), reverse=True)
                rows.append(
                    {
                        "dataset": "d",
                        "norm": "linf",
                        "eps": 0.1,
                        "recon": "default",
                        "model": "m",
                        "k": 1,
                        "kind": "attack",
                        "point": p,
                        "restart": r,
                        "member": m,
                        "msssim": b,
                        "curve": {"2": a, "4": b},
                        "grad_norm": 0.0 if m == "apgd-skl" and p == 0 else (None if m.startswith("square") else 1.0),
                    }
                )
    for p in range(3):
        rows.append(
            {
                "dataset": "d",
                "norm": "linf",
                "eps": 0.1,
                "recon": "default",
                "model": "m",
                "k": 1,
                "kind": "unrelated",
                "point": p,
                "restart": 0,
                "msssim": 0.2,
            }
        )
    return pd.DataFrame(rows)


def test_the_evidence_tables_match_brute_force():
    df = _records()
    att = df[df.kind == "attack"]
    it = strength.iterations(df).set_index(["member", "steps"]).worst
    for m in ("apgd-skl", "square-recon"):
        for s in ("2", "4"):
            want = np.mean(
                [min(r.curve[s] for r in att.itertuples() if r.member == m and r.point == p) for p in range(3)]
            )
            assert it[(m, int(s))] == pytest.approx(want)
    rs = strength.restarts(df).set_index("r").worst
    for r in (1, 2):
        want = np.mean([min(x.msssim for x in att.itertuples() if x.point == p and x.restart < r) for p in range(3)])
        assert rs[r] == pytest.approx(want)
    wins = strength.member_wins(df).set_index("member").wins
    best = [min(att[att.point == p].itertuples(), key=lambda x: x.msssim).member for p in range(3)]
    assert {m: best.count(m) for m in ("apgd-skl", "square-recon")} == wins.to_dict()


def test_the_flags_fire_on_hand_made_records():
    df = _records()
    checks = pd.DataFrame(strength.strength_checks(df)).set_index("check")
    vanish = checks.loc["no vanishing gradient"]
    assert not vanish.passed and vanish.value == pytest.approx(1 / 3)  # point 0's 2 rows of apgd-skl's 6
    assert "square-recon" not in vanish.scope  # a gradient-free member has no gradient to vanish
    free = checks.loc["gradient-free member rarely wins"]
    assert free.value == pytest.approx(strength.member_wins(df).set_index("member").share["square-recon"])
    # doubling: every hand-made curve improves from 2 to 4 steps by more than 0.01 on average here
    doubling = checks.loc["more steps no longer pay"]
    assert (~doubling.passed).any()
    # an eps sweep whose largest eps stays far above the unrelated level trips that flag; one that reaches it passes
    far = pd.concat([df, df.assign(eps=1.0)])
    row = pd.DataFrame(strength.strength_checks(far)).set_index("check").loc["largest eps reaches unrelated images"]
    assert not row.passed and row.value > strength.UNRELATED_TOL
    near = pd.concat([df, df.assign(eps=1.0, msssim=lambda d: np.where(d.kind == "attack", 0.21, d.msssim))])
    assert (
        pd.DataFrame(strength.strength_checks(near))
        .set_index("check")
        .loc["largest eps reaches unrelated images"]
        .passed
    )


def test_a_vanished_gradient_at_the_metrics_minimum_is_not_masking():
    """A row that starts at MS-SSIM 0 (a seeded member already at the optimum, where the clamped metric is flat) has
    nothing to gain: its zero gradient hides no damage and does not count; the same row above 0 does."""
    df = _records()
    vanished = (df.kind == "attack") & (df.grad_norm == 0.0)
    at_floor = df.assign(msssim=np.where(vanished, 0.0, df.msssim))
    row = pd.DataFrame(strength.strength_checks(at_floor)).set_index("check").loc["no vanishing gradient"]
    assert row.passed and row.value == 0.0 and "2 more at MS-SSIM 0" in row.detail
    above = df.assign(msssim=np.where(vanished, 1e-3, df.msssim))
    row = pd.DataFrame(strength.strength_checks(above)).set_index("check").loc["no vanishing gradient"]
    assert not row.passed and row.value == pytest.approx(1 / 3)


def test_a_zeroed_encoder_gradient_trips_the_vanishing_gradient_flag(monkeypatch):
    m = tiny(VD, 0.5)
    real = type(m).encode

    def blind(self, x, k=None):
        return real(self, x.detach() + 0 * x, k)  # the same values, no gradient to x

    monkeypatch.setattr(type(m), "encode", blind)
    df = sweep(
        VD,
        AttackConfig(
            optimizer="pgd", layers="1", points=3, restarts=1, steps=3, floor_draws=0, noise_draws=0, gallery_points=0
        ),
    )
    row = pd.DataFrame(strength.strength_checks(df)).set_index("check").loc["no vanishing gradient"]
    assert not row.passed and row.value == 1.0 and (attack_rows(df).grad_norm == 0).all()
    monkeypatch.setattr(type(m), "encode", real)
    ok = sweep(
        VD,
        AttackConfig(
            optimizer="pgd", layers="1", points=3, restarts=1, steps=3, floor_draws=0, noise_draws=0, gallery_points=0
        ),
    )
    assert pd.DataFrame(strength.strength_checks(ok)).set_index("check").loc["no vanishing gradient"].passed


def test_a_one_step_white_box_member_lets_square_win_and_trips_that_flag(monkeypatch):
    weak = EnsembleSpec(
        "weak-v1",
        (Member("apgd-skl", "apgd", "skl", 0.001), Member("square-recon", "square", "recon", 0.999)),
        "a test ensemble",
    )
    monkeypatch.setitem(ENSEMBLES, "weak-v1", weak)
    cfg = AttackConfig(
        layers="1", optimizer="weak-v1", points=4, restarts=1, steps=60, floor_draws=0, noise_draws=0, gallery_points=0
    )
    df = sweep(VD, cfg)
    assert attack_rows(df).groupby("member").member_steps.first().to_dict() == {"apgd-skl": 1, "square-recon": 59}
    wins = strength.member_wins(df).set_index("member")
    row = pd.DataFrame(strength.strength_checks(df)).set_index("check").loc["gradient-free member rarely wins"]
    assert not row.passed and row.value == pytest.approx(wins.share["square-recon"]) and row.value > 0.05


def test_old_records_without_members_still_load_and_report():
    from robustvae.records import upgrade_attack_row

    old = {
        "unit": "u",
        "model": "m",
        "checkpoint_sha256": "",
        "dataset": "d",
        "k": 1,
        "objective": "skl",
        "optimizer": "pgd",
        "norm": "linf",
        "eps": 0.1,
        "steps": 3,
        "seed": 0,
        "temperature": 0.1,
        "kind": "attack",
        "point": 0,
        "test_index": 0,
        "label": 0,
        "restart": 0,
        "msssim": 0.9,
        "msssim_input": 0.99,
    }
    df = pd.DataFrame([upgrade_attack_row(old)])
    assert "member" not in df and strength.member_wins(df).empty and strength.iterations(df).empty
    assert math.isclose(strength.restarts(df).worst.iloc[0], 0.9)
