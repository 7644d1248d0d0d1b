"""Diffusion prior: closed forms against Monte Carlo, the discretised Gaussian, the bound with L_T, sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from robustvae.models.diffusion import DiffusionPrior, UNet
from robustvae.models.distributions import DiscretizedGaussian, log_normal_interval, snap_to_levels


def _prior(
    steps: int = 4, levels: int = 4, shape=(1, 3, 3), seed: int = 0, perturb: bool = True, **kw
) -> DiffusionPrior:
    torch.manual_seed(seed)
    p = DiffusionPrior(
        shape,
        levels,
        steps,
        kw.pop("beta_start", 0.1),
        kw.pop("beta_end", 0.4),
        channels=kw.pop("channels", 8),
        scales=kw.pop("scales", 1),
        res_blocks=kw.pop("res_blocks", 1),
    )
    if perturb:  # leave the zero-initialised output so the network's predictions vary
        with torch.no_grad():
            for q in p.parameters():
                q.add_(torch.randn_like(q) * 0.1)
    return p


def _contexts(n: int, shape, levels: int, gen: torch.Generator) -> torch.Tensor:
    return snap_to_levels(torch.rand(n, *shape, generator=gen) * 2 - 1, levels)


@pytest.mark.parametrize("levels", [2, 4, 32])
def test_discretised_gaussian_sums_to_one_over_the_levels_and_matches_scipy(levels, gen):
    n = levels - 1
    values = (2 * torch.arange(levels, dtype=torch.float64) - n) / n
    mean = torch.cat([torch.randn(50, generator=gen, dtype=torch.float64) * 2, torch.tensor([8.0, -8.0, 0.0])])
    logvar = torch.cat([torch.randn(50, generator=gen, dtype=torch.float64) * 3, torch.tensor([-12.0, 4.0, -2.0])])
    d = DiscretizedGaussian(mean[:, None], logvar[:, None], levels)
    lp = d.log_prob(values[None].expand(len(mean), -1))
    torch.testing.assert_close(torch.logsumexp(lp, 1), torch.zeros(len(mean), dtype=torch.float64), atol=1e-9, rtol=0)
    # against scipy: bins are the quantiser's cells, the extreme ones open-ended
    edges = np.concatenate([[-np.inf], (values[:-1] + 1.0 / n).numpy(), [np.inf]])
    sd = np.exp(0.5 * logvar.numpy())[:, None]
    ref = norm.cdf((edges[None, 1:] - mean.numpy()[:, None]) / sd) - norm.cdf(
        (edges[None, :-1] - mean.numpy()[:, None]) / sd
    )
    ok = ref > 1e-300
    np.testing.assert_allclose(lp.exp().numpy()[ok], ref[ok], rtol=1e-7, atol=1e-12)


def test_log_normal_interval_is_accurate_in_both_tails():
    mpmath = pytest.importorskip("mpmath")  # ships with torch (through sympy)
    a = [-40.0, -9.0, 8.0, 30.0, -0.5, 3.0]
    b = [-39.0, -8.0, 9.0, 31.0, 0.5, 3.001]
    mpmath.mp.dps = 400
    ref = [float(mpmath.log(mpmath.ncdf(bb) - mpmath.ncdf(aa))) for aa, bb in zip(a, b)]
    got = log_normal_interval(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9)


def test_discretised_gaussian_samples_follow_its_probabilities(gen):
    levels = 4
    d = DiscretizedGaussian(torch.full((40000,), 0.2), torch.full((40000,), math.log(0.3)), levels)
    s = d.sample(torch.randn(40000, generator=gen))
    values = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])
    freq = torch.stack([(s == v).float().mean() for v in values])
    probs = d.log_prob(values[:, None].expand(-1, 1))[:, 0].exp()  # same mean/var for every element
    torch.testing.assert_close(freq.sum(), torch.tensor(1.0))
    assert (freq - probs).abs().max() < 0.015, (freq, probs)


def test_q_marginal_and_posterior_closed_forms_match_monte_carlo(gen):
    T, N = 5, 200000
    p = _prior(steps=T, beta_start=0.05, beta_end=0.5, perturb=False)
    y0 = torch.tensor(0.6)
    chain = [y0.expand(N)]
    for t in range(1, T + 1):
        beta = p.betas[t - 1]
        chain.append((1 - beta).sqrt() * chain[-1] + beta.sqrt() * torch.randn(N, generator=gen))
    for t in range(1, T + 1):
        yt = chain[t]
        mean = p.q_sample(y0.view(1, 1, 1, 1), torch.tensor([t]), torch.zeros(1, 1, 1, 1)).item()
        var = 1 - p.abar[t - 1].item()
        se = math.sqrt(var / N)
        assert abs(yt.mean().item() - mean) < 5 * se
        assert abs(yt.var().item() - var) < 5 * var * math.sqrt(2 / N)
        if t >= 2:
            # E[y_{t-1} | y_t] is linear in y_t: regress and compare with the closed-form posterior
            prev = chain[t - 1]
            cov = ((yt - yt.mean()) * (prev - prev.mean())).mean()
            slope = (cov / yt.var(unbiased=False)).item()
            intercept = (prev.mean() - slope * yt.mean()).item()
            resid = (prev - intercept - slope * yt).var().item()
            q = p.q_posterior(y0.view(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.tensor([t]))
            q1 = p.q_posterior(y0.view(1, 1, 1, 1), torch.ones(1, 1, 1, 1), torch.tensor([t]))
            assert abs(intercept - q.mean.item()) < 0.01
            assert abs(slope - (q1.mean - q.mean).item()) < 0.01
            assert abs(resid - q.var.item()) < 0.01 * q.var.item() + 1e-3


def test_bound_for_one_step_is_the_hand_computed_L_T_plus_L_0(gen):
    levels = 4
    p = _prior(steps=1, levels=levels, shape=(1, 2, 2), beta_start=0.3, beta_end=0.3).double()
    y0 = _contexts(3, (1, 2, 2), levels, gen).double()
    eps = torch.randn(1, 3, 1, 2, 2, generator=gen, dtype=torch.float64)
    got = p.bound(y0, all_steps=True, noise=eps)
    a = 0.7  # abar_1 = 1 - beta_1
    y1 = math.sqrt(a) * y0 + math.sqrt(1 - a) * eps[0]
    mean_T, var_T = math.sqrt(a) * y0, 1 - a
    L_T = (0.5 * (var_T + mean_T**2 - 1 - math.log(var_T))).flatten(1).sum(1)
    out = p.net(y1, torch.ones(3, dtype=torch.long))
    mu, v = out[:, :1], torch.sigmoid(out[:, 1:])
    var = torch.exp(v * math.log(0.3) + (1 - v) * math.log(min((2 / 3 / 20) ** 2, 0.3)))
    mpmath = pytest.importorskip("mpmath")  # ships with torch (through sympy)
    mpmath.mp.dps = 400

    def log_mass(y: float, m: float, sd: float) -> float:
        """log P(bin of level y) under N(m, sd^2), bins of width 2/3, open-ended at the extremes."""
        lo = mpmath.ncdf((y - 1 / 3 - m) / sd) if y > -1 else mpmath.mpf(0)
        hi = mpmath.ncdf((y + 1 / 3 - m) / sd) if y < 1 else mpmath.mpf(1)
        return float(mpmath.log(hi - lo))

    sd, m = var.sqrt().detach(), mu.detach()
    L_0 = -np.array(
        [
            sum(
                log_mass(float(yy), float(mm), float(ss))
                for yy, mm, ss in zip(y0[i].flatten(), m[i].flatten(), sd[i].flatten())
            )
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(got.detach().numpy(), (L_T.numpy() + L_0), rtol=1e-6)  # float32 schedule
    assert torch.all(L_T > 0)


def test_bound_is_the_sum_of_its_steps_plus_L_T_and_the_one_step_estimate_is_unbiased(gen):
    T, levels = 4, 4
    p = _prior(steps=T, levels=levels, shape=(1, 2, 2)).double()
    y0 = _contexts(2, (1, 2, 2), levels, gen).double()
    eps = torch.randn(T, 2, 1, 2, 2, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        full = p.bound(y0, all_steps=True, noise=eps)
        steps = sum(p.step_terms(y0, torch.full((2,), t), eps[t - 1]) for t in range(1, T + 1))
        torch.testing.assert_close(full, steps + p.prior_term(y0))
        # L_T by hand: KL(N(sqrt(abar_T) y0, 1 - abar_T) || N(0, 1))
        abar = float(p.abar[-1])
        ref = 0.5 * (abar * y0**2 + (1 - abar) - 1 - math.log(1 - abar))
        torch.testing.assert_close(p.prior_term(y0), ref.flatten(1).sum(1))
        # many draws: the all-steps bound and the one-step estimate have the same mean
        N = 3000
        big = y0.repeat(N, 1, 1, 1)
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        a = p.bound(big, all_steps=True).view(N, 2)
        b = p.bound(big, all_steps=False).view(N, 2)
    se = (a.var(0) / N + b.var(0) / N).sqrt()
    assert torch.all((a.mean(0) - b.mean(0)).abs() < 5 * se), (a.mean(0), b.mean(0), se)


def test_bound_lowers_under_a_short_training_on_tiny_data(gen):
    levels = 4
    p = _prior(steps=3, levels=levels, shape=(1, 4, 4), perturb=False, beta_start=0.2, beta_end=0.6)
    base = _contexts(4, (1, 4, 4), levels, gen)
    data = base.repeat(16, 1, 1, 1)  # 4 distinct contexts: a learnable distribution
    torch.manual_seed(0)
    with torch.no_grad():
        before = p.bound(data, all_steps=True).mean().item()
    opt = torch.optim.Adam(p.parameters(), lr=3e-3)
    for _ in range(150):
        loss = p.bound(data, all_steps=False).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = p.bound(data, all_steps=True).mean().item()
    assert after < 0.6 * before, (before, after)


def test_samples_lie_on_the_levels_and_are_driven_by_the_noise(gen):
    levels = 8
    p = _prior(steps=3, levels=levels, shape=(2, 5, 5))
    noise = torch.randn(6, *p.noise_shape, generator=gen)
    assert p.noise_shape == (4, 2, 5, 5)
    with torch.no_grad():
        a, b = p.sample(6, noise), p.sample(6, noise)
        c = p.sample(6, noise.roll(1, 0))
    n = levels - 1
    assert a.shape == (6, 2, 5, 5) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isin(a, (2 * torch.arange(levels) - n) / n).all()
    with pytest.raises(ValueError, match="context noise must have shape"):
        p.sample(6, noise[:, :2])


@pytest.mark.parametrize("size", [6, 7])
def test_unet_with_two_scales_keeps_odd_and_even_shapes(size, gen):
    net = UNet(3, 6, 4, scales=2, res_blocks=2)
    out = net(torch.randn(2, 3, size, size, generator=gen), torch.tensor([1, 5]))
    assert out.shape == (2, 6, size, size)
    assert torch.all(out == 0)  # the output convolution starts at zero
