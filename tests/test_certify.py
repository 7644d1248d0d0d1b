"""Exact analysis of the quantised context (robustvae.certify), each piece against an independent reference.

References: enumeration of the box's vertices and scipy's linprog (L-inf ranges), SLSQP
(L2 ranges and minimum norms), random and PGD perturbations pushed through the real
float32 codec, exhaustive search over every joint level assignment (the attack), and
the DCT-VAE's own reconstruction (what a certificate promises).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

from robustvae.certify import (
    affine_context,
    certified_fraction,
    certified_radius,
    coefficient_ranges,
    optimal_context_attack,
)
from robustvae.config import DataConfig
from robustvae.protocol import NORMS
from robustvae.data import eval_images, load_dataset
from robustvae.models.context import DCTContext, DownsampleContext
from robustvae.models.distributions import level_index
from robustvae.registry import build_model, get_preset

CODECS = [DCTContext, DownsampleContext]


# --------------------------------------------------------------------------- references


def tiny_codec(cls, seed=0, size=4, c=2, bits=2):
    codec = cls(1, size, c, bits)
    codec.fit(torch.rand(64, 1, size, size, generator=torch.Generator().manual_seed(seed)))
    return codec


def linear_map(codec, x):
    """(v0 (K,), w (K, P)) of one image in float64, by autograd through the codec's own coefficients."""
    xx = x.double().reshape(1, *x.shape[-3:]).requires_grad_()
    v = (codec.coefficients(xx) / codec.scale.double()).flatten()
    w = torch.stack([torch.autograd.grad(v[k], xx, retain_graph=True)[0].flatten() for k in range(v.numel())])
    return v.detach().numpy(), w.numpy()


def levels_of(codec, x):
    """Level indices the real float32 codec gives images x (B, C, H, W)."""
    with torch.no_grad():
        return level_index(codec(x.float()).value, codec.levels)


def project(d, x, eps, norm):
    """Into the eps-ball, then into [0, 1] (clipping keeps the L2 ball: it shrinks every coordinate)."""
    if norm == "linf":
        d = d.clamp(-eps, eps)
    else:
        n = d.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *[1] * (d.dim() - 1))
        d = d * (eps / n).clamp(max=1)
    return (x + d).clamp(0, 1) - x


def random_in_ball(x, eps, norm, n, gen):
    if norm == "linf":
        d = (torch.rand((n, *x.shape[1:]), generator=gen, dtype=torch.float64) * 2 - 1) * eps
    else:
        d = torch.randn((n, *x.shape[1:]), generator=gen, dtype=torch.float64)
        radius = eps * torch.rand(n, 1, 1, 1, generator=gen, dtype=torch.float64)
        d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * radius
    return project(d, x.double(), eps, norm)


def pgd(fn, x, eps, norm, steps=60, starts=4, gen=None):
    """Projected gradient ascent of fn(x + d) (per batch row) from random starts; all iterates returned."""
    xs = x.double().expand(starts, *x.shape[1:])
    d = random_in_ball(x, eps, norm, starts, gen)
    seen = [d.clone()]
    for t in range(steps):
        d.requires_grad_()
        (g,) = torch.autograd.grad(fn(xs + d).sum(), d)
        lr = 2.5 * eps / steps * (1 + 3 * (t < steps // 3))
        if norm == "linf":
            step = g.sign() * lr
        else:
            step = g / g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1) * lr
        d = project(d.detach() + step, xs, eps, norm)
        seen.append(d.clone())
    return torch.cat(seen)


def in_budget(xa, x, eps, norm):
    dd = (xa.double() - x.double()).flatten(1)
    ok = dd.abs().amax(1) <= eps if norm == "linf" else dd.norm(dim=1) <= eps
    return bool(ok.all()) and bool((xa >= 0).all()) and bool((xa <= 1).all())


def decoded_sq(codec, y1, y0):
    """||decode(y1) - decode(y0)||^2 per image, by the real codec (float32)."""
    with torch.no_grad():
        return (codec.decode(y1) - codec.decode(y0)).flatten(1).pow(2).sum(1).double()


def level_values(levels, idx):
    n = levels - 1
    return (2 * idx.double() - n) / n


@pytest.fixture(scope="module")
def mnist():
    ds = load_dataset(DataConfig("mnist-offline"))
    torch.manual_seed(0)
    model = build_model(get_preset("dctvae-mnist-tiny").model).eval()
    model.fit_data(ds.train.images)
    return model, eval_images(ds, "test", True)[:24]


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize("cls", CODECS)
@pytest.mark.parametrize("eps", [0.03, 0.25])
def test_linf_ranges_equal_the_extremes_over_the_box_vertices(cls, eps):
    codec = tiny_codec(cls)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 4, 4, generator=gen)
    x[0, 0, 0] = 0.0  # pixels at the box's faces: one-sided moves
    x[0, 0, 1] = 1.0
    x[1] = (x[1] > 0.5).float()  # a binary image
    r = coefficient_ranges(codec, x, eps, "linf")
    for b in range(3):
        v0, w = linear_map(codec, x[b])
        xb = x[b].double().flatten().numpy()
        corners = np.array(list(itertools.product(*zip(np.maximum(-eps, -xb), np.minimum(eps, 1 - xb)))))
        vals = v0 + corners @ w.T  # a linear function's extremes over a box are at its vertices
        np.testing.assert_allclose(r.hi[b].flatten().numpy(), vals.max(0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(r.lo[b].flatten().numpy(), vals.min(0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(r.clean[b].flatten().numpy(), v0, atol=1e-12)


def test_linf_ranges_equal_linprog_on_a_real_digit(mnist):
    model, x = mnist
    eps = 0.05
    r = coefficient_ranges(model, x[:1], eps, "linf")  # the model is accepted in place of its codec
    v0, w = linear_map(model.codec, x[0])
    xb = x[0].double().flatten().numpy()
    bounds = list(zip(np.maximum(-eps, -xb), np.minimum(eps, 1 - xb)))
    for k in range(0, 36, 5):
        lo = linprog(w[k], bounds=bounds, method="highs").fun + v0[k]
        hi = -linprog(-w[k], bounds=bounds, method="highs").fun + v0[k]
        assert r.lo.flatten()[k].item() == pytest.approx(lo, abs=1e-9)
        assert r.hi.flatten()[k].item() == pytest.approx(hi, abs=1e-9)


@pytest.mark.parametrize("cls", CODECS)
@pytest.mark.parametrize("eps", [0.05, 0.4, 3.0])
def test_l2_ranges_equal_a_convex_solver(cls, eps):
    codec = tiny_codec(cls)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 4, 4, generator=gen)
    x[1] = (x[1] > 0.5).float()
    r = coefficient_ranges(codec, x, eps, "l2")
    for b in range(2):
        v0, w = linear_map(codec, x[b])
        xb = x[b].double().flatten().numpy()
        for k in range(4):
            for sgn, got in ((1, r.hi), (-1, r.lo)):
                res = minimize(
                    lambda d: -sgn * w[k] @ d,
                    np.zeros(16),
                    jac=lambda d: -sgn * w[k],
                    method="SLSQP",
                    bounds=list(zip(-xb, 1 - xb)),
                    constraints=[{"type": "ineq", "fun": lambda d: eps**2 - d @ d, "jac": lambda d: -2 * d}],
                    options={"ftol": 1e-15, "maxiter": 1000},
                )
                assert got[b].flatten()[k].item() == pytest.approx(v0[k] - sgn * res.fun, abs=1e-7)


@pytest.mark.parametrize("norm,eps", [("linf", 0.02), ("l2", 0.4)])
def test_random_and_pgd_perturbations_never_leave_the_ranges(mnist, norm, eps):
    model, x = mnist
    codec = model.codec
    x = x[:2]
    r = coefficient_ranges(codec, x, eps, norm)
    gen = torch.Generator().manual_seed(3)
    scale = codec.scale.double()
    for b in range(2):
        xb = x[b : b + 1]
        # every coefficient pushed both ways, two starts each, all in one batch (row r pushes coefficient k[r])
        k = torch.arange(36).repeat(4)
        sgn = torch.tensor([1.0, -1.0]).repeat_interleave(72)
        rows = torch.arange(k.numel())
        f = lambda z: sgn * (codec.coefficients(z) / scale).flatten(1)[rows, k]  # noqa: B023, E731
        ds = [random_in_ball(xb, eps, norm, 200, gen), pgd(f, xb, eps, norm, steps=30, starts=k.numel(), gen=gen)]
        xa = (xb.double() + torch.cat(ds)).float().clamp(0, 1)
        v = (codec.coefficients(xa.double()) / scale).flatten(1)
        lo, hi = r.lo[b].flatten(), r.hi[b].flatten()
        tol = 1e-6  # rounding the perturbed image to float32
        assert (v >= lo - tol).all() and (v <= hi + tol).all()
        # and tight: PGD on each coefficient reaches the computed extremes (30 L2 steps get within 2 %)
        reach_hi, reach_lo = v[200:].amax(0), v[200:].amin(0)
        rel = 1e-3 if norm == "linf" else 2e-2
        assert ((hi - reach_hi).abs() <= rel * (hi - lo) + 1e-5).all()
        assert ((reach_lo - lo).abs() <= rel * (hi - lo) + 1e-5).all()
        lv = levels_of(codec, xa).flatten(1)  # the real codec's levels: exactly inside the reachable set
        assert (lv >= r.reach_lo[b].flatten()).all() and (lv <= r.reach_hi[b].flatten()).all()
        # the certified coefficients never moved
        cert = r.certified[b].flatten()
        assert (lv[:, cert] == r.clean_level[b].flatten()[cert]).all()


def test_float32_margin_bounds_the_codec_rounding(gen):
    codec = DCTContext(1, 28, 6, 2)
    codec.fit(torch.rand(16, 1, 28, 28, generator=gen))
    x = torch.cat([torch.rand(64, 1, 28, 28, generator=gen), (torch.rand(64, 1, 28, 28, generator=gen) > 0.7).float()])
    ac = affine_context(codec)
    exact = ac.values(x.double().flatten(2))
    with torch.no_grad():
        f32 = (codec.coefficients(x) / codec.scale).flatten(2).double()
    err = (f32 - exact).abs()
    assert (err <= ac.margin[None]).all()
    assert err.max() > 0  # float32 does differ: the margin is not vacuous
    assert ac.margin.max() < 1e-3  # and it is small against a cell (2/3 wide)


def test_coefficients_on_cell_edges_are_never_certified():
    codec = DCTContext(1, 8, 2, 2)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(32, 1, 8, 8, generator=gen)
    with torch.no_grad():
        coef = codec.coefficients(x.double())[0, 0]
        # scales that put image 0's coefficients exactly on an interior edge (0) and near +-1/3 .. 2/3 edges
        target = torch.tensor([[2 / 3, 1e-9], [-2 / 3, 2 / 3 + 1e-8]], dtype=torch.float64)
        codec.scale.copy_((coef / target).abs().float())
    edges = torch.tensor([-2 / 3, 0, 2 / 3], dtype=torch.float64)
    r = coefficient_ranges(codec, x, 0.0, "linf")  # never raises: the float32 levels lie in the reachable sets
    assert ((r.clean[0, ..., None] - edges).abs().amin(-1) < 1e-6).all()  # all four on (or next to) an edge
    assert not r.certified[0].any()
    assert (certified_radius(codec, x[:1], "linf", per_coefficient=True)[0] == 0).all()
    assert certified_fraction(codec, x[:1], [0.0, 1e-3], "linf").tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- radius and fraction


@pytest.mark.parametrize("norm", NORMS)
def test_certified_radius_is_exact(mnist, norm):
    model, x = mnist
    codec = model.codec
    x = x[:12]
    rad = certified_radius(codec, x, norm)
    per = certified_radius(codec, x, norm, per_coefficient=True)
    assert torch.equal(rad, per.flatten(1).amin(1))
    pos = rad > 0
    assert pos.sum() >= 8
    for b in torch.nonzero(pos).flatten().tolist():
        below = coefficient_ranges(codec, x[b : b + 1], rad[b].item() * (1 - 1e-6), norm)
        above = coefficient_ranges(codec, x[b : b + 1], rad[b].item() * (1 + 1e-4), norm)
        assert below.point_certified.all() and not above.point_certified.any()
        # per coefficient too, for the five most fragile ones
        for k in per[b].flatten().argsort()[:5].tolist():
            rk = per[b].flatten()[k].item()
            if math.isfinite(rk) and rk > 0:
                assert coefficient_ranges(codec, x[b : b + 1], rk * (1 - 1e-6), norm).certified.flatten()[k]
                assert not coefficient_ranges(codec, x[b : b + 1], rk * (1 + 1e-4), norm).certified.flatten()[k]


@pytest.mark.parametrize("norm", NORMS)
def test_a_perturbation_just_past_the_radius_changes_the_level(mnist, norm):
    model, x = mnist
    codec = model.codec
    flipped = 0
    for b in range(8):
        xb = x[b : b + 1]
        per = certified_radius(codec, xb, norm, per_coefficient=True, margin=0.0).flatten()
        k = int(per.argmin())
        eps = per[k].item() * (1 + 1e-4)
        if eps == 0:
            continue
        v0, w = linear_map(codec, xb[0])
        xf = xb.double().flatten().numpy()
        clean = levels_of(codec, xb).flatten()[k].item()
        for sgn in (1, -1):  # the maximiser of +-v_k over ball and box, built here from its optimality conditions
            wd = sgn * w[k]
            if norm == "linf":
                d = np.clip(np.sign(wd) * eps, -xf, 1 - xf)
            else:
                lo_t, hi_t = 0.0, 1e6
                for _ in range(200):  # bisection on the multiplier: |clip(t w, box)| = eps
                    t = (lo_t + hi_t) / 2
                    lo_t, hi_t = (t, hi_t) if np.linalg.norm(np.clip(t * wd, -xf, 1 - xf)) < eps else (lo_t, t)
                d = np.clip(lo_t * wd, -xf, 1 - xf)
            xa = torch.from_numpy(xf + d).float().view_as(xb)
            assert in_budget(xa, xb, eps + (1e-7 if norm == "linf" else 2e-6), norm)  # float32 rounding
            if levels_of(codec, xa).flatten()[k].item() != clean:
                flipped += 1
                break
        else:
            pytest.fail(f"image {b}: no perturbation of size {eps} changes coefficient {k}")
    assert flipped >= 6


@pytest.mark.parametrize("norm", NORMS)
def test_certified_fraction_agrees_with_the_ranges(mnist, norm):
    model, x = mnist
    eps_list = [0.0, 1e-4, 5e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1]
    frac = certified_fraction(model, x, eps_list, norm)
    assert frac.shape == (len(eps_list),)
    assert (frac[1:] <= frac[:-1]).all()
    for e, f in zip(eps_list, frac.tolist()):
        assert f == pytest.approx(coefficient_ranges(model, x, e, norm).point_certified.double().mean().item())


# --------------------------------------------------------------------------- decoded change identity


@pytest.mark.parametrize(
    "cls,size,c,bits",
    [
        (DCTContext, 28, 6, 2),
        (DCTContext, 16, 5, 3),
        (DownsampleContext, 4, 2, 2),
        (DownsampleContext, 28, 6, 2),
    ],
)
def test_decoded_l2_is_a_weighted_sum_of_squared_level_steps(cls, size, c, bits, gen):
    codec = cls(2, size, c, bits)
    codec.fit(torch.rand(8, 2, size, size, generator=gen))
    wts = affine_context(codec).decoded_weights().view(2, c, c)
    if cls is DCTContext:  # orthonormal DCT: s^2 times the level spacing squared
        torch.testing.assert_close(wts, codec.scale.double() ** 2 * (2 / (2**bits - 1)) ** 2)
    i0 = torch.randint(0, 2**bits, (16, 2, c, c), generator=gen)
    i1 = torch.randint(0, 2**bits, (16, 2, c, c), generator=gen)
    want = decoded_sq(codec, level_values(2**bits, i1).float(), level_values(2**bits, i0).float())
    got = ((i1 - i0).double() ** 2 * wts).flatten(1).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the optimal attack


def exhaustive(codec, x, eps, norm, mu, objective):
    """Best objective over every joint level assignment, each checked for realisability with scipy."""
    v0, w = linear_map(codec, x[0])
    xf = x[0].double().flatten().numpy()
    n, K = codec.levels - 1, v0.size
    clean = levels_of(codec, x).flatten().numpy()
    # decoded change per level step: orthonormal DCT: s * spacing; pooling: s * spacing / 2 on each of (H/c)^2 pixels
    pixels = (x.shape[-1] // codec.size) ** 2 / 4 if isinstance(codec, DownsampleContext) else 1
    wts = codec.scale.double().flatten().numpy() ** 2 * (2 / n) ** 2 * pixels
    lo_box, hi_box = np.maximum(-eps, -xf), np.minimum(eps, 1 - xf)  # |d_p| <= eps holds in the L2 ball too
    box = list(zip(lo_box, hi_box))
    ball = [] if norm == "linf" else [{"type": "ineq", "fun": lambda d: eps**2 - d @ d, "jac": lambda d: -2 * d}]
    levels = []
    for k in range(K):  # each coefficient's own extremes first: an exact pruning of the joint search
        ext = []
        for sgn in (1, -1):
            r = minimize(
                lambda d: -sgn * w[k] @ d,
                np.zeros(xf.size),
                jac=lambda d: -sgn * w[k],
                method="SLSQP",  # noqa: B023
                bounds=box,
                constraints=ball,
                options={"ftol": 1e-15, "maxiter": 1000},
            )
            ext.append(v0[k] - sgn * r.fun)
        top, bottom = ext[0] + 1e-9, ext[1] - 1e-9
        levels.append(
            [
                j
                for j in range(n + 1)
                if (j == 0 or (2 * j - 1 - n) / n + mu[k] <= top) and (j == n or (2 * j + 1 - n) / n - mu[k] >= bottom)
            ]
        )
    combos = np.array(list(itertools.product(*levels)))
    steps = combos - clean
    vals = (steps**2 * wts).sum(1) if objective == "decoded_l2" else (steps != 0).sum(1).astype(float)
    undecided = 0
    for i in np.argsort(-vals, kind="stable"):  # best first: the first realisable assignment is the optimum
        js, val = combos[i], vals[i]
        A, bnd = [], []
        for k, j in enumerate(js):  # edge + mu <= v0 + w . d <= next edge - mu
            if j > 0:
                A.append(-w[k])
                bnd.append(v0[k] - ((2 * j - 1 - n) / n + mu[k]))
            if j < n:
                A.append(w[k])
                bnd.append((2 * j + 1 - n) / n - mu[k] - v0[k])
        A, bnd = np.array(A), np.array(bnd)
        lp = linprog(np.zeros(xf.size), A_ub=A, b_ub=bnd, bounds=box, method="highs")
        if lp.status != 0:
            continue
        if norm == "l2":
            res = minimize(
                lambda d: d @ d,
                lp.x,
                jac=lambda d: 2 * d,
                method="SLSQP",
                bounds=box,
                constraints=[{"type": "ineq", "fun": lambda d: bnd - A @ d, "jac": lambda d: -A}],
                options={"ftol": 1e-16, "maxiter": 1000},
            )
            norm_min = math.sqrt(res.fun)
            if abs(norm_min - eps) < 1e-6:
                undecided += 1
            if norm_min > eps:
                continue
        return val, undecided
    return 0.0, undecided


@pytest.mark.parametrize("cls", CODECS)
@pytest.mark.parametrize("norm,eps", [("linf", 0.06), ("linf", 0.2), ("l2", 0.15), ("l2", 0.5)])
@pytest.mark.parametrize("objective", ["decoded_l2", "count"])
def test_optimal_attack_equals_exhaustive_search(cls, norm, eps, objective):
    codec = tiny_codec(cls, seed=5)
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(2, 1, 4, 4, generator=gen)
    x[1] = (x[1] > 0.5).float()
    res = optimal_context_attack(codec, x, eps, norm, objective=objective)
    mu = (affine_context(codec).margin.flatten() + res.interior).numpy()
    assert res.proven_optimal.all(), res.status
    for b in range(2):
        want, undecided = exhaustive(codec, x[b : b + 1], eps, norm, mu, objective)
        assert undecided == 0
        got = res.decoded_l2[b].item() ** 2 if objective == "decoded_l2" else res.changed[b].item()
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
        assert res.bound[b].item() == pytest.approx(math.sqrt(want) if objective == "decoded_l2" else want, abs=1e-6)
    check_verified(codec, x, res)


@pytest.mark.parametrize("cls,seed", [(DCTContext, 0), (DownsampleContext, 2)])
def test_l2_cutting_plane_loop_equals_exhaustive_search(cls, seed):
    # 8 levels and a large ball: the first relaxed optima are not realisable, so the Benders cuts must work
    codec = tiny_codec(cls, seed=seed, bits=3)
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(seed + 10))
    x[1] = (x[1] > 0.5).float()
    res = optimal_context_attack(codec, x, 0.6, "l2")
    assert res.proven_optimal.all(), res.status
    assert res.rounds.max() >= 8
    mu = (affine_context(codec).margin.flatten() + res.interior).numpy()
    for b in range(2):
        want, undecided = exhaustive(codec, x[b : b + 1], 0.6, "l2", mu, "decoded_l2")
        assert undecided == 0
        assert res.decoded_l2[b].item() ** 2 == pytest.approx(want, rel=1e-6)
    check_verified(codec, x, res)


def check_verified(codec, x, res):
    """The returned images: in the box and the budget, with the claimed levels and change by the real codec."""
    assert in_budget(res.x_adv, x, res.eps, res.norm)
    torch.testing.assert_close(res.delta, res.x_adv.double() - x.float().double())
    assert torch.equal(levels_of(codec, res.x_adv), res.levels)
    assert torch.equal(levels_of(codec, x), res.clean_levels)
    n = codec.levels
    got = decoded_sq(codec, level_values(n, res.levels).float(), level_values(n, res.clean_levels).float())
    torch.testing.assert_close(res.decoded_l2**2, got, rtol=1e-5, atol=1e-6)
    assert torch.equal(res.changed, (res.levels != res.clean_levels).flatten(1).sum(1))


@pytest.mark.parametrize("norm,eps", [("linf", 0.01), ("l2", 0.2)])
def test_optimal_attack_on_real_digits_is_verified_and_beats_pgd(mnist, norm, eps):
    model, x = mnist
    codec = model.codec
    x = x[:3]
    res = optimal_context_attack(model, x, eps, norm, time_limit=30)
    assert res.proven_optimal.all(), res.status
    assert (res.changed > 0).all()
    check_verified(codec, x, res)
    count = optimal_context_attack(model, x, eps, norm, objective="count", time_limit=30)
    check_verified(codec, x, count)
    assert (count.changed >= res.changed).all() and count.proven_optimal.all()
    # a simpler attack: PGD on the pre-quantisation decoded change, every iterate scored after quantisation
    gen = torch.Generator().manual_seed(7)
    scale = codec.scale.double()
    for b in range(3):
        xb = x[b : b + 1]
        c0 = codec.coefficients(xb.double()) / scale
        f = lambda z: ((codec.coefficients(z) / scale - c0) * scale).flatten(1).pow(2).sum(1)  # noqa: B023, E731
        ds = pgd(f, xb, eps, norm, steps=40, starts=4, gen=gen)
        xa = (xb.double() + ds).float().clamp(0, 1)
        keep = torch.tensor([in_budget(xa[i : i + 1], xb, eps, norm) for i in range(xa.shape[0])])
        with torch.no_grad():
            y = codec(xa[keep]).value
            y0 = codec(xb).value.expand_as(y)
        pgd_best = decoded_sq(codec, y, y0).max().sqrt().item()
        assert res.decoded_l2[b].item() >= pgd_best - 1e-6


def test_attack_on_a_certified_point_changes_nothing(mnist):
    model, x = mnist
    rad = certified_radius(model, x[:4], "linf")
    b = int(rad.argmax())
    res = optimal_context_attack(model, x[b : b + 1], rad[b].item() * 0.5, "linf")
    assert res.changed.item() == 0 and res.proven_optimal.item() and res.bound.item() == 0
    assert torch.equal(res.x_adv, x[b : b + 1])


def test_time_limited_attack_still_returns_a_verified_attack(mnist):
    model, x = mnist
    res = optimal_context_attack(model, x[:1], 0.2, "linf", time_limit=0.5)
    check_verified(model.codec, x[:1], res)
    assert res.decoded_l2.item() <= res.bound.item() + 1e-9
    if not res.proven_optimal.item():
        assert res.solve_time.item() < 10


def test_bad_arguments_are_refused(mnist):
    model, x = mnist
    with pytest.raises(ValueError, match="norm"):
        coefficient_ranges(model, x[:1], 0.1, "l1")
    with pytest.raises(ValueError, match="eps"):
        certified_fraction(model, x[:1], [0.1, -1.0])
    with pytest.raises(ValueError, match="images"):
        certified_radius(model, x[:1, :, :27])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        certified_radius(model, x[:1] * 2)
    with pytest.raises(ValueError, match="objective"):
        optimal_context_attack(model, x[:1], 0.1, objective="psnr")
    with pytest.raises(TypeError):
        certified_radius(torch.nn.Linear(2, 2), x[:1])


# --------------------------------------------------------------------------- what a certificate promises


def test_a_certified_point_has_exactly_the_clean_k1_reconstruction(mnist):
    model, x = mnist
    rad = certified_radius(model, x, "linf")
    b = int(rad.argmax())
    xb, eps = x[b : b + 1], rad[b].item() * 0.9
    assert coefficient_ranges(model, xb, eps, "linf").point_certified.item()
    noise = model.make_noise(1, torch.Generator().manual_seed(8))
    with torch.no_grad():
        clean = model.reconstruct(xb, 1, 0.1, noise)
    gen = torch.Generator().manual_seed(9)
    ds = [random_in_ball(xb, eps, "linf", 40, gen)]
    model.codec.straight_through = True  # gradients through the quantiser, same forward values
    try:

        def f(z):
            shared = [n.expand(z.shape[0], *n.shape[1:]) for n in noise]
            return (model.reconstruct(z.float(), 1, 0.1, shared) - clean).pow(2).flatten(1).sum(1)

        ds.append(pgd(f, xb, eps, "linf", steps=10, starts=2, gen=gen))
    finally:
        model.codec.straight_through = False
    attacked = optimal_context_attack(model, xb, eps, "linf")
    xs = torch.cat([(xb.double() + ds[0]).float(), (xb.double() + ds[1]).float(), attacked.x_adv]).clamp(0, 1)
    with torch.no_grad():
        for i in range(xs.shape[0]):
            assert in_budget(xs[i : i + 1], xb, eps + 1e-7, "linf")  # float32 rounding
            assert torch.equal(model.reconstruct(xs[i : i + 1], 1, 0.1, noise), clean)
    # not vacuous: just past the radius the optimal attack changes the context and the reconstruction
    past = optimal_context_attack(model, xb, rad[b].item() * 1.05, "linf", objective="count")
    assert past.changed.item() >= 1
    with torch.no_grad():
        assert not torch.equal(model.reconstruct(past.x_adv, 1, 0.1, noise), clean)


# --------------------------------------------------------------------------- warm start and the real objective


def realisable(codec, x, eps, mu):
    """L-inf: every joint level assignment some image of the ball realises with each coefficient mu inside its cell
    (scipy's linprog per assignment), as (K,) level arrays."""
    v0, w = linear_map(codec, x[0])
    xf = x[0].double().flatten().numpy()
    n, K = codec.levels - 1, v0.size
    box = list(zip(np.maximum(-eps, -xf), np.minimum(eps, 1 - xf)))
    out = []
    for js in itertools.product(range(n + 1), repeat=K):
        A, bnd = [], []
        for k, j in enumerate(js):
            if j > 0:
                A.append(-w[k])
                bnd.append(v0[k] - ((2 * j - 1 - n) / n + mu[k]))
            if j < n:
                A.append(w[k])
                bnd.append((2 * j + 1 - n) / n - mu[k] - v0[k])
        if linprog(np.zeros(xf.size), A_ub=np.array(A), b_ub=np.array(bnd), bounds=box, method="highs").status == 0:
            out.append(np.array(js))
    return out


@pytest.mark.parametrize("cutoff", [False, True])
@pytest.mark.parametrize("cls", CODECS)
def test_a_warm_start_keeps_the_exhaustive_optimum(cls, cutoff):
    codec = tiny_codec(cls, seed=5)
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(2, 1, 4, 4, generator=gen)
    eps = 0.2
    mu = (affine_context(codec).margin.flatten() + 1e-5).numpy()
    cold = optimal_context_attack(codec, x, eps, "linf")
    for start in (
        (torch.rand(x.shape, generator=gen) * 2 - 1) * 0.5,  # outside the ball: projected into it
        cold.delta,
    ):  # already optimal: nothing strictly better exists
        res = optimal_context_attack(codec, x, eps, "linf", start=start, start_cutoff=cutoff)
        assert res.proven_optimal.all(), res.status
        check_verified(codec, x, res)
        for b in range(2):
            want, _ = exhaustive(codec, x[b : b + 1], eps, "linf", mu, "decoded_l2")
            assert res.decoded_l2[b].item() ** 2 == pytest.approx(want, rel=1e-6, abs=1e-9)
    # the optimal start is its own answer: the cutoff leaves the solver nothing better (infeasible, or an
    # assignment of the same value within HiGHS' row tolerance), which proves it in one program
    assert torch.equal(res.x_adv, cold.x_adv) and (res.rounds == 1).all()


def test_a_start_better_than_the_interior_optimum_is_kept(mnist):
    """A start whose levels the interior-restricted MILP cannot reach still counts: never weaker than the start."""
    model, x = mnist
    xb = x[:1]
    eps = 0.02
    gen = torch.Generator().manual_seed(3)
    starts = (torch.rand((16, *xb.shape[1:]), generator=gen) * 2 - 1) * eps
    lv = levels_of(model.codec, (xb + starts).clamp(0, 1))
    n = model.codec.levels
    val = decoded_sq(
        model.codec, level_values(n, lv).float(), level_values(n, levels_of(model.codec, xb)).float().expand_as(lv)
    )
    s = starts[int(val.argmax())][None]
    res = optimal_context_attack(model, xb, eps, "linf", time_limit=20, start=s, start_cutoff=True)
    check_verified(model.codec, xb, res)
    assert res.decoded_l2.item() ** 2 >= val.max().item() * (1 - 1e-5)


@pytest.mark.parametrize("cls", CODECS)
def test_score_chooses_the_exhaustive_best_of_every_realisable_assignment(cls):
    """With a pool larger than the realisable assignments, the scored answer is the exhaustive minimum of the score."""
    codec = tiny_codec(cls, seed=5, bits=1)  # 2^4 joint assignments: 8 (DCT) and 16 (pooling) realisable
    gen = torch.Generator().manual_seed(12)
    x = torch.rand(1, 1, 4, 4, generator=gen)
    eps = 0.2
    mu = (affine_context(codec).margin.flatten() + 1e-5).numpy()
    options = realisable(codec, x, eps, mu)
    assert 3 <= len(options) <= 40
    r = torch.randn(codec.size**2, generator=gen, dtype=torch.float64)
    f = lambda lv: (torch.as_tensor(lv, dtype=torch.float64).reshape(-1, r.numel()) * r).sum(1)  # noqa: E731
    calls = []

    def score(xa, b):
        calls.append((xa.shape[0], b))
        return f(levels_of(codec, xa).flatten(1))

    res = optimal_context_attack(codec, x, eps, "linf", score=score, pool=len(options) + 2)
    check_verified(codec, x, res)
    want = min(float(f(o)) for o in options)
    assert res.score.item() == pytest.approx(want, abs=1e-9)
    assert res.score.item() == pytest.approx(float(f(res.levels.flatten())), abs=1e-9)
    assert res.candidates.item() == len(options) and calls == [(len(options), 0)]
    # the objective's own optimum is still what bound / proven / value describe
    plain = optimal_context_attack(codec, x, eps, "linf")
    assert res.proven_optimal.item() and res.value.item() == pytest.approx(plain.decoded_l2.item(), rel=1e-9)
    assert res.bound.item() == pytest.approx(plain.bound.item(), rel=1e-9)
    assert res.score.item() <= float(f(plain.levels.flatten())) + 1e-12
    assert math.isnan(plain.score.item()) and plain.candidates.item() == 0


def test_bad_start_and_score_are_refused(mnist):
    model, x = mnist
    with pytest.raises(ValueError, match="shape"):
        optimal_context_attack(model, x[:1], 0.1, start=torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="finite"):
        optimal_context_attack(model, x[:1], 0.1, start=torch.full((1, 1, 28, 28), math.nan))
    with pytest.raises(ValueError, match="pool"):
        optimal_context_attack(model, x[:1], 0.1, pool=0)
    with pytest.raises(ValueError, match="score must return"):
        optimal_context_attack(model, x[:1], 0.01, time_limit=5, score=lambda xa, b: torch.zeros(xa.shape[0] + 1))


@pytest.mark.parametrize("cls", CODECS)
def test_without_any_solve_the_bound_is_still_a_valid_finite_bound(cls):
    """max_rounds=0: no program is solved; the bound (every coefficient at its best level) still covers the optimum."""
    codec = tiny_codec(cls, seed=5)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(13))
    mu = (affine_context(codec).margin.flatten() + 1e-5).numpy()
    res = optimal_context_attack(codec, x, 0.2, "linf", max_rounds=0)
    want, _ = exhaustive(codec, x, 0.2, "linf", mu, "decoded_l2")
    n = codec.levels - 1
    pixels = (x.shape[-1] // codec.size) ** 2 / 4 if cls is DownsampleContext else 1
    most = float((codec.scale.double() ** 2 * (2 / n) ** 2 * pixels).sum()) * n**2  # every coefficient n levels
    assert not res.proven_optimal.item() and res.changed.item() == 0
    assert want * (1 - 1e-9) <= res.bound.item() ** 2 <= most * (1 + 1e-9)
