"""The HMC chain against closed forms: the exact posterior of linear-Gaussian models, detailed balance on a 1-D
target, the acceptance ratio and leapfrog by hand, step-size adaptation, and the gradient through the chain.

Every test draws from fixed seeds (float64 throughout, so an instruction set changes nothing beyond rounding);
tolerances are Monte Carlo standard errors of independent chains (4 of them: a false alarm has probability
< 1e-4 per quantity had the seed been free), or float64 rounding where nothing is random.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from robustvae.defences.chain import ChainNoise, leapfrog, run_chain
from robustvae.defences.hmc import HMCConfig, HMCDefence
from robustvae.models.contract import LatentJoint, LayerInfo
from robustvae.models.distributions import DiagGaussian

F64 = torch.float64


def _noise(chains: int, steps: int, dims: int, seed: int) -> ChainNoise:
    n = ChainNoise.draw(chains, steps, dims, torch.Generator().manual_seed(seed))
    return ChainNoise(n.momentum.to(F64), n.uniform.to(F64))


def _linear_gaussian_posterior(A: torch.Tensor, b: torch.Tensor, s2: float, x: torch.Tensor, prior_cov: torch.Tensor):
    """Exact posterior of z ~ N(0, prior_cov), x | z ~ N(A z + b, s2 I): (mean, covariance)."""
    prec = torch.linalg.inv(prior_cov) + A.T @ A / s2
    cov = torch.linalg.inv(prec)
    return cov @ A.T @ (x - b) / s2, cov


def _assert_matches(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> None:
    """Sample mean and covariance of independent draws within 4 Monte Carlo standard errors of the exact ones."""
    n = samples.shape[0]
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((samples.mean(0) - mean).abs() <= 4 * se_mean).all(), (samples.mean(0), mean, se_mean)
    emp = torch.cov(samples.T)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()  # Gaussian: Var(s_ij)
    assert ((emp - cov).abs() <= 4 * se_cov).all(), (emp, cov, se_cov)


def test_chain_samples_the_exact_posterior_of_a_linear_gaussian_model():
    g = torch.Generator().manual_seed(3)
    d, n = 3, 2
    A, b, x = (torch.randn(s, generator=g, dtype=F64) for s in ((n, d), (n,), (n,)))
    mean, cov = _linear_gaussian_posterior(A, b, 0.5, x, torch.eye(d, dtype=F64))

    def potential(z):
        return 0.5 * z.pow(2).sum(1) + 0.5 * (z @ A.T + b - x).pow(2).sum(1) / 0.5

    chains = 4000
    z0 = 2 * torch.randn(chains, d, generator=g, dtype=F64)  # over-dispersed starts: convergence is part of the test
    res = run_chain(potential, z0, _noise(chains, 60, d, 4), leapfrog_steps=5, step_size=0.1, adapt_steps=30)
    _assert_matches(res.z, mean, cov)
    se = res.z_mean.std(0) / math.sqrt(chains)  # the mean of each chain's 30 states after burn-in
    assert ((res.z_mean.mean(0) - mean).abs() <= 4 * se).all()


class _LinearLadder(torch.nn.Module):
    """Two Gaussian layers in R^2 (z1 ~ N(0, I), z2 | z1 ~ N(C z1, s^2 I)) and x | z ~ N(A [z1; z2] + b, sigma^2 I)
    on a 1 x 2 x 2 'image': a hierarchical model whose posterior is Gaussian in closed form."""

    arch = "linear"

    def __init__(self, g: torch.Generator):
        super().__init__()
        self.C = torch.randn(2, 2, generator=g, dtype=F64)
        self.A = torch.randn(4, 4, generator=g, dtype=F64) * 0.7
        self.b = torch.randn(4, generator=g, dtype=F64)
        self.s, self.sigma2 = 0.6, 0.4
        self.layers = [LayerInfo(1, 1, (2, 1, 1)), LayerInfo(2, 1, (2, 1, 1))]
        self.num_layers = 2
        self.dummy = torch.nn.Parameter(torch.zeros(1, dtype=F64))

    def make_noise(self, batch, generator=None):
        return [torch.randn((batch, 2, 1, 1), generator=generator, dtype=F64) for _ in range(2)]

    def encode(self, x, k=None, sample=False, noise=None):  # a poor amortised posterior: the chain must fix it
        return [
            DiagGaussian(torch.zeros(x.shape[0], 2, 1, 1, dtype=F64), torch.zeros(x.shape[0], 2, 1, 1, dtype=F64))
            for _ in range(k or 2)
        ]

    def latent_log_joint(self, x, zs, temperature=0.1, noise=None):
        z1 = zs[0].flatten(1)
        prior = -0.5 * z1.pow(2).sum(1)
        mean2 = z1 @ self.C.T
        if len(zs) > 1:
            z2 = zs[1].flatten(1)
            prior = prior - 0.5 * (z2 - mean2).pow(2).sum(1) / self.s**2
        else:
            z2 = mean2 + temperature * self.s * noise[1].flatten(1)
        mu = torch.cat([z1, z2], 1) @ self.A.T + self.b
        lik = -0.5 * (x.flatten(1) - mu).pow(2).sum(1) / self.sigma2
        return LatentJoint(prior, lik, mu.view_as(x))


@pytest.mark.parametrize("k", [1, 2])
def test_defended_model_samples_the_exact_posterior_of_a_linear_gaussian_ladder(k):
    """Through the defence's own wrapper (layers flattened and split, seeds per image, the layers below k from the
    prior at the temperature with the shared noise): the chains' last states are the exact posterior's draws."""
    g = torch.Generator().manual_seed(11)
    model = _LinearLadder(g)
    x = torch.randn(1, 1, 2, 2, generator=g, dtype=F64)
    chains, t = 3000, 0.7
    defended = HMCDefence(HMCConfig(steps=80, leapfrog=5, init_step_size=0.2)).wrap(model, t)
    shared = model.make_noise(1, g)  # one prior draw below k, shared by every chain (as the protocol shares it)
    seeds = torch.randint(0, 2**62, (chains,), generator=g)
    noise = [*(n.expand(chains, -1, -1, -1) for n in shared), seeds]
    xs = x.expand(chains, -1, -1, -1)
    z = torch.cat([q.mean.flatten(1) for q in defended.encode(xs, k, sample=True, noise=noise)], 1)  # last states
    A1, A2, C, s = model.A[:, :2], model.A[:, 2:], model.C, model.s
    if k == 2:
        prior = torch.cat(
            [torch.cat([torch.eye(2, dtype=F64), C.T], 1), torch.cat([C, C @ C.T + s**2 * torch.eye(2, dtype=F64)], 1)]
        )
        mean, cov = _linear_gaussian_posterior(model.A, model.b, model.sigma2, x.flatten(), prior)
    else:  # z2 = C z1 + t s n2: x = (A1 + A2 C) z1 + b + A2 t s n2 + noise
        b = model.b + A2 @ (t * s * shared[1].flatten())
        mean, cov = _linear_gaussian_posterior(A1 + A2 @ C, b, model.sigma2, x.flatten(), torch.eye(2, dtype=F64))
    _assert_matches(z, mean, cov)
    assert defended.last.passes == 1 + 80 * 5 + 2
    # under the default rule (posterior means) the defence decodes the mean of the states after burn-in: an estimate
    # of the exact posterior mean (chains independent: 4 standard errors of their spread)
    zbar = torch.cat([q.mean.flatten(1) for q in defended.encode(xs, k, noise=noise)], 1)
    se = zbar.std(0) / math.sqrt(chains)
    assert ((zbar.mean(0) - mean).abs() <= 4 * se).all(), (zbar.mean(0), mean, se)
    assert (zbar.var(0) < cov.diagonal()).all()  # an average of 40 states scatters less than one draw


def _mixture():
    w, m, s = np.array([0.3, 0.7]), np.array([-1.0, 1.5]), np.array([0.5, 0.8])

    def potential(z):
        comps = torch.stack(
            [math.log(wi) - 0.5 * ((z[:, 0] - mi) / si) ** 2 - math.log(si) for wi, mi, si in zip(w, m, s)]
        )
        return -torch.logsumexp(comps, 0)

    def sample(n, rng):
        c = rng.random(n) < w[0]
        return np.where(c, rng.normal(m[0], s[0], n), rng.normal(m[1], s[1], n))

    def cdf(v):
        return (w * stats.norm.cdf((np.asarray(v)[..., None] - m) / s)).sum(-1)

    return potential, sample, cdf


def _bowker(a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> float:
    """p-value of Bowker's test that the joint table of (a, b) is symmetric (exchangeability of the pair)."""
    table = np.histogram2d(a, b, bins=[edges, edges])[0]
    upper = np.triu_indices_from(table, 1)
    nij, nji = table[upper], table.T[upper]
    keep = nij + nji > 0
    stat = ((nij - nji)[keep] ** 2 / (nij + nji)[keep]).sum()
    return float(stats.chi2.sf(stat, keep.sum()))


def test_detailed_balance_on_a_1d_mixture():
    """z0 ~ pi exactly, one HMC transition z1: detailed balance makes (z0, z1) exchangeable (a symmetric joint table,
    Bowker's test) and keeps pi (goodness of fit of z1). The same test rejects leapfrog without the accept step."""
    potential, sample, cdf = _mixture()
    rng = np.random.default_rng(5)
    n = 100_000
    z0 = torch.tensor(sample(n, rng), dtype=F64)[:, None]
    # ten equiprobable bins of pi (its deciles by bisection on the exact CDF), the outer ones open
    edges = np.array([-np.inf, *[_bisect(cdf, q) for q in np.arange(1, 10) / 10], np.inf])
    res = run_chain(potential, z0, _noise(n, 1, 1, 6), leapfrog_steps=3, step_size=0.9)
    z1 = res.z[:, 0].numpy()
    assert 0.2 < float(res.accept_rate.mean()) < 0.95  # rejections happen: the test sees the accept step at work
    assert _bowker(z0[:, 0].numpy(), z1, edges) > 1e-3
    counts = np.histogram(z1, edges)[0]
    assert stats.chisquare(counts).pvalue > 1e-3
    # negative control: always accepting the leapfrog end point is not reversible for pi
    zg = z0.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(potential(zg).sum(), zg)
    p = _noise(n, 1, 1, 6).momentum[:, 0]
    z_bad = leapfrog(potential, z0, p, gr, torch.full((n, 1), 0.9, dtype=F64), 3)[0][:, 0].numpy()
    assert _bowker(z0[:, 0].numpy(), z_bad, edges) < 1e-6


def _bisect(f, target: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def test_acceptance_probability_and_leapfrog_by_hand():
    """One transition on a quartic potential: the reported acceptance probability is min(1, exp(H - H')) computed
    by hand from one leapfrog step, and leapfrog run back from (z', -p') returns to (z, -p) (reversibility)."""

    def potential(z):
        return z[:, 0] ** 4 / 4 - z[:, 0] ** 2

    def grad(z):
        return z**3 - 2 * z

    g = torch.Generator().manual_seed(8)
    z = torch.randn(64, 1, generator=g, dtype=F64)
    noise = _noise(64, 1, 1, 9)
    p, eps = noise.momentum[:, 0], 0.7
    res = run_chain(potential, z, noise, leapfrog_steps=1, step_size=eps)
    p_half = p - eps / 2 * grad(z)
    z1 = z + eps * p_half
    p1 = p_half - eps / 2 * grad(z1)
    log_ratio = (potential(z) + p[:, 0] ** 2 / 2) - (potential(z1) + p1[:, 0] ** 2 / 2)
    torch.testing.assert_close(res.accept_prob, log_ratio.clamp(max=0).exp(), rtol=0, atol=1e-12)
    accepted = noise.uniform[:, 0].log() < log_ratio
    torch.testing.assert_close(res.z, torch.where(accepted[:, None], z1, z), rtol=0, atol=1e-12)
    zb, pb, _, _ = leapfrog(potential, z1, -p1, grad(z1), torch.full((64, 1), eps, dtype=F64), 1)
    torch.testing.assert_close(zb, z, rtol=0, atol=1e-12)
    torch.testing.assert_close(pb, -p, rtol=0, atol=1e-12)


def _adapted_acceptance(target: float, adapt: int, chains: int = 200, dims: int = 10):
    sd = torch.linspace(0.5, 2.0, dims, dtype=F64)
    g = torch.Generator().manual_seed(2)
    z0 = torch.randn(chains, dims, generator=g, dtype=F64) * sd
    res = run_chain(
        lambda z: 0.5 * (z / sd).pow(2).sum(1),
        z0,
        _noise(chains, adapt + 500, dims, 7),
        leapfrog_steps=5,
        step_size=0.1,
        adapt_steps=adapt,
        target_accept=target,
    )
    per_chain = res.accept_prob  # mean acceptance probability of each chain after adaptation
    return float(per_chain.mean()), float(per_chain.std() / math.sqrt(chains)), res


def test_step_size_adaptation_reaches_the_target_acceptance():
    """After burn-in the chains accept at the target rate, within 4 standard errors over independent chains."""
    mean, se, res = _adapted_acceptance(0.65, 500)
    assert abs(mean - 0.65) <= 4 * se, (mean, se)
    assert abs(float(res.accept_rate.mean()) - mean) < 0.02  # the realised accept share agrees with the probability
    assert float(res.step_size.std()) > 0  # one step per chain


@pytest.mark.slow
def test_step_size_adaptation_reaches_the_authors_target_of_0_9():
    mean, se, _ = _adapted_acceptance(0.9, 3000)
    assert abs(mean - 0.9) <= 4 * se, (mean, se)


def test_gradient_through_the_chain_matches_finite_differences():
    """Expectation mode is a smooth function of the start and of the target's parameters: its autograd gradient
    equals central differences (float64; step 1e-6, so the difference error is ~1e-10); straight-through keeps the
    chain's own values (equal to the chain run without gradients)."""
    g = torch.Generator().manual_seed(12)
    theta = torch.randn(3, 2, generator=g, dtype=F64)
    noise = _noise(3, 4, 2, 13)

    def final(th, mode="expectation", differentiable=True):
        return run_chain(
            lambda z: 0.5 * (z - th).pow(2).sum(1) + 0.1 * z.pow(4).sum(1),
            th * 0.5,
            noise,
            leapfrog_steps=3,
            step_size=0.3,
            differentiable=differentiable,
            accept_grad=mode,
        ).z

    th = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(final(th).sum(), th)
    h = 1e-6
    fd = torch.zeros_like(theta)
    for i in range(3):
        for j in range(2):
            e = torch.zeros_like(theta)
            e[i, j] = h
            fd[i, j] = (final(theta + e).sum() - final(theta - e).sum()) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-7)
    st = final(theta.clone().requires_grad_(True), "straight-through")
    torch.testing.assert_close(st, final(theta, differentiable=False), rtol=0, atol=1e-12)
