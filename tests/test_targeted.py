"""Targeted attacks (``--objective target`` / ``target_recon``, the ensemble auto-target-v1): closed-form optima, the
targets a sweep draws, the records, resume and shards, the ensemble's per-point best and the report's section.

The optima come from independent solvers: on a linear-Gaussian encoder (mean A x, fixed diagonal covariance S^2) the
symmetric KL to the target's posterior is ||S^-1 A (x + d - t)||^2, so the optimal targeted perturbation is a
least-squares problem over the threat model's set: under L2 a trust-region problem (solved exactly from the SVD with
scipy's root finder), under L-inf with the box a bounded least-squares problem (scipy's BVLS). The gain towards the
target on a trained model is tests/test_attacks.py's ``test_targeted_attack_moves_the_reconstruction_towards_the_target``
(it reuses that file's trained model).
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import scipy.optimize as so
import torch
from torch import nn

import robustvae
from robustvae.attacks import ENSEMBLES, OBJECTIVES, LatentAPGD, ensemble_plan, ensemble_version, make_attack
from robustvae.attacks.objectives import target_levels_distance
from robustvae.attacks.registry import AUTO_TARGETED_VERSION, AUTO_VERSION
from robustvae.cli import main
from robustvae.config import AttackConfig
from robustvae.errors import RobustVAEError
from robustvae.experiments import attack as engine
from robustvae.metrics import ms_ssim
from robustvae.models.contract import LayerInfo
from robustvae.models.distributions import DiagGaussian, PointMass, snap_to_levels
from robustvae.records import TARGETED, UNTARGETED, read_attack_records, selection
from robustvae.registry import build_model, get_preset
from robustvae.reporting import targeted as report_targeted

SHAPE = (1, 4, 4)  # 16 pixels
N = 4  # images per batch


class LinearGaussian(nn.Module):
    """One latent layer q(z | x) = N(A x, diag(s^2)) with m > n latents (so A has full column rank and the optimal
    perturbation is unique), or, ``context``, a quantised layer whose coefficients before quantisation are A x."""

    num_layers = 1

    def __init__(self, m: int = 24, seed: int = 0, context: bool = False, levels: int = 9):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = torch.Size(SHAPE).numel()
        self.A = nn.Parameter(torch.randn(m, n, generator=g) / n**0.5, requires_grad=False)
        self.logvar = nn.Parameter(torch.log(torch.rand(m, generator=g) * 0.5 + 0.25), requires_grad=False)
        self.context, self.levels = context, levels
        self.layers = [LayerInfo(1, 1, (m, 1, 1), "context", levels) if context else LayerInfo(1, 1, (m, 1, 1))]

    def encode(self, x, k=None):
        u = (x.flatten(1) @ self.A.T)[:, :, None, None]
        if self.context:
            return [PointMass(snap_to_levels(u, self.levels), u)]
        return [DiagGaussian(u, self.logvar.view(1, -1, 1, 1).expand_as(u))]

    def least_squares(self, x: torch.Tensor, t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, b) with the objective's value at x + d equal to -||B d - b||^2 (float64)."""
        A = self.A.double().numpy()
        xf = x.flatten().double().numpy()
        if self.context:  # towards the target's quantised levels
            levels = snap_to_levels(torch.from_numpy(A @ t.flatten().double().numpy()), self.levels).numpy()
            return A, levels - A @ xf
        B = A / np.exp(0.5 * self.logvar.double().numpy())[:, None]
        return B, B @ (t.flatten().double().numpy() - xf)


def optimum_l2(B: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """argmin ||B d - b|| over ||d||_2 <= eps (B of full column rank, the unconstrained optimum outside the ball):
    d(lam) = (B'B + lam I)^-1 B'b with ||d(lam)|| = eps, lam > 0 found by Brent's method on the SVD."""
    U, S, Vt = np.linalg.svd(B, full_matrices=False)
    c = U.T @ b

    def norm(lam):
        return np.linalg.norm(S * c / (S**2 + lam))

    assert norm(0.0) > eps, "the target is within reach: pick a farther one"
    lam = so.brentq(lambda v: norm(v) - eps, 0.0, 1e8, xtol=1e-15)
    return Vt.T @ (S * c / (S**2 + lam))


def optimum_linf(B: np.ndarray, b: np.ndarray, x: torch.Tensor, eps: float) -> np.ndarray:
    """argmin ||B d - b|| over |d| <= eps and 0 <= x + d <= 1: bounded least squares (BVLS, exact active set)."""
    xf = x.flatten().double().numpy()
    return so.lsq_linear(B, b, bounds=(np.maximum(-eps, -xf), np.minimum(eps, 1 - xf)), method="bvls", tol=1e-15).x


def _problem(seed: int, norm: str, context: bool = False):
    """A model, images and far targets; under L-inf a third of the pixels start on the box's edges."""
    model = LinearGaussian(seed=seed, context=context)
    g = torch.Generator().manual_seed(seed + 100)
    x = 0.2 + 0.6 * torch.rand(N, *SHAPE, generator=g)  # L2 eps <= 0.2: the box is inactive
    if norm == "linf":
        x.view(N, -1)[:, ::6] = 0.0
        x.view(N, -1)[:, 1::6] = 1.0
    t = torch.rand(N, *SHAPE, generator=g)
    return model, x, t


def _check_optimum(attack, model, x, t, adv, eps, norm, rel_gap: float):
    """The attack's objective is within ``rel_gap`` (relative) of the solver's optimum, and its perturbation is as
    close to the unique optimum d* as the gap allows: for f(d) = ||B d - b||^2 convex on a convex set,
    f(d) - f(d*) >= ||B (d - d*)||^2 >= sigma_min(B)^2 ||d - d*||^2 (d* optimal). f is evaluated at the float32
    difference (x + d) - x, which carries up to 6e-8 per pixel (one float32 rounding of values <= 1), so f is
    known to |grad f| * 16 * 6e-8 + f's own float64 rounding: 1e-6 f* covers it here with room (|grad f| <= 2 sqrt(f*)
    * sigma_max, both O(1)), and enters the bound as slack."""
    for i in range(N):
        B, b = model.least_squares(x[i], t[i])
        d_star = optimum_l2(B, b, eps) if norm == "l2" else optimum_linf(B, b, x[i], eps)
        f_star = float(np.sum((B @ d_star - b) ** 2))
        d = (adv[i] - x[i]).flatten().double().numpy()
        f = float(np.sum((B @ d - b) ** 2))
        assert -float(attack.best_loss[i]) == pytest.approx(f, rel=1e-4)  # the attack scores what the solver scores
        assert f <= f_star * (1 + rel_gap), (i, f, f_star)
        assert f >= f_star * (1 - 1e-5), (i, f, f_star)  # nothing beats the optimum (to float32 rounding)
        sigma_min = np.linalg.svd(B, compute_uv=False).min()
        bound = np.sqrt(max(f - f_star, 0.0) + 1e-6 * f_star) / sigma_min
        assert np.linalg.norm(d - d_star) <= bound, (i, np.linalg.norm(d - d_star), bound)


# --------------------------------------------------------------------------- closed-form optima


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("optimizer, steps", [("apgd", 100), ("sgd", 100)])
def test_targeted_attack_reaches_the_least_squares_optimum(norm, optimizer, steps):
    """APGD and the authors' SGD (100 steps) come within 1e-4 (relative) of the exact optimum, and so close to the
    unique optimal perturbation; seeds fixed, so the tolerance is a statement about these runs, not a probability."""
    eps = 0.15 if norm == "l2" else 0.1
    model, x, t = _problem(1, norm)
    attack = make_attack(
        model, 1, AttackConfig(eps=eps, norm=norm, steps=steps, objective="target", optimizer=optimizer)
    )
    adv = attack(x, target=t, seeds=list(range(N)))
    _check_optimum(attack, model, x, t, adv, eps, norm, rel_gap=1e-4)


def test_pgd_reaches_the_linf_optimum_and_apgd_is_never_weaker_than_pgd():
    """PGD's sign steps reach the L-inf optimum within 1e-4; under L2 its fixed steps (2.5 eps / steps, a path of
    2.5 eps in all) stop short (within 2 %), and APGD, the ensemble's member, does at least as well per image at
    the same 100 steps (to 1e-6 relative: float32 rounding of the objective)."""
    model, x, t = _problem(2, "linf")
    pgd = make_attack(model, 1, AttackConfig(eps=0.1, norm="linf", steps=100, objective="target", optimizer="pgd"))
    _check_optimum(pgd, model, x, t, pgd(x, target=t, seeds=list(range(N))), 0.1, "linf", rel_gap=1e-4)
    model, x, t = _problem(3, "l2")
    for norm, eps in (("l2", 0.15), ("linf", 0.1)):
        cfg = AttackConfig(optimizer="pgd", eps=eps, norm=norm, steps=100, objective="target")
        pgd, apgd = make_attack(model, 1, cfg), make_attack(model, 1, dataclasses.replace(cfg, optimizer="apgd"))
        adv = pgd(x, target=t, seeds=list(range(N)))
        apgd(x, target=t, seeds=list(range(N)))
        assert (apgd.best_loss >= pgd.best_loss - 1e-6 * pgd.best_loss.abs()).all(), (apgd.best_loss, pgd.best_loss)
        if norm == "l2":
            _check_optimum(pgd, model, x, t, adv, eps, norm, rel_gap=0.02)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_a_context_layer_is_pulled_onto_the_targets_levels_optimally(norm):
    """A quantised layer whose coefficients are A x: ``target`` minimises ||A (x + d) - levels(A t)||^2, the distance
    to the target's quantised levels, a least-squares problem with the same exact solutions."""
    eps = 0.15 if norm == "l2" else 0.1
    model, x, t = _problem(4, norm, context=True)
    attack = LatentAPGD(model, 1, eps=eps, norm=norm, steps=100, objective="target")
    adv = attack(x, target=t, seeds=list(range(N)))
    _check_optimum(attack, model, x, t, adv, eps, norm, rel_gap=1e-4)


def test_the_context_comparison_is_the_distance_to_the_reference_levels(gen):
    u, u_t = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)
    q, ref = PointMass(snap_to_levels(u, 5), u), PointMass(snap_to_levels(u_t, 5), u_t)
    want = ((u - snap_to_levels(u_t, 5)) ** 2).flatten(1).sum(1)  # not to the target's coefficients u_t
    torch.testing.assert_close(target_levels_distance(q, ref), want)
    # straight-through: the quantised values (0 when q sits on the target's levels), the coefficients' gradient
    on = PointMass(ref.mean, ref.mean + 0.01)
    assert (target_levels_distance(on, ref, straight_through=True) == 0).all()


class Identity(nn.Module):
    """The reconstruction is the image itself: ``target_recon`` is maximal (MS-SSIM 1) exactly at x + d = t."""

    num_layers = 1

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # torchattacks reads the device from the parameters

    def reconstruct(self, x, k=None, temperature=0.1, noise=None, posterior_sample=False):
        return x

    def make_noise(self, batch, generator=None):
        return [torch.zeros(batch, 1)]


def test_target_recon_reaches_a_target_within_the_ball(gen):
    """With every target within the L-inf ball, the optimum is x + d = t (MS-SSIM 1, L2 distance 0). In 100 steps
    APGD on the L2 form reaches t to 1e-3 per pixel, and on the MS-SSIM form (flat near 1) MS-SSIM 0.995, from
    starts below 0.93."""
    x = torch.rand(N, 1, 16, 16, generator=gen) * 0.6 + 0.2
    t = x + 0.1 * torch.randn(x.shape, generator=gen).sign()  # a vertex of the ball (inside [0, 1])
    noise = Identity().make_noise(N)
    assert (ms_ssim(x, t) < 0.93).all()
    attack = LatentAPGD(Identity(), 1, eps=0.1, norm="linf", steps=100, objective="target_recon")
    adv = attack(x, target=t, seeds=list(range(N)), noise=noise)
    assert (ms_ssim(adv, t) > 0.995).all(), ms_ssim(adv, t)
    torch.testing.assert_close(attack.best_loss.float(), -(1 - ms_ssim(adv, t)))  # minus (1 - MS-SSIM to the target)
    l2 = LatentAPGD(Identity(), 1, eps=0.1, norm="linf", steps=100, objective="target_recon_l2")
    adv = l2(x, target=t, seeds=list(range(N)), noise=noise)
    assert (adv - t).abs().max() < 1e-3
    torch.testing.assert_close(l2.best_loss.float(), -(adv - t).pow(2).flatten(1).sum(1))


def test_a_targeted_attack_needs_targets_of_the_images_shape(gen):
    model = LinearGaussian()
    x = torch.rand(2, *SHAPE, generator=gen)
    attack = LatentAPGD(model, 1, steps=2, objective="target")
    with pytest.raises(ValueError, match="needs target images"):
        attack(x)
    with pytest.raises(ValueError, match="one target per image"):
        attack(x, target=x[:1])
    with pytest.raises(ValueError, match="only it takes them"):
        LatentAPGD(model, 1, steps=2)(x, target=x)


# --------------------------------------------------------------------------- the selection rule


def test_the_strongest_row_is_the_lowest_msssim_or_the_highest_msssim_target(gen):
    """Against brute force over random rows with ties and NaN: NaN never wins, ties go to the first row."""
    n = 60
    frame = pd.DataFrame(
        {
            "point": torch.randint(0, 7, (n,), generator=gen).tolist(),
            "msssim": (torch.randint(0, 5, (n,), generator=gen) / 4).tolist(),
            "msssim_target": (torch.randint(0, 5, (n,), generator=gen) / 4).tolist(),
        }
    )
    frame.loc[frame.index[::9], ["msssim", "msssim_target"]] = np.nan
    for sel, better in ((UNTARGETED, lambda a, b: a < b), (TARGETED, lambda a, b: a > b)):
        got = sel.strongest(frame, ["point"])
        for p, g in frame.groupby("point"):
            best = None
            for i, v in g[sel.column].items():
                if not np.isnan(v) and (best is None or better(v, frame.at[best, sel.column])):
                    best = i
            assert got[p] == (best if best is not None else g.index[0]), (sel, p)
    assert selection(True) is TARGETED and selection(False) is UNTARGETED


# --------------------------------------------------------------------------- the registry and the config


def test_auto_with_a_targeted_objective_means_the_targeted_ensemble(capsys):
    assert ensemble_version("auto", "target") == AUTO_TARGETED_VERSION == "auto-target-v1"
    assert ensemble_version("auto", "target_recon") == AUTO_TARGETED_VERSION
    assert ensemble_version("auto", "skl") == ensemble_version("auto") == AUTO_VERSION
    spec = ENSEMBLES[AUTO_TARGETED_VERSION]
    assert spec.targeted and all(OBJECTIVES[m.objective].needs_target for m in spec.members)
    assert not any(OBJECTIVES[m.objective].needs_target for m in ENSEMBLES[AUTO_VERSION].members)
    assert AttackConfig(optimizer="auto", objective="target").objective == "target"
    for kw, msg in (
        (dict(optimizer="auto-v1", objective="target"), "auto-v1 is untargeted"),
        (dict(optimizer="auto-target-v1"), "targeted ensemble"),
        (dict(optimizer="auto", objective="supervised"), "use objective target"),
    ):
        with pytest.raises(RobustVAEError, match=msg):
            AttackConfig(**kw)
    assert main(["attack", "x", "--attack", "auto-v1", "--objective", "target", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "auto-v1 is untargeted" in err and "Traceback" not in err


# --------------------------------------------------------------------------- sweeps


@lru_cache(maxsize=None)
def scrambled(preset: str = "dctvae-mnist-tiny"):
    """An untrained tiny model with weights scrambled (so that its reconstruction depends on its input)."""
    torch.manual_seed(0)
    m = build_model(get_preset(preset).model)
    m.fit_data((torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5).float())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return m.eval()


@pytest.fixture(autouse=True)
def _no_layer_diagnostics(monkeypatch):
    """run.json's per-layer diagnostics are not under test here, and cost more than these small sweeps."""
    monkeypatch.setattr(engine, "layer_diagnostics", lambda *a, **kw: [])


SMALL = dict(points=3, restarts=2, steps=4, floor_draws=1, noise_draws=1, gallery_points=1)


def sweep(cfg: AttackConfig, out=None, **kw) -> pd.DataFrame:
    return robustvae.attack([scrambled()], cfg, out, data="synthetic", device="cpu", **kw).records


def _selection_points(cfg: AttackConfig):
    from robustvae.experiments.models import load_models

    (lm,) = load_models([scrambled()], torch.device("cpu"), "synthetic")
    return engine.select_points(lm, cfg, None)


def test_targets_have_another_label_follow_the_seed_and_do_not_depend_on_the_unit():
    cfg = AttackConfig(optimizer="pgd", objective="target", points=12)
    points = _selection_points(cfg)
    pts = list(range(cfg.points))
    targets = engine.choose_targets(points, pts, cfg)
    assert all(points.labels[t] != points.labels[p] for p, t in zip(pts, targets))
    assert engine.choose_targets(points, pts, cfg) == targets  # deterministic
    assert [t for a in range(0, 12, 5) for t in engine.choose_targets(points, pts[a : a + 5], cfg)] == targets
    other = engine.choose_targets(points, pts, dataclasses.replace(cfg, seed=1))
    assert other != targets  # another seed, other targets (12 draws from > 100 candidates each)
    legacy = engine.choose_targets(points, pts, dataclasses.replace(cfg, objective="supervised"))
    assert legacy == [(p + 1) % 12 for p in pts]  # the earlier rule, kept for its runs
    one_label = dataclasses.replace(points, labels=torch.zeros_like(points.labels))
    with pytest.raises(RobustVAEError, match="label other than 0"):
        engine.choose_targets(one_label, pts, cfg)


def test_records_carry_the_target_and_the_scores_against_it(tmp_path):
    cfg = AttackConfig(layers="1,2", objective="target", optimizer="pgd", **SMALL)
    res = robustvae.attack([scrambled()], cfg, tmp_path / "r", data="synthetic", device="cpu")
    df = res.records
    att = df[df.kind == "attack"]
    pd.testing.assert_frame_equal(res.targeted, report_targeted.targeted_table(df))  # what the CLI prints
    assert list(res.targeted.k) == [1, 2]
    assert att.target_point.notna().all() and df[df.kind != "attack"].target_point.isna().all()
    points = _selection_points(cfg)
    for _, r in att.iterrows():
        t = int(r.target_point)
        assert int(points.labels[t]) != r.label and int(points.indices[t]) == r.target_test_index
    # the same target at every k and restart of a point
    assert (att.groupby("point").target_point.nunique() == 1).all()
    # recomputed independently: MS-SSIM of the target's reconstruction against the clean and the attacked ones
    model, noise = (
        scrambled(),
        engine.prior_noise(scrambled(), [engine.derive_seed(cfg.seed, "prior", p) for p in range(3)]),
    )
    for k in (1, 2):
        rows = att[att.k == k].sort_values(["point", "restart"])
        tgt = points.images[rows.target_point.astype(int).tolist()]
        nz = [n.repeat_interleave(cfg.restarts, 0) for n in noise]
        x = points.images[rows.point.tolist()]
        with torch.no_grad():
            before = ms_ssim(model.reconstruct(x, k, 0.1, nz), model.reconstruct(tgt, k, 0.1, nz))
        np.testing.assert_allclose(rows.msssim_target_before, before.numpy(), rtol=1e-5, atol=1e-6)
    rows = read_attack_records(tmp_path / "r" / "records.jsonl")
    assert all(("msssim_target" in r) == (r["kind"] == "attack") for r in rows)


def test_targeted_resume_and_shards_are_exact(tmp_path, monkeypatch):
    cfg = AttackConfig(layers="1", optimizer="auto", objective="target", **SMALL)
    whole = sweep(cfg, tmp_path / "whole")
    key = ["kind", "k", "point", "restart", "member"]
    cols = [*key, "msssim", "target_point", "msssim_target", "msssim_target_before"]

    def same(a, b):
        a, b = (d[cols].sort_values(key).reset_index(drop=True) for d in (a, b))
        pd.testing.assert_frame_equal(a, b, rtol=1e-5, atol=1e-6)

    real, calls = engine.run_unit, {"n": 0}

    def dies(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    killed = dataclasses.replace(cfg, max_batch_mib=1)  # one point per unit
    monkeypatch.setattr(engine, "run_unit", dies)
    with pytest.raises(KeyboardInterrupt):
        sweep(killed, tmp_path / "killed")
    monkeypatch.setattr(engine, "run_unit", real)
    resumed = sweep(killed, tmp_path / "killed")
    assert resumed.unit.nunique() == 3 and whole.unit.nunique() == 1
    same(whole, resumed)
    s1 = sweep(killed, tmp_path / "shards", shard=(1, 2))
    s2 = sweep(killed, tmp_path / "shards", shard=(2, 2))
    same(pd.concat([s1, s2]), resumed)
    info = json.loads((tmp_path / "whole" / "run.json").read_text())["ensemble"]
    assert info["version"] == AUTO_TARGETED_VERSION
    assert set(info["plans"]["dctvae|k=1"]["members"]) == {m.name for m in ENSEMBLES[AUTO_TARGETED_VERSION].members}


@pytest.mark.slow
def test_the_targeted_ensembles_best_is_the_highest_msssim_target_in_the_report_and_the_gallery(tmp_path):
    """End to end (two sweeps and a report, ~25 s): the fast check of the table is
    ``test_the_targeted_table_matches_brute_force_on_hand_made_records``."""
    cfg = AttackConfig(layers="1", optimizer="auto", objective="target", eps_sweep="0.05,0.1", **SMALL)
    df = sweep(cfg, tmp_path / "t")
    att = df[df.kind == "attack"]
    plan = ensemble_plan(scrambled(), 1, AUTO_TARGETED_VERSION, cfg.steps)
    assert set(att.member) == {m.name for m, _ in plan} and sum(n for _, n in plan) == cfg.steps
    untargeted = sweep(dataclasses.replace(cfg, objective="skl"), tmp_path / "u")
    summary = robustvae.report([tmp_path / "t", tmp_path / "u"], tmp_path / "rep").summary
    table = pd.DataFrame(summary["targeted"]["table"]).set_index("eps")
    for eps, g in att.groupby("eps"):
        best = g.groupby("point").msssim_target.max()  # brute force: over members and restarts
        rows = g.loc[g.groupby("point").msssim_target.idxmax()]
        assert table.loc[eps, "msssim_target"] == pytest.approx(best.mean(), rel=1e-12)
        assert table.loc[eps, "before"] == pytest.approx(g.groupby("point").msssim_target_before.first().mean())
        assert table.loc[eps, "success"] == pytest.approx((rows.msssim_target > rows.msssim).mean())
        assert table.loc[eps, "optimizer"] == AUTO_TARGETED_VERSION and table.loc[eps, "points"] == 3
        u = untargeted[(untargeted.kind == "attack") & (untargeted.eps == eps)]
        assert table.loc[eps, "untargeted_worst"] == pytest.approx(u.groupby("point").msssim.min().mean())
    # the main table reads the untargeted run; the gallery of the targeted run shows its strongest rows
    assert {r["eps"] for r in summary["table"]} == {0.05, 0.1} and len(summary["table"]) == 2
    galleries = [np.load(p) for p in sorted((tmp_path / "t" / "gallery").glob("*.npz"))]
    assert len(galleries) == 2
    for g in galleries:  # one point per unit (gallery_points 1): the one closest to its target, its strongest row
        rows = att[att.eps == (0.1 if "eps=0.1|" in str(g["unit"]) else 0.05)]
        best = rows.groupby("point").msssim_target.max()
        assert int(g["points"][0]) == int(best.idxmax())
        assert float(g["msssim_target"][0]) == pytest.approx(best.max(), rel=1e-6)
        assert g["rec_target"].shape == g["rec_adv"].shape
    assert "targeted.png" in summary["files"] and len(pd.read_csv(tmp_path / "rep" / "targeted.csv")) == 2


def _hand_made(gen) -> pd.DataFrame:
    """Attack rows of a targeted ensemble (2 members x 2 restarts x 5 points, two k) and an untargeted run's."""
    rows = []
    for k in (1, 2):
        for p in range(5):
            before = float(torch.rand(1, generator=gen))
            for member in ("a", "b"):
                for r in range(2):
                    rows.append(
                        {
                            "dataset": "d",
                            "norm": "linf",
                            "eps": 0.1,
                            "recon": "default",
                            "model": "m",
                            "k": k,
                            "optimizer": "auto",
                            "objective": "target",
                            "kind": "attack",
                            "point": p,
                            "restart": r,
                            "member": member,
                            "target_point": 9,
                            "run": "t",
                            "msssim": float(torch.rand(1, generator=gen)),
                            "msssim_target": float(torch.randint(0, 4, (1,), generator=gen)) / 4,
                            "msssim_target_before": before,
                        }
                    )
    targeted = pd.DataFrame(rows)
    untargeted = targeted.assign(
        run="u",
        objective="skl",
        target_point=np.nan,
        msssim_target=np.nan,
        msssim_target_before=np.nan,
        msssim=targeted.msssim / 2,
    )
    return targeted, untargeted


def test_the_targeted_table_matches_brute_force_on_hand_made_records(gen):
    targeted, untargeted = _hand_made(gen)
    targeted.loc[3, "msssim_target"] = np.nan  # a non-finite score never wins
    table = report_targeted.targeted_table(targeted, untargeted, {"t": "auto-target-v1"}).set_index("k")
    for k in (1, 2):
        g = targeted[targeted.k == k]
        best_rows = []
        for p in range(5):  # the strongest row by hand: the highest msssim_target, the first of ties
            rows = g[g.point == p]
            top = max(v for v in rows.msssim_target if not np.isnan(v))
            best_rows.append(rows[rows.msssim_target == top].iloc[0])
        best = pd.DataFrame(best_rows)
        row = table.loc[k]
        assert row.optimizer == "auto-target-v1" and row.points == 5
        assert row.msssim_target == pytest.approx(best.msssim_target.mean())
        assert row.before == pytest.approx(best.msssim_target_before.mean())
        assert row.gain == pytest.approx((best.msssim_target - best.msssim_target_before).mean())
        assert row.success == pytest.approx((best.msssim_target > best.msssim).mean())
        assert row.msssim == pytest.approx(best.msssim.mean())
        u = untargeted[untargeted.k == k]
        assert row.untargeted_worst == pytest.approx(u.groupby("point").msssim.min().mean())
    assert report_targeted.targeted_table(targeted).untargeted_worst.isna().all()
    old = targeted.drop(columns=["msssim_target", "msssim_target_before"])  # written before the scores existed
    assert report_targeted.targeted_table(old).empty and report_targeted.unscored_rows(old) == len(old)


def test_old_targeted_records_load_and_are_counted_as_unscored():
    """A supervised run written before msssim_target existed (tests/golden, robustvae 88ee658) still loads; its
    rows are targeted (they name a target_point) and counted as unscored, not dropped silently."""
    from pathlib import Path

    from robustvae.reporting.load import load_runs

    runs = load_runs([Path(__file__).parent / "golden" / "runs" / "attack-sgd-supervised"])
    att = runs.targeted[runs.targeted.kind == "attack"]
    assert len(att) > 0 and att.msssim_target.isna().all() and runs.records is not None and len(runs.records)
    assert report_targeted.targeted_table(runs.targeted).empty
    assert report_targeted.unscored_rows(runs.targeted) == len(att)


@pytest.fixture(scope="module")
def trained_dct(tmp_path_factory):
    """A tiny DCT-VAE trained for 200 steps on offline MNIST (about 2 minutes on one thread)."""
    from conftest import tiny_config

    from robustvae.training import Trainer

    out = tmp_path_factory.mktemp("trained-dct") / "run"
    cfg = tiny_config(
        "dctvae-mnist-tiny",
        data="mnist-offline",
        steps=200,
        batch_size=32,
        lr=3e-3,
        checkpoint_every=1000,
        val_batches=2,
    )
    Trainer.prepare_dir(out, resume=False, force=False)
    Trainer(cfg, out, torch.device("cpu"), quiet=True).fit()
    return out


@pytest.mark.slow
def test_the_targeted_ensemble_moves_a_trained_dctvae_towards_its_targets(trained_dct):
    """Through the quantised context (k = 1) and one Gaussian layer more (k = 2), at eps 0.1 (fixed seed): the
    strongest member's reconstruction is closer to the target's than the clean one on at least 6 of 8 points (a
    point whose clean MS-SSIM to its target is clipped at 0 may stay there), and on average by more than 0.05."""
    cfg = AttackConfig(
        layers="1,2",
        points=8,
        restarts=1,
        steps=40,
        objective="target",
        optimizer="auto",
        floor_draws=0,
        noise_draws=0,
        unrelated_draws=0,
        gallery_points=0,
    )
    att = robustvae.attack([str(trained_dct)], cfg, None, device="cpu").records.query("kind == 'attack'")
    for k, g in att.groupby("k"):
        best = g.loc[TARGETED.strongest(g, ["point"]).to_numpy()]
        gain = best.msssim_target - best.msssim_target_before
        assert (gain > 1e-4).sum() >= 6 and gain.mean() > 0.05, (k, gain.tolist())
