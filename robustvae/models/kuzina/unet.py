"""The authors' diffusion UNet (guided-diffusion layout), written from SPEC section 3.3.

Sinusoidal time embedding of the raw step index (:func:`~robustvae.models.diffusion.timestep_embedding`),
two linear layers of the base width, residual blocks with scale-shift GroupNorm(16),
legacy head-first qkv attention in the middle block only, a stride-2 convolution down
and nearest-x2 + convolution up between levels, skip connections popped last-in
first-out, and zero-initialised output convolutions. Attribute names follow the
authors' state-dict keys (``input_blocks.{i}.0``, ``middle_block.1.qkv``, ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustvae.models.diffusion import timestep_embedding

GROUPS = 16


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class _Step(nn.Module):
    """A layer that may or may not take the time embedding (one slot of the UNet's sequences)."""

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:  # noqa: ARG002
        raise NotImplementedError


class ResBlock(_Step):
    """GN-SiLU-conv, then GN scaled and shifted by the embedding, SiLU, dropout, conv; plus the skip."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(GROUPS, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * cout))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(GROUPS, cout), nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(cout, cout, 3, padding=1))
        )
        self.skip_connection = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        r = self.in_layers(h)
        scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, 1)
        r = self.out_layers[0](r) * (1 + scale) + shift
        return self.skip_connection(h) + self.out_layers[1:](r)


class Attention(_Step):
    """Self-attention over positions; heads split first, then q | k | v inside each head (legacy order)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(GROUPS, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:  # noqa: ARG002
        B, C, H, W = h.shape
        x = h.reshape(B, C, H * W)
        ch = C // self.heads
        q, k, v = self.qkv(self.norm(x)).reshape(B * self.heads, 3 * ch, H * W).split(ch, dim=1)
        s = 1 / math.sqrt(math.sqrt(ch))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s).float(), dim=-1).to(q.dtype)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(B, C, H * W)
        return (x + self.proj_out(a)).reshape(B, C, H, W)


class Downsample(_Step):
    """A stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:  # noqa: ARG002
        return self.op(h)


class Upsample(_Step):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:  # noqa: ARG002
        return self.conv(F.interpolate(h, scale_factor=2, mode="nearest"))


class Steps(nn.ModuleList):
    """Layers applied in order; those that take the time embedding get it."""

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        for m in self:
            h = m(h, emb) if isinstance(m, _Step) else m(h)
        return h


class KuzinaUNet(nn.Module):
    """``in_channels`` -> ``out_channels`` at every level of ``channel_mult``; ``forward(y, t)`` with t = 0 .. T-1."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int,
        channel_mult: tuple[int, ...],
        res_blocks: int,
        heads: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.channels = channels
        self.time_embed = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        first = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.input_blocks = nn.ModuleList([Steps([first])])
        skips, ch = [channels], channels
        for level, mult in enumerate(channel_mult):
            for _ in range(res_blocks):
                self.input_blocks.append(Steps([ResBlock(ch, mult * channels, channels, dropout)]))
                ch = mult * channels
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.input_blocks.append(Steps([Downsample(ch)]))
                skips.append(ch)
        self.middle_block = Steps(
            [ResBlock(ch, ch, channels, dropout), Attention(ch, heads), ResBlock(ch, ch, channels, dropout)]
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(ch + skips.pop(), mult * channels, channels, dropout)]
                ch = mult * channels
                if level and i == res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(Steps(layers))
        self.out = nn.Sequential(nn.GroupNorm(GROUPS, ch), nn.SiLU(), _zero(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        emb = self.time_embed(timestep_embedding(t, self.channels).to(y.dtype))
        hs, h = [], y
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], 1), emb)
        return self.out(h)
