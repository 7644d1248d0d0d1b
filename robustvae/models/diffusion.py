"""The diffusion prior over DCT-VAE's quantised context (Appendix C of the paper).

A DDPM over y0, the context on its 2^b levels in [-1, 1], with T steps and linear
betas:

* q(y_t | y0) = N(sqrt(abar_t) y0, (1 - abar_t) I) and the posterior
  q(y_{t-1} | y_t, y0) = N(c0_t y0 + ct_t y_t, beta~_t I), both in closed form;
* p(y_{t-1} | y_t) = N(c0_t y0_hat + ct_t y_t, sigma_t^2 I), where a small UNet
  predicts y0_hat and v in (0, 1), and log sigma_t^2 = v log beta_t + (1 - v) log lo_t
  interpolates between beta_t and lo_t = beta~_t (Nichol & Dhariwal's learned
  variance). At t = 1, p(y0 | y1) is a :class:`DiscretizedGaussian` whose bins are
  exactly the quantiser's cells (the extreme ones reaching +-inf), with lo_1 =
  (d / 20)^2 for level spacing d so it can become sharp;
* the variational bound, per image in nats (an upper bound on -log P(y0)):
  L_vlb = L_T + sum_{t=2..T} L_{t-1} + L_0, with L_T = KL(q(y_T | y0) || N(0, I)),
  L_{t-1} = KL(q(y_{t-1} | y_t, y0) || p(y_{t-1} | y_t)), L_0 = -log p(y0 | y1).
  The reference code dropped L_T and used wider bins; neither is copied here.

:meth:`DiffusionPrior.bound` sums every step (``all_steps=True``: evaluation) or
estimates the sum with one uniformly drawn t per image (T * L_t, unbiased: training);
L_T is always computed exactly. :meth:`DiffusionPrior.sample` draws y0 ancestrally,
driven by caller-supplied noise of shape (B, T + 1, C, c, c).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustvae.models import rng
from robustvae.models.distributions import DiagGaussian, DiscretizedGaussian, sum_except_batch


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding (B, dim) of integer steps t (B,)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], 1)
    return F.pad(emb, (0, dim - emb.shape[1]))


def cosine_betas(steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal's cosine schedule: beta_t = min(1 - f(t / T) / f((t - 1) / T), max_beta), float64."""
    f = [math.cos((i / steps + s) / (1 + s) * math.pi / 2) ** 2 for i in range(steps + 1)]
    return torch.tensor([min(1 - f[i + 1] / f[i], max_beta) for i in range(steps)], dtype=torch.float64)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def _zero(module: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, residual connection."""

    def __init__(self, cin: int, cout: int, temb: int):
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(temb, cout)
        self.n2, self.c2 = _norm(cout), _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        out = self.c1(F.silu(self.n1(h))) + self.t(e)[:, :, None, None]
        return self.skip(h) + self.c2(F.silu(self.n2(out)))


class UNet(nn.Module):
    """A small UNet for c x c inputs.

    ``scales`` resolutions (each a stride-2 convolution of the previous one, rounded
    up), ``res_blocks`` residual blocks per resolution on the way down and on the way
    up, width ``channels * 2**s`` at scale s, skip connections per resolution, and a
    sinusoidal time embedding fed to every block. The output convolution starts at 0.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int, scales: int, res_blocks: int):
        super().__init__()
        self.channels = channels
        temb = 4 * channels
        self.time = nn.Sequential(nn.Linear(channels, temb), nn.SiLU(), nn.Linear(temb, temb))
        widths = [channels * 2**s for s in range(scales)]
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        cin = channels
        for w in widths:
            self.down.append(nn.ModuleList(_ResBlock(cin if i == 0 else w, w, temb) for i in range(res_blocks)))
            cin = w
        self.pool = nn.ModuleList(nn.Conv2d(w, w, 3, stride=2, padding=1) for w in widths[:-1])
        self.mid = _ResBlock(widths[-1], widths[-1], temb)
        self.up = nn.ModuleList()
        for s in reversed(range(scales)):
            below = widths[min(s + 1, scales - 1)]
            w = widths[s]
            self.up.append(nn.ModuleList(_ResBlock(below + w if i == 0 else w, w, temb) for i in range(res_blocks)))
        self.out_norm = _norm(channels)
        self.out = _zero(nn.Conv2d(channels, out_channels, 3, padding=1))

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        e = self.time(timestep_embedding(t, self.channels).to(y.dtype))
        h = self.inp(y)
        skips = []
        for s, blocks in enumerate(self.down):
            for b in blocks:
                h = b(h, e)
            skips.append(h)
            if s < len(self.pool):
                h = self.pool[s](h)
        h = self.mid(h, e)
        for blocks, skip in zip(self.up, reversed(skips)):
            h = torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], 1)
            for b in blocks:
                h = b(h, e)
        return self.out(F.silu(self.out_norm(h)))


class DiffusionPrior(nn.Module):
    """DDPM prior over contexts of ``shape`` (C, c, c) on ``levels`` evenly spaced values in [-1, 1].

    Steps t run from 1 to T; schedule tensors are indexed by t - 1.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        levels: int,
        steps: int,
        beta_start: float,
        beta_end: float,
        channels: int = 32,
        scales: int = 1,
        res_blocks: int = 3,
        *,
        betas: Tensor | None = None,
        net: nn.Module | None = None,
    ):
        """``betas`` (T,) replaces the linear schedule and ``net`` the UNet when given (other priors' variants)."""
        super().__init__()
        self.shape, self.levels, self.steps = tuple(shape), levels, steps
        if betas is None:
            betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        betas = betas.double()
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - abar)  # beta~_t; 0 at t = 1
        spacing = 2.0 / (levels - 1)
        lo = post_var.clone()
        lo[0] = betas[0].clamp(max=(spacing / 20) ** 2)  # tensor ops only: the model also builds on the meta device
        schedule = {
            "betas": betas,
            "abar": abar,
            "coef_y0": betas * abar_prev.sqrt() / (1 - abar),  # c0_t: 1 at t = 1
            "coef_yt": (1 - abar_prev) * alphas.sqrt() / (1 - abar),  # ct_t: 0 at t = 1
            # q(y_{t-1} | y_t, y0) is a point at t = 1; keep its log-variance finite (never used there)
            "post_logvar": torch.where(post_var > 0, post_var, betas).log(),
            "log_hi": betas.log(),
            "log_lo": lo.log(),
        }
        for name, v in schedule.items():
            self.register_buffer(name, v.float(), persistent=False)
        C = shape[0]
        self.net = UNet(C, 2 * C, channels, scales, res_blocks) if net is None else net

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """Per-image shape of the noise that drives :meth:`sample`: (T + 1, C, c, c)."""
        return (self.steps + 1, *self.shape)

    def _at(self, name: str, t: Tensor) -> Tensor:
        """Schedule value ``name`` at steps ``t`` (B,), shaped to broadcast over (B, C, c, c)."""
        return getattr(self, name)[t - 1].view(-1, 1, 1, 1)

    # ------------------------------------------------------------------ closed forms

    def q_sample(self, y0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """y_t ~ q(y_t | y0) = N(sqrt(abar_t) y0, (1 - abar_t) I), driven by standard-normal ``eps``."""
        abar = self._at("abar", t)
        return abar.sqrt() * y0 + (1 - abar).sqrt() * eps

    def q_posterior(self, y0: Tensor, yt: Tensor, t: Tensor) -> DiagGaussian:
        """q(y_{t-1} | y_t, y0) for t >= 2."""
        mean = self._at("coef_y0", t) * y0 + self._at("coef_yt", t) * yt
        return DiagGaussian(mean, self._at("post_logvar", t).expand_as(mean))

    def p_step(self, yt: Tensor, t: Tensor) -> DiagGaussian:
        """p(y_{t-1} | y_t): the network's y0 prediction through the posterior mean, learned variance.

        At t = 1 this is the continuous Gaussian that :meth:`decoder` discretises.
        """
        y0_hat, v = self.net(yt, t).float().chunk(2, 1)
        v = torch.sigmoid(v)
        mean = self._at("coef_y0", t) * y0_hat + self._at("coef_yt", t) * yt
        return DiagGaussian(mean, v * self._at("log_hi", t) + (1 - v) * self._at("log_lo", t))

    def discretise(self, p: DiagGaussian) -> DiscretizedGaussian:
        """The continuous p(y0 | y1) made discrete over the quantiser's levels."""
        return DiscretizedGaussian(p.mean, p.logvar, self.levels)

    def decoder(self, y1: Tensor) -> DiscretizedGaussian:
        """p(y0 | y1) over the quantiser's levels."""
        return self.discretise(self.p_step(y1, torch.ones(y1.shape[0], dtype=torch.long, device=y1.device)))

    # ------------------------------------------------------------------ the bound

    def prior_term(self, y0: Tensor) -> Tensor:
        """L_T = KL(q(y_T | y0) || N(0, I)) per image, in nats."""
        abar = self.abar[-1]
        q = DiagGaussian(abar.sqrt() * y0, (1 - abar).log().expand_as(y0))
        return sum_except_batch(q.kl(DiagGaussian(torch.zeros_like(y0), torch.zeros_like(y0))))

    def step_terms(self, y0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Per image: L_{t-1} (t >= 2) or L_0 = -log p(y0 | y1) (t = 1), with y_t = q_sample(y0, t, eps)."""
        yt = self.q_sample(y0, t, eps)
        p = self.p_step(yt, t)
        kl = sum_except_batch(self.q_posterior(y0, yt, t).kl(p))
        nll0 = -sum_except_batch(self.discretise(p).log_prob(y0))
        return torch.where(t == 1, nll0, kl)

    def bound(self, y0: Tensor, all_steps: bool = True, noise: Tensor | None = None) -> Tensor:
        """L_vlb per image in nats for contexts ``y0`` (B, C, c, c) on the levels.

        ``all_steps``: every t (``noise`` of shape (T, B, C, c, c) drives y_t when
        given). Otherwise one uniform t per image, weighted by T (``noise`` (B, C, c, c)).
        """
        B, T = y0.shape[0], self.steps
        if all_steps:
            t = torch.arange(1, T + 1, device=y0.device).repeat_interleave(B)
            y0s = y0.repeat(T, 1, 1, 1)
            eps = noise.reshape(y0s.shape) if noise is not None else torch.randn_like(y0s)
            steps = self.step_terms(y0s, t, eps).view(T, B).sum(0)
        else:
            t = rng.randint(1, T + 1, (B,), device=y0.device)
            eps = noise if noise is not None else rng.randn_like(y0)
            steps = T * self.step_terms(y0, t, eps)
        return steps + self.prior_term(y0)

    # ------------------------------------------------------------------ sampling

    def make_noise(self, batch: int, device: torch.device) -> Tensor:
        return torch.randn((batch, *self.noise_shape), device=device)

    def sample(self, batch: int, noise: Tensor | None = None) -> Tensor:
        """Ancestral samples y0 (B, C, c, c) on the levels.

        ``noise[:, 0]`` is y_T; ``noise[:, s]`` drives the step from y_{T-s+1} to y_{T-s}
        (s = 1 .. T; the last one draws y0 from the discretised p(y0 | y1)).
        """
        if noise is None:
            noise = self.make_noise(batch, self.betas.device)
        if tuple(noise.shape) != (batch, *self.noise_shape):
            raise ValueError(f"context noise must have shape {(batch, *self.noise_shape)}, got {tuple(noise.shape)}")
        y = noise[:, 0]
        for s, t in enumerate(range(self.steps, 1, -1), start=1):
            y = self.p_step(y, torch.full((batch,), t, dtype=torch.long, device=y.device)).sample(noise[:, s])
        return self.decoder(y).sample(noise[:, self.steps])
