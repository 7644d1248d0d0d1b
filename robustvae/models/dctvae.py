"""DCT-VAE: the VDVAE ladder under a deterministic, quantised context with a diffusion prior.

Layer 1 is the context (``LayerInfo.kind == "context"``, shape (C, c, c)): the
quantised, normalised DCT block (or downsampled image) of x
(:mod:`robustvae.models.context`). Its posterior is a point mass, so its term in the
ELBO is -log p(context), bounded by the diffusion prior's L_vlb
(:mod:`robustvae.models.diffusion`). The decoded context image enters the decoder at
the top and after every change of scale (a convolution of the context resized to that
resolution, added to the state). Layers 2 .. L are VDVAE's Gaussian layers.

The public API is VDVAE's, with these meanings for the context layer:

* ``encode(x, k)[0]`` is a :class:`~robustvae.models.distributions.PointMass`:
  ``.mean`` is the quantised normalised context (what the decoder uses),
  ``.pre_quant`` the normalised coefficients before quantisation (differentiable in x).
* ``reconstruct(x, k=1)`` decodes from the context alone (every Gaussian layer from
  the prior at ``temperature``); ``k=0`` draws the context from the diffusion prior.
* ``make_noise(B)[0]`` has shape (B, T + 1, C, c, c) and drives the diffusion
  sampling deterministically (see :meth:`DiffusionPrior.sample`); the other entries are
  the Gaussian layers' standard-normal noise. ``temperature`` applies to the
  Gaussian layers only: contexts are always drawn from the diffusion prior itself.
* ``elbo(x).kl[:, 0]`` is the diffusion bound in nats (one uniformly drawn step,
  weighted by T, in training mode; every step in eval mode); the other columns are
  the Gaussian KLs.
* ``log_importance_weights`` subtracts the (all-steps) diffusion bound from every
  weight: the context is deterministic given x, so the result stays a bound.

Before training, :meth:`fit_data` sets the codec's scale from the training images.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustvae.config import ModelConfig
from robustvae.models.blocks import conv
from robustvae.models.context import build_codec
from robustvae.models.diffusion import DiffusionPrior
from robustvae.models.distributions import DiagGaussian, PointMass
from robustvae.models.contract import ELBOResult, LatentJoint, LayerInfo
from robustvae.models.vdvae import VDVAE


def _below(noise: list[Tensor] | None) -> list[Tensor] | None:
    """The Gaussian layers' part of a full noise list."""
    return noise[1:] if noise is not None else None


class DCTVAE(VDVAE):
    """VDVAE with a deterministic context layer on top and a diffusion prior over it."""

    arch = "dctvae"
    iw_shared_noise = 1  # iw_noise: the context bound's noise, one per image

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        C, c = cfg.image_channels, cfg.context_size
        self.codec = build_codec(cfg)
        self.prior = DiffusionPrior(
            (C, c, c),
            self.codec.levels,
            cfg.diffusion_steps,
            cfg.diffusion_beta_start,
            cfg.diffusion_beta_end,
            cfg.diffusion_channels,
            cfg.diffusion_scales,
            cfg.diffusion_res_blocks,
        )
        self.inject = nn.ModuleDict(
            {r: conv(C, cfg.channels, 3 if int(r) > 2 else 1, weight_norm=cfg.weight_norm) for r in self.bias}
        )
        context = LayerInfo(1, c, (C, c, c), kind="context", levels=self.codec.levels)
        self.layers = [context] + [dataclasses.replace(info, index=info.index + 1) for info in self._ladder]
        self.use_channels_last(self.channels_last)  # the codec, injections and diffusion UNet too

    # ------------------------------------------------------------------ context

    def fit_data(self, train_images: Tensor) -> None:
        """Fit the context scale on the training split (never validation or test)."""
        self.codec.fit(train_images)

    def _noise_shapes(self) -> list[tuple[int, ...]]:
        return [self.prior.noise_shape] + [info.shape for info in self._ladder]

    def _inject(self, state: Tensor, context: Tensor | None) -> Tensor:
        if context is None:
            raise ValueError("DCT-VAE's decoder needs its context image")
        r = state.shape[-1]
        ctx = F.adaptive_avg_pool2d(context, r) if context.shape[-1] != r else context
        return state + self.inject[str(r)](ctx * 2 - 1)

    def _prior_context(self, batch: int, noise: list[Tensor] | None) -> Tensor:
        return self.prior.sample(batch, noise[0] if noise is not None else None)

    # ------------------------------------------------------------------ public API

    def encode(
        self, x: Tensor, k: int | None = None, sample: bool = False, noise: list[Tensor] | None = None
    ) -> list[PointMass | DiagGaussian]:
        """The context's point mass, then the posteriors of Gaussian layers 2 .. k (all when None)."""
        self._check_input(x)
        k = self._check_k(k)
        if k == 0:
            return []
        code = self.codec(x)
        ladder = self._encode_ladder(x, k - 1, sample, _below(noise), self.codec.decode(code.value))
        return [PointMass(code.value, code.pre_quant), *ladder]

    def reconstruct(
        self,
        x: Tensor,
        k: int | None = None,
        temperature: float = 0.1,
        noise: list[Tensor] | None = None,
        posterior_sample: bool = False,
    ) -> Tensor:
        """Mean image from the context of x (k >= 1) or a prior context (k = 0), see the module docstring.

        ``posterior_sample`` draws Gaussian layers 2 .. k from their posteriors; the
        context is deterministic, so its "sample" is itself.
        """
        self._check_input(x)
        k = self._check_k(k)
        y = self.codec(x).value if k > 0 else self._prior_context(x.shape[0], noise)
        return self._decode_ladder(
            x,
            x.shape[0],
            max(k - 1, 0),
            temperature,
            _below(noise),
            self.codec.decode(y),
            posterior_sample=posterior_sample,
        )

    def latent_log_joint(
        self, x: Tensor, zs: list[Tensor], temperature: float = 0.1, noise: list[Tensor] | None = None
    ) -> LatentJoint:
        """VDVAE's joint over Gaussian layers 2 .. len(zs) + 1, given the context of x (a deterministic function
        of x: its posterior is the point mass the encoder returns, so there is nothing to sample)."""
        self._check_input(x)
        return self._latent_joint_ladder(x, zs, temperature, _below(noise), self.codec.decode(self.codec(x).value))

    def elbo(self, x: Tensor) -> ELBOResult:
        """-ELBO terms; ``kl[:, 0]`` is the diffusion bound on -log p(context) in nats."""
        self._check_input(x)
        y = self.codec(x).value
        kl, recon = self._elbo_ladder(x, self.codec.decode(y))
        context_nll = self.prior.bound(y, all_steps=not self.training)
        return self._elbo_result(torch.cat([context_nll[:, None], kl], 1), recon)

    def log_importance_weights(
        self, x: Tensor, num_samples: int, chunk: int | None = None, noise: list[Tensor] | None = None
    ) -> Tensor:
        """Gaussian layers' importance weights minus the context's diffusion bound: (K, B).

        ``noise``: the bound's (T, B, C, c, c), then the Gaussian layers' (see ``VDVAE.log_importance_weights``).
        """
        self._check_input(x)
        y = self.codec(x).value
        logw = self._log_weights_ladder(x, num_samples, chunk, self.codec.decode(y), _below(noise))
        return logw - self.prior.bound(y, all_steps=True, noise=noise[0] if noise is not None else None)

    def iw_noise(self, num_samples: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """The context bound's noise of one image (T, C, c, c), then the Gaussian layers' (K, *shape)."""
        return [
            torch.randn((self.prior.steps, *self.prior.shape), generator=generator),
            *super().iw_noise(num_samples, generator),
        ]

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, noise: list[Tensor] | None = None) -> Tensor:
        """``n`` samples: a context from the diffusion prior, the Gaussian layers at ``temperature``."""
        y = self._prior_context(n, noise)
        return self._decode_ladder(None, n, 0, temperature, _below(noise), self.codec.decode(y))
