"""VDVAE: the top-down hierarchical VAE of Child (2021), as configured in Table 6.

It implements the model contract (:mod:`robustvae.models.contract`):

* ``encode(x, k)``: posteriors q(z_l | x, z_>l) of the top k layers, top first;
  higher layers are fixed at their posterior means so the result is deterministic.
* ``reconstruct(x, k, temperature, noise)``: posterior means for the top k layers,
  prior samples at ``temperature`` for the rest, driven by caller-supplied noise;
  returns the decoder's mean image in [0, 1]; differentiable in x.
* ``elbo(x)``: per-layer analytic KL, reconstruction term, -ELBO in nats and bits/dim.
* ``log_importance_weights(x, K)``: log p(x, z) - log q(z | x) at K joint posterior
  samples: the IWAE bound.
* ``sample(n, temperature)``: ancestral samples (mean images).

All images are in [0, 1]; the network sees them on [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustvae.config import ModelConfig
from robustvae.models.blocks import Block, conv, hidden_width, residual_scale
from robustvae.models.contract import ELBOResult, LatentJoint, LayerInfo
from robustvae.models.distributions import (
    Bernoulli,
    DiagGaussian,
    DiscretizedLogisticMixture,
    at_least_float32,
    soft_clamp,
    sum_except_batch,
)


@dataclass
class _TopDown:
    state: Tensor
    posteriors: list[DiagGaussian | None]
    priors: list[DiagGaussian]
    zs: list[Tensor]


class DecoderBlock(nn.Module):
    """One stochastic layer: prior net, posterior net, z projection, residual block.

    ``width``: the decoder state's channels at this layer (``cfg.channels`` when None); a
    different width scales the blocks' bottleneck with it (``hidden / channels`` times it).
    """

    def __init__(self, cfg: ModelConfig, resolution: int, num_layers: int, width: int | None = None):
        super().__init__()
        C, H, z = cfg.channels, cfg.hidden, cfg.z_dim
        if width is not None and width != C:
            C, H = width, hidden_width(width, cfg.hidden, cfg.channels)
        s = residual_scale(num_layers)
        self.posterior = Block(2 * C, H, 2 * z, cfg, resolution)
        self.prior = Block(C, H, 2 * z + C, cfg, resolution, zero_last=True)
        self.z_proj = conv(z, C, 1, weight_norm=cfg.weight_norm, scale=s)
        self.resnet = Block(C, H, C, cfg, resolution, residual=True, last_scale=s)


class VDVAE(nn.Module):
    """Top-down hierarchical VAE with diagonal Gaussian layers."""

    arch = "vdvae"
    iw_shared_noise = 0  # iw_noise: no tensor shared by an image's samples

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.channels
        # encoder: input conv at image resolution, then blocks at each latent scale (fine -> coarse)
        self.in_conv = conv(cfg.image_channels, C, 3, weight_norm=cfg.weight_norm)
        n_enc = max(cfg.enc_blocks * len(cfg.latents), 1)
        self.enc_res = [r for r, _ in cfg.latents]
        self.enc_blocks = nn.ModuleList(
            nn.ModuleList(
                Block(C, cfg.hidden, C, cfg, r, residual=True, last_scale=residual_scale(n_enc))
                for _ in range(cfg.enc_blocks)
            )
            for r in self.enc_res
        )
        # decoder: top-down over the Gaussian layers (coarse -> fine)
        L = cfg.num_gaussian_layers
        self._ladder: list[LayerInfo] = []  # the Gaussian layers, in decoder order
        blocks = []
        for r, n in reversed(cfg.latents):
            for _ in range(n):
                self._ladder.append(LayerInfo(len(self._ladder) + 1, r, (cfg.z_dim, r, r)))
                blocks.append(DecoderBlock(cfg, r, L))
        self.dec_blocks = nn.ModuleList(blocks)
        self.layers: list[LayerInfo] = list(self._ladder)  # public: every stochastic layer, top first
        res_set = sorted({r for r, _ in cfg.latents} | {cfg.image_size})
        self.bias = nn.ParameterDict({str(r): nn.Parameter(torch.zeros(1, C, r, r)) for r in res_set})
        self.out_blocks = nn.ModuleList(
            Block(
                C, cfg.hidden, C, cfg, cfg.image_size, residual=True, last_scale=residual_scale(max(cfg.out_blocks, 1))
            )
            for _ in range(cfg.out_blocks)
        )
        if cfg.likelihood == "bernoulli":
            n_out = cfg.image_channels
        else:
            n_out = DiscretizedLogisticMixture.num_params(cfg.image_channels, cfg.num_mixtures)
        self.out_conv = conv(C, n_out, 1, weight_norm=cfg.weight_norm)
        self.use_channels_last()

    def fit_data(self, train_images: Tensor) -> None:  # noqa: ARG002
        """Nothing in VDVAE depends on the data before training (the contract's hook)."""

    def use_channels_last(self, enabled: bool = True) -> VDVAE:
        """Keep 4-D weights, hence the activations, in channels-last layout (the default) or not.

        Results agree within float rounding; oneDNN's channels-last convolutions made a CPU
        training step and an attack step 1.2-1.3x faster (``python -m benchmarks`` measures
        it on the device at hand). Subclasses call it again after adding their modules.
        """
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        self.channels_last = enabled
        return self

    # ------------------------------------------------------------------ structure

    @property
    def num_layers(self) -> int:
        """L: the number of stochastic layers (layer 1 is the top)."""
        return len(self.layers)

    @property
    def layer_shapes(self) -> list[tuple[int, int, int]]:
        return [info.shape for info in self.layers]

    @property
    def num_pixels(self) -> int:
        return self.cfg.image_channels * self.cfg.image_size**2

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _noise_shapes(self) -> list[tuple[int, ...]]:
        """Per layer, the per-image shape of the noise that drives its sampling."""
        return self.layer_shapes

    def make_noise(self, batch: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Standard-normal noise for every layer, to share between calls of ``reconstruct``.

        With a CPU ``generator`` the noise is drawn on the CPU and moved to the model's
        device, so the same seed gives the same noise on every device.
        """
        dev = self.device
        return [
            torch.randn((batch, *shape), generator=generator).to(dev)
            if generator is not None
            else torch.randn((batch, *shape), device=dev)
            for shape in self._noise_shapes()
        ]

    # ------------------------------------------------------------------ passes

    def _encoder(self, x: Tensor) -> dict[int, Tensor]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        h = self.in_conv((x * 2 - 1).contiguous(memory_format=fmt))  # weight-normed weights do not carry the layout
        acts: dict[int, Tensor] = {}
        for r, blocks in zip(self.enc_res, self.enc_blocks):
            if h.shape[-1] != r:
                h = F.avg_pool2d(h, h.shape[-1] // r)
            for b in blocks:
                h = b(h)
            acts[r] = h
        return acts

    def _width(self, r: int) -> int:  # noqa: ARG002 - a family with per-resolution widths overrides it
        """Channels of the decoder state at resolution ``r``."""
        return self.cfg.channels

    def _state_bias(self, r: int) -> Tensor | None:
        """The learnt start of the decoder state at resolution ``r`` (None: the model has none there, it starts at 0)."""
        return self.bias.get(str(r))

    def _start(self, batch: int, r: int) -> Tensor:
        """The decoder state at the top layer's resolution, before any layer."""
        b = self._state_bias(r)
        if b is None:
            return self.out_conv.weight.new_zeros(batch, self._width(r), r, r)
        return b.expand(batch, -1, -1, -1)

    def _upsample(self, state: Tensor, r: int, context: Tensor | None = None) -> Tensor:
        """The state carried to resolution ``r`` (nearest neighbour; its first ``_width(r)`` channels) plus
        ``r``'s learnt start."""
        up = F.interpolate(state[:, : self._width(r)], size=(r, r), mode="nearest")
        b = self._state_bias(r)
        return self._inject(up + b if b is not None else up, context)

    def _gaussian(self, mean: Tensor, raw: Tensor) -> DiagGaussian:
        """A layer's prior or posterior from its net's two halves: the second is a log-variance, soft-clamped."""
        return DiagGaussian(mean, soft_clamp(raw, self.cfg.logvar_limit))

    def _inject(self, state: Tensor, context: Tensor | None) -> Tensor:
        """Conditioning added to the decoder state at the top and after every change of scale.

        ``context`` is a conditioning image (B, C, H, W) in [0, 1] or None. VDVAE has
        none, so this returns ``state``; DCT-VAE adds its decoded context here.
        """
        return state

    def _top_down(
        self,
        batch: int,
        acts: dict[int, Tensor] | None,
        *,
        n_posterior: int,
        posterior_sample: bool = False,
        noise: list[Tensor] | None = None,
        temperature: float = 1.0,
        stop_after: int | None = None,
        context: Tensor | None = None,
        given: list[Tensor] | None = None,
    ) -> _TopDown:
        """Run the decoder top-down over the Gaussian layers.

        Layers ``< n_posterior`` (0-based) take z from the posterior (its mean, or a
        sample when ``posterior_sample``); the rest from the prior at ``temperature``.
        ``noise[i]`` drives the sample of layer i when given. ``context`` goes to
        :meth:`_inject` at the top and at every change of scale. ``stop_after`` ends the
        pass at that layer (1-based); when it takes its posterior, its prior net is not
        run (it only feeds the layers below), so ``priors`` and ``state`` end one layer earlier.
        ``given`` fixes z of the first ``len(given)`` layers that take no posterior (their
        priors are still computed, so ``log p(z)`` can be read off ``priors``).
        """
        cfg = self.cfg
        top = self._ladder[0].resolution
        state = self._inject(self._start(batch, top), context)
        posteriors: list[DiagGaussian | None] = []
        priors: list[DiagGaussian] = []
        zs: list[Tensor] = []
        for i, (info, blk) in enumerate(zip(self._ladder, self.dec_blocks)):
            if state.shape[-1] != info.resolution:
                state = self._upsample(state, info.resolution, context)
            q = None
            if i < n_posterior:
                qm, qlv = at_least_float32(blk.posterior(torch.cat([state, acts[info.resolution]], 1))).chunk(2, 1)
                q = self._gaussian(qm, qlv)
            stop = stop_after is not None and i + 1 >= stop_after
            if q is None or not stop:  # at a posterior stop layer the prior net only feeds the layers below
                pm, plv, xpp = blk.prior(state).split([cfg.z_dim, cfg.z_dim, state.shape[1]], 1)
                # distributions stay in float32 under autocast
                p = self._gaussian(at_least_float32(pm), at_least_float32(plv))
                state = state + xpp
                priors.append(p)
            eps = noise[i] if noise is not None else None
            if q is not None:
                z = q.sample(eps) if posterior_sample else q.mean
            elif given is not None and i < len(given):
                z = given[i]
            else:
                z = p.sample(eps, temperature)
            posteriors.append(q)
            zs.append(z)
            if stop:
                return _TopDown(state, posteriors, priors, zs)
            state = blk.resnet(state + blk.z_proj(z))
        if state.shape[-1] != cfg.image_size:
            state = self._upsample(state, cfg.image_size, context)
        for b in self.out_blocks:
            state = b(state)
        return _TopDown(state, posteriors, priors, zs)

    def likelihood(self, state: Tensor) -> Bernoulli | DiscretizedLogisticMixture:
        out = at_least_float32(self.out_conv(state))
        if self.cfg.likelihood == "bernoulli":
            return Bernoulli(out)
        return DiscretizedLogisticMixture(out, self.cfg.image_channels, self.cfg.num_mixtures, self.cfg.dmol_bits)

    def _check_input(self, x: Tensor) -> None:
        c, s = self.cfg.image_channels, self.cfg.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"expected images of shape (B, {c}, {s}, {s}) in [0, 1], got {tuple(x.shape)}")

    def _check_k(self, k: int | None) -> int:
        L = self.num_layers
        if k is None:
            return L
        if not 0 <= k <= L:
            raise ValueError(f"k must be in 0..{L} (this model has L={L} stochastic layers), got {k}")
        return k

    # ------------------------------------------------------------------ public API

    def encode(
        self, x: Tensor, k: int | None = None, sample: bool = False, noise: list[Tensor] | None = None
    ) -> list[DiagGaussian]:
        """Posteriors of the top ``k`` layers (all when None), top layer first.

        Each layer is conditioned on the posterior means of the layers above it
        (on posterior samples when ``sample``), so the default is deterministic.
        """
        self._check_input(x)
        return self._encode_ladder(x, self._check_k(k), sample, noise)

    def reconstruct(
        self,
        x: Tensor,
        k: int | None = None,
        temperature: float = 0.1,
        noise: list[Tensor] | None = None,
        posterior_sample: bool = False,
    ) -> Tensor:
        """Mean image from posterior means of the top ``k`` layers and the prior below.

        Layers below k are sampled from the prior at ``temperature`` with ``noise``
        (from :meth:`make_noise`); two calls with the same noise differ only through x.
        ``k=None`` uses the posterior for every layer. ``posterior_sample`` draws the top
        k layers from their posteriors (driven by the same ``noise``) instead of taking
        their means: the DCT-VAE authors' rule.
        """
        self._check_input(x)
        return self._decode_ladder(
            x, x.shape[0], self._check_k(k), temperature, noise, posterior_sample=posterior_sample
        )

    def latent_log_joint(
        self, x: Tensor, zs: list[Tensor], temperature: float = 0.1, noise: list[Tensor] | None = None
    ) -> LatentJoint:
        """The joint density over the top ``len(zs)`` Gaussian layers fixed at ``zs`` (see :class:`LatentJoint`).

        The layers below are drawn from the prior at ``temperature`` with ``noise`` (as in
        :meth:`reconstruct`), so the result is a function of ``zs`` alone: the target of an MCMC
        defence over the top layers, differentiable in ``zs`` and ``x``.
        """
        self._check_input(x)
        return self._latent_joint_ladder(x, zs, temperature, noise)

    def elbo(self, x: Tensor) -> ELBOResult:
        """Negative ELBO terms with one posterior sample per layer (analytic KLs)."""
        self._check_input(x)
        return self._elbo_result(*self._elbo_ladder(x))

    def forward(self, x: Tensor) -> ELBOResult:
        return self.elbo(x)

    def log_importance_weights(
        self, x: Tensor, num_samples: int, chunk: int | None = None, noise: list[Tensor] | None = None
    ) -> Tensor:
        """log p(x | z) + log p(z) - log q(z | x) at ``num_samples`` joint posterior samples: (K, B).

        ``noise`` (per Gaussian layer a (K, B, *shape) tensor, e.g. :meth:`iw_noise` of each image
        stacked on dim 1) drives the samples, so they do not depend on ``chunk`` or on the batch;
        without it they are drawn from torch's generator.
        """
        self._check_input(x)
        return self._log_weights_ladder(x, num_samples, chunk, noise=noise)

    def iw_noise(self, num_samples: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Standard-normal noise of ``num_samples`` importance samples of one image: (K, *shape) per Gaussian layer."""
        return [torch.randn((num_samples, *info.shape), generator=generator) for info in self._ladder]

    def nll_iwae(self, x: Tensor, num_samples: int, chunk: int | None = None) -> Tensor:
        """Per-image IWAE estimate of -log p(x) in nats (an upper bound on the NLL)."""
        logw = self.log_importance_weights(x, num_samples, chunk)
        return -(torch.logsumexp(logw, 0) - math.log(num_samples))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, noise: list[Tensor] | None = None) -> Tensor:
        """``n`` ancestral samples from the prior at ``temperature`` (mean images in [0, 1])."""
        return self._decode_ladder(None, n, 0, temperature, noise)

    # ------------------------------------------------------------------ the Gaussian ladder
    # The public methods above, for the Gaussian layers only and conditioned on an optional
    # context image; DCT-VAE puts its context layer on top of these.

    def _encode_ladder(
        self, x: Tensor, k: int, sample: bool, noise: list[Tensor] | None, context: Tensor | None = None
    ) -> list[DiagGaussian]:
        if k == 0:
            return []
        td = self._top_down(
            x.shape[0],
            self._encoder(x),
            n_posterior=k,
            posterior_sample=sample,
            noise=noise,
            stop_after=k,
            context=context,
        )
        return [q for q in td.posteriors if q is not None]

    def _decode_ladder(
        self,
        x: Tensor | None,
        batch: int,
        k: int,
        temperature: float,
        noise: list[Tensor] | None,
        context: Tensor | None = None,
        posterior_sample: bool = False,
    ) -> Tensor:
        acts = self._encoder(x) if k > 0 else None
        td = self._top_down(
            batch,
            acts,
            n_posterior=k,
            posterior_sample=posterior_sample,
            noise=noise,
            temperature=temperature,
            context=context,
        )
        return self._image(td.state)

    def _image(self, state: Tensor) -> Tensor:
        """The image a decoder state stands for (what reconstruct and sample return): the likelihood's mean."""
        return self.likelihood(state).mean

    def _latent_joint_ladder(
        self, x: Tensor, zs: list[Tensor], temperature: float, noise: list[Tensor] | None, context: Tensor | None = None
    ) -> LatentJoint:
        if not 1 <= len(zs) <= len(self._ladder):
            raise ValueError(f"need z for 1..{len(self._ladder)} top Gaussian layers, got {len(zs)}")
        td = self._top_down(
            x.shape[0], None, n_posterior=0, noise=noise, temperature=temperature, context=context, given=zs
        )
        log_prior = sum(sum_except_batch(p.log_prob(z)) for p, z in zip(td.priors, zs))
        lik = self.likelihood(td.state)
        return LatentJoint(log_prior, lik.log_prob(x), lik.mean)

    def _elbo_ladder(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(KL per Gaussian layer (B, L), -log p(x | z) (B,)) with one posterior sample per layer."""
        td = self._top_down(
            x.shape[0], self._encoder(x), n_posterior=len(self._ladder), posterior_sample=True, context=context
        )
        kl = torch.stack([sum_except_batch(q.kl(p)) for q, p in zip(td.posteriors, td.priors)], 1)
        return kl, -self.likelihood(td.state).log_prob(x)

    def _elbo_result(self, kl: Tensor, recon: Tensor) -> ELBOResult:
        nelbo = recon + kl.sum(1)
        return ELBOResult(kl=kl, recon=recon, nelbo=nelbo, bpd=nelbo / (self.num_pixels * math.log(2)))

    def _log_weights_ladder(
        self,
        x: Tensor,
        num_samples: int,
        chunk: int | None,
        context: Tensor | None = None,
        noise: list[Tensor] | None = None,
    ) -> Tensor:
        B = x.shape[0]
        chunk = chunk or num_samples
        acts1 = self._encoder(x)
        out = []
        done = 0
        while done < num_samples:
            n = min(chunk, num_samples - done)
            acts = {r: a.repeat(n, 1, 1, 1) for r, a in acts1.items()}
            xr = x.repeat(n, 1, 1, 1)
            ctx = context.repeat(n, 1, 1, 1) if context is not None else None
            eps = [e[done : done + n].reshape(n * B, *e.shape[2:]) for e in noise] if noise is not None else None
            td = self._top_down(
                B * n, acts, n_posterior=len(self._ladder), posterior_sample=True, noise=eps, context=ctx
            )
            logw = self.likelihood(td.state).log_prob(xr)
            for q, p, z in zip(td.posteriors, td.priors, td.zs):
                logw = logw + sum_except_batch(p.log_prob(z) - q.log_prob(z))
            out.append(logw.view(n, B))
            done += n
        return torch.cat(out, 0)
