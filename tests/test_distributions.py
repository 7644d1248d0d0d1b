"""Distributions against independent references: torch.distributions and exhaustive sums."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.distributions import Bernoulli as TBernoulli
from torch.distributions import Normal, kl_divergence

from robustvae.models.distributions import Bernoulli, DiagGaussian, DiscretizedLogisticMixture, soft_clamp


pytestmark = pytest.mark.numerical  # CI runs these again under ATEN_CPU_CAPABILITY=default


def test_gaussian_kl_and_log_prob_match_torch_distributions(gen):
    shape = (5, 3, 4, 4)
    m1, m2 = (
        torch.randn(shape, generator=gen, dtype=torch.float64),
        torch.randn(shape, generator=gen, dtype=torch.float64),
    )
    lv1 = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    lv2 = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    q, p = DiagGaussian(m1, lv1), DiagGaussian(m2, lv2)
    ref = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(q.kl(p), ref)
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(q.log_prob(z), Normal(m1, (0.5 * lv1).exp()).log_prob(z))
    assert torch.all(q.kl(q).abs() < 1e-12)


def test_gaussian_sample_uses_noise_and_temperature(gen):
    q = DiagGaussian(torch.randn(4, 2, generator=gen), torch.randn(4, 2, generator=gen))
    eps = torch.randn(4, 2, generator=gen)
    torch.testing.assert_close(q.sample(eps, 0.1), q.mean + 0.1 * q.std * eps)
    torch.testing.assert_close(q.sample(eps, 0.0), q.mean)


def test_soft_clamp_bounds_and_identity_near_zero(gen):
    x = torch.randn(1000, generator=gen) * 100
    y = soft_clamp(x, 10.0)
    assert y.abs().max() <= 10.0
    small = torch.linspace(-0.1, 0.1, 11)
    torch.testing.assert_close(soft_clamp(small, 10.0), small, atol=1e-5, rtol=0)


def test_bernoulli_log_prob_matches_torch(gen):
    logits = torch.randn(3, 1, 5, 5, generator=gen)
    x = torch.bernoulli(torch.rand(3, 1, 5, 5, generator=gen), generator=gen)
    ref = TBernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(Bernoulli(logits).log_prob(x), ref)
    torch.testing.assert_close(Bernoulli(logits).mean, torch.sigmoid(logits))


def _random_dmol(gen, C, K, bits, B=2, H=2, W=2):
    params = torch.randn(B, DiscretizedLogisticMixture.num_params(C, K), H, W, generator=gen, dtype=torch.float64)
    return params, DiscretizedLogisticMixture(params, C, K, bits)


def test_dmol_single_channel_sums_to_one_over_all_256_levels(gen):
    params, d = _random_dmol(gen, C=1, K=5, bits=8, B=1, H=1, W=1)
    levels = torch.arange(256, dtype=torch.float64) / 255
    x = levels.view(256, 1, 1, 1)
    d_all = DiscretizedLogisticMixture(params.expand(256, -1, -1, -1), 1, 5, 8)
    total = d_all.log_prob(x).exp().sum()
    assert abs(total.item() - 1.0) < 1e-9


@pytest.mark.parametrize("bits", [3, 5])
def test_dmol_rgb_joint_sums_to_one(gen, bits):
    """Exhaustive sum over every RGB value of one pixel (2**(3*bits) combinations)."""
    n = 2**bits
    params, _ = _random_dmol(gen, C=3, K=4, bits=bits, B=1, H=1, W=1)
    grid = torch.tensor(list(itertools.product(range(n), repeat=3)), dtype=torch.float64) / (n - 1)
    x = grid.view(-1, 3, 1, 1)
    d = DiscretizedLogisticMixture(params.expand(x.shape[0], -1, -1, -1), 3, 4, bits)
    total = d.log_prob(x).exp().sum()
    assert abs(total.item() - 1.0) < 1e-8


def test_dmol_is_stable_for_extreme_scales(gen):
    params, _ = _random_dmol(gen, C=3, K=2, bits=8)
    params = params * 50  # very peaked / very wide components
    d = DiscretizedLogisticMixture(params, 3, 2, 8)
    x = torch.rand(2, 3, 2, 2, generator=gen, dtype=torch.float64)
    lp = d.log_prob(x)
    assert torch.isfinite(lp).all() and (lp <= 0).all()


def test_dmol_mean_matches_monte_carlo(gen):
    """The analytic mean image against the average of many samples (one pixel, 3 channels).

    Locations stay well inside [-1, 1] and scales are small, so clamping at the edges is
    negligible and the expectation is the mixture of the chained component means.
    """
    C, K = 3, 3
    logits = torch.randn(1, K, 1, 1, generator=gen)
    locs = torch.rand(1, C, K, 1, 1, generator=gen) - 0.5
    log_scales = torch.full((1, C, K, 1, 1), -3.0)
    coeffs = torch.randn(1, 3, K, 1, 1, generator=gen) * 0.5  # pre-tanh
    params = torch.cat([logits, torch.cat([locs, log_scales, coeffs], 1).reshape(1, -1, 1, 1)], 1)
    d = DiscretizedLogisticMixture(params.expand(40000, -1, -1, -1), C, K, 8)
    mc = d.sample().mean(0)
    torch.testing.assert_close(d.mean[0], mc, atol=0.01, rtol=0)


def test_divergences_match_torch_distributions(gen):
    shape = (3, 2, 4, 4)
    a = DiagGaussian(
        torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(shape, generator=gen, dtype=torch.float64)
    )
    c = DiagGaussian(
        torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(shape, generator=gen, dtype=torch.float64)
    )
    na, nc = Normal(a.mean, a.std), Normal(c.mean, c.std)
    fwd = kl_divergence(nc, na).flatten(1).sum(1)
    rev = kl_divergence(na, nc).flatten(1).sum(1)
    torch.testing.assert_close(a.compare(c, "kl_forward"), fwd)
    torch.testing.assert_close(a.compare(c, "kl_reverse"), rev)
    torch.testing.assert_close(a.compare(c, "skl"), fwd + rev)
    torch.testing.assert_close(a.compare(c, "means"), ((a.mean - c.mean) ** 2).flatten(1).sum(1))
