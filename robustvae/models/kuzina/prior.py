"""The authors' diffusion prior over the context: a variant of :class:`~robustvae.models.diffusion.DiffusionPrior`.

Same forward process, posterior q(y_{t-1} | y_t, y0) and per-step terms; what differs
(SPEC section 3.3), each as an override:

* "x" parametrisation: the UNet (:class:`~robustvae.models.kuzina.unet.KuzinaUNet`, fed
  the step index t - 1) outputs the mean and log-variance of p(y_{t-1} | y_t) directly;
* p(y0 | y1) is the discretised Gaussian with the tanh CDF (``cdf="tanh"``, half-width
  1 / (2^b - 1));
* there is no L_T term, so :meth:`bound` (all steps in eval mode, T x one step in
  training) is the authors' objective, not a bound;
* :meth:`is_log_prob` is their test-mode estimate: logsumexp over R full bounds - log R.

:meth:`log_weight` is the true importance weight instead: log p(y_{0:T}) - log q(y_{1:T} | y0)
along one forward trajectory, with p(y_T) = N(0, I) and p(y0 | y1) normalised over the
2^b + 2 values the context takes; its expectation is at most log P(y0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robustvae.models.diffusion import DiffusionPrior, cosine_betas
from robustvae.models.distributions import DiagGaussian, DiscretizedGaussian, sum_except_batch
from robustvae.models.kuzina.unet import KuzinaUNet


class KuzinaDiffusionPrior(DiffusionPrior):
    """DDGM prior of their code over contexts of ``shape`` whose values are ``support`` (the quantiser's outputs)."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        bits: int,
        steps: int,
        support: Tensor,
        *,
        schedule: str,
        beta_start: float,
        beta_end: float,
        channels: int,
        scales: int,
        res_blocks: int,
        dropout: float,
    ):
        C = shape[0]
        net = KuzinaUNet(C, 2 * C, channels, (1,) * scales, res_blocks, heads=2, dropout=dropout)
        betas = cosine_betas(steps) if schedule == "cosine" else None
        super().__init__(shape, 2**bits, steps, beta_start, beta_end, betas=betas, net=net)
        self.register_buffer("support", support.float(), persistent=False)
        self.post_logvar[0] = self.post_logvar[1]  # their clipped log-variance at step 1 (never used by a term)

    def p_step(self, yt: Tensor, t: Tensor) -> DiagGaussian:
        """p(y_{t-1} | y_t) = N(mean, exp(logvar)), both straight from the UNet at step index t - 1."""
        mean, logvar = self.net(yt, t - 1).float().chunk(2, 1)
        return DiagGaussian(mean, logvar)

    def discretise(self, p: DiagGaussian) -> DiscretizedGaussian:
        return DiscretizedGaussian(p.mean, p.logvar, self.levels, cdf="tanh")

    def prior_term(self, y0: Tensor) -> Tensor:
        """No L_T in the authors' objective."""
        return y0.new_zeros(y0.shape[0])

    def is_log_prob(self, y0: Tensor, repeats: int = 10, noise: Tensor | None = None) -> Tensor:
        """Their test-mode log p(y0): logsumexp over ``repeats`` all-step bounds - log repeats; noise (R, T, B, ...).

        The repeats go through the network as one batch.
        """
        B = y0.shape[0]
        eps = noise.transpose(0, 1).reshape(self.steps, repeats * B, *y0.shape[1:]) if noise is not None else None
        terms = -self.bound(y0.repeat(repeats, *([1] * (y0.dim() - 1))), all_steps=True, noise=eps).view(repeats, B)
        return torch.logsumexp(terms, 0) - math.log(repeats)

    def log_weight(self, y0: Tensor, noise: Tensor | None = None) -> Tensor:
        """log p(y_{0:T}) - log q(y_{1:T} | y0) per image along a trajectory driven by ``noise`` (T, B, C, c, c)."""
        T, B = self.steps, y0.shape[0]
        eps = noise if noise is not None else torch.randn((T, *y0.shape), device=y0.device, dtype=y0.dtype)
        ys, prev, log_q = [], y0, y0.new_zeros(B)
        for i in range(T):
            step = DiagGaussian((1 - self.betas[i]).sqrt() * prev, self.betas[i].log().expand_as(prev))
            prev = step.sample(eps[i])
            log_q = log_q + sum_except_batch(step.log_prob(prev))
            ys.append(prev)
        t = torch.arange(1, T + 1, device=y0.device).repeat_interleave(B)
        p = self.p_step(torch.cat(ys), t)
        targets = torch.cat([y0, *ys[:-1]])  # p(y_{t-1} | y_t) scores y_{t-1}
        steps = sum_except_batch(p.log_prob(targets)).view(T, B)
        first = DiagGaussian(p.mean[:B], p.logvar[:B])
        log_p = steps[1:].sum(0) + self.normalised_log_prob(first, y0)
        log_p = log_p + sum_except_batch(DiagGaussian(torch.zeros_like(y0), torch.zeros_like(y0)).log_prob(ys[-1]))
        return log_p - log_q

    def normalised_log_prob(self, p: DiagGaussian, y0: Tensor) -> Tensor:
        """log P(y0 | y1) per image with the discretised Gaussian renormalised over ``support``."""
        d = self.discretise(p)
        grid = self.support.view(-1, *([1] * y0.dim())).expand(-1, *y0.shape)
        norm = torch.logsumexp(d.log_prob(grid), 0)
        return sum_except_batch(d.log_prob(y0) - norm)

    def sample(self, batch: int, noise: Tensor | None = None) -> Tensor:
        """A continuous y0 (B, C, c, c): y_T = noise[:, 0], steps T .. 2 sampled, the last one its mean."""
        if noise is None:
            noise = self.make_noise(batch, self.betas.device)
        y = noise[:, 0]
        for s, t in enumerate(range(self.steps, 1, -1), start=1):
            y = self.p_step(y, torch.full((batch,), t, dtype=torch.long, device=y.device)).sample(noise[:, s])
        return self.p_step(y, torch.ones(batch, dtype=torch.long, device=y.device)).mean
