"""Building blocks shared by the hierarchical VAEs: convolutions and bottleneck residual blocks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robustvae.config import ModelConfig

_ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}


def conv(
    cin: int, cout: int, k: int, *, weight_norm: bool = False, zero: bool = False, scale: float = 1.0, groups: int = 1
) -> nn.Module:
    """k x k same-padding convolution; ``zero`` zero-initialises it, ``scale`` shrinks its init."""
    c = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups)
    with torch.no_grad():
        if zero:
            c.weight.zero_()
            c.bias.zero_()
        elif scale != 1.0:
            c.weight.mul_(scale)
    if weight_norm:
        c = nn.utils.parametrizations.weight_norm(c)
    return c


class Block(nn.Module):
    """Bottleneck block: 1x1 -> 3x3 -> 3x3 -> 1x1 with pre-activations (VDVAE).

    With ``residual`` the input is added to the output. ``last_scale`` multiplies the
    initial weights of the last convolution (sqrt(1 / #blocks) for residual
    branches); ``zero_last`` zero-initialises it (prior nets start at N(0, I)).
    At resolutions <= 2 the 3x3 convolutions become 1x1, as in VDVAE.
    """

    def __init__(
        self,
        cin: int,
        hidden: int,
        cout: int,
        cfg: ModelConfig,
        resolution: int,
        *,
        residual: bool = False,
        last_scale: float = 1.0,
        zero_last: bool = False,
    ):
        super().__init__()
        k = 3 if resolution > 2 else 1
        wn = cfg.weight_norm
        self.residual = residual
        self.act = _ACTIVATIONS[cfg.activation]()
        self.c1 = conv(cin, hidden, 1, weight_norm=wn)
        self.c2 = conv(hidden, hidden, k, weight_norm=wn)
        self.c3 = conv(hidden, hidden, k, weight_norm=wn)
        self.c4 = conv(hidden, cout, 1, weight_norm=wn and not zero_last, zero=zero_last, scale=last_scale)

    def forward(self, x: Tensor) -> Tensor:
        a = self.act
        h = self.c4(a(self.c3(a(self.c2(a(self.c1(a(x))))))))
        return x + h if self.residual else h


def residual_scale(num_blocks: int) -> float:
    return math.sqrt(1.0 / max(num_blocks, 1))


def hidden_width(cin: int, hidden: int, channels: int) -> int:
    """A block's bottleneck width when its input is ``cin`` wide: ``cin`` times ``hidden / channels``."""
    return max(int(cin * (hidden / channels)), 1)
