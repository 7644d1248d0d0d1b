"""openai/vdvae's VAE (``arch="openai-vdvae"``): robustvae's VDVAE ladder with upstream's choices as options.

Written from the behaviour of openai/vdvae at commit :data:`UPSTREAM_COMMIT` (``vae.py``,
``vae_helpers.py``, ``hps.py``, ``data.py``). What differs from :class:`~robustvae.models.vdvae.VDVAE`:

* the encoder is a block string (``model.enc_layout``, upstream's ``enc_blocks``): residual
  blocks at the image resolution and down, ``RdF`` blocks average-pooling their output by F,
  narrower outputs zero-padded to the next resolution's width; the posterior of a layer at
  resolution r reads the last encoder output at r;
* per-resolution widths (``model.widths``, upstream's ``custom_width_str``); a finer state
  takes the first channels of the coarser one, and the blocks' bottleneck is
  ``hidden / channels`` of their width;
* the decoder state starts from a learnt tensor only at resolutions <= ``model.bias_max_res``
  (upstream's ``no_bias_above``), from zeros above; the final state is scaled and shifted
  per channel (``gain``, ``shift``) before the output convolution;
* the second half of every prior and posterior net is a log standard deviation, used as is
  (no clamp);
* the encoder sees ``(255 x - pixel_mean) / pixel_std`` (upstream's per-dataset constants);
* the likelihood is the discretised logistic mixture in upstream's per-channel layout, its
  levels on upstream's grid (8 bits, or the 5-bit FFHQ-256 grid), bins under probability 1e-5
  scored at their centre (:class:`~robustvae.models.distributions.DiscretizedLogisticMixture`);
* ``reconstruct`` and ``sample`` return :meth:`~robustvae.models.distributions.DiscretizedLogisticMixture.top_component_image`:
  per pixel the mean of the component with the largest logit, the channel coefficients
  applied in order, each channel clipped to [-1, 1], mapped to [0, 1].

Images are (B, 3, H, W) floats in [0, 1]; an 8-bit image u maps to x = u / 255, so 255 x is
the integer upstream's data pipeline feeds (exact in float32 for every u).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustvae.config import ModelConfig, parse_block_string
from robustvae.models.blocks import Block, conv, hidden_width, residual_scale
from robustvae.models.contract import LayerInfo
from robustvae.models.distributions import (
    DiagGaussian,
    DiscretizedLogisticMixture,
    at_least_float32,
    quantise_levels,
)
from robustvae.models.vdvae import VDVAE, DecoderBlock

UPSTREAM_COMMIT = "ea35b490313bc33e7f8ac63dd8132f3cc1a729b4"
TINY_BIN = 1e-5  # upstream scores a bin whose probability is not above this by its centre's density


def encoder_input(x: Tensor, cfg: ModelConfig) -> Tensor:
    """What the encoder sees: (255 x - pixel_mean) / pixel_std, computed as upstream does, (u + shift) * scale."""
    return (x * 255 - cfg.pixel_mean) * (1 / cfg.pixel_std)


def likelihood_target(x: Tensor, cfg: ModelConfig) -> Tensor:
    """The levels on [-1, 1] the likelihood scores for images ``x`` in [0, 1] (upstream's ``x / 127.5 - 1``; the
    5-bit FFHQ-256 first clears the 3 lowest bits)."""
    return quantise_levels(x, cfg.dmol_bits, "uint8")


class OpenAIVDVAE(VDVAE):
    """openai/vdvae's model; every method of the contract is VDVAE's (see the module docstring for the differences)."""

    arch = "openai-vdvae"
    iw_shared_noise = 0

    def __init__(self, cfg: ModelConfig):
        nn.Module.__init__(self)
        self.cfg = cfg
        w = cfg.width_at
        # encoder: a 3x3 input convolution, then the block string (residual branches scaled by sqrt(1 / #blocks))
        enc = parse_block_string(cfg.enc_layout)
        self._enc_down = [b.down for b in enc]
        self.in_conv = conv(cfg.image_channels, w(cfg.image_size), 3)
        s = residual_scale(len(enc))
        self.enc_blocks = nn.ModuleList(
            Block(
                w(b.resolution),
                hidden_width(w(b.resolution), cfg.hidden, cfg.channels),
                w(b.resolution),
                cfg,
                b.resolution,
                residual=True,
                last_scale=s,
            )
            for b in enc
        )
        # decoder: the Gaussian layers coarse -> fine, then the per-channel gain and shift, then the output convolution
        L = cfg.num_gaussian_layers
        self._ladder: list[LayerInfo] = []
        blocks = []
        for r, n in reversed(cfg.latents):
            for _ in range(n):
                self._ladder.append(LayerInfo(len(self._ladder) + 1, r, (cfg.z_dim, r, r)))
                blocks.append(DecoderBlock(cfg, r, L, width=w(r)))
        self.dec_blocks = nn.ModuleList(blocks)
        self.layers: list[LayerInfo] = list(self._ladder)
        top = cfg.bias_max_res
        self.bias = nn.ParameterDict(
            {
                str(r): nn.Parameter(torch.zeros(1, w(r), r, r))
                for r in sorted({r for r, _ in cfg.latents})
                if top is None or r <= top
            }
        )
        self.out_blocks = nn.ModuleList()
        self.gain = nn.Parameter(torch.ones(1, cfg.channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, cfg.channels, 1, 1))
        self.out_conv = conv(cfg.channels, DiscretizedLogisticMixture.num_params(3, cfg.num_mixtures), 1)
        with torch.no_grad():  # upstream starts every convolution's bias at zero
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    m.bias.zero_()
        self.use_channels_last()

    def _width(self, r: int) -> int:
        return self.cfg.width_at(r)

    def _encoder(self, x: Tensor) -> dict[int, Tensor]:
        """Encoder features by resolution: the last block output at each (upstream's ``activations``)."""
        cfg = self.cfg
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        h = self.in_conv(encoder_input(x, cfg).contiguous(memory_format=fmt))
        acts = {h.shape[-1]: h}
        for blk, down in zip(self.enc_blocks, self._enc_down):
            h = blk(h)
            if down is not None:
                h = F.avg_pool2d(h, down)
            width = cfg.width_at(h.shape[-1])
            if h.shape[1] < width:
                h = F.pad(h, (0, 0, 0, 0, 0, width - h.shape[1]))
            acts[h.shape[-1]] = h
        return acts

    def _gaussian(self, mean: Tensor, raw: Tensor) -> DiagGaussian:
        """Upstream's nets give the log standard deviation: the variance is exp(2 raw), unclamped."""
        return DiagGaussian(mean, 2 * raw)

    def likelihood(self, state: Tensor) -> DiscretizedLogisticMixture:
        out = at_least_float32(self.out_conv(state * self.gain + self.shift))
        return DiscretizedLogisticMixture(
            out, 3, self.cfg.num_mixtures, self.cfg.dmol_bits, layout="per-channel", grid="uint8", tiny_bin=TINY_BIN
        )

    def _image(self, state: Tensor) -> Tensor:
        return self.likelihood(state).top_component_image()
