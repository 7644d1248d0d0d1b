"""The residual blocks and the variance of Kuzina & Tomczak's ladder VAE (docs/kuzina.md, SPEC sections 2.1-2.4).

Module names follow the authors' state-dict keys (``net.{i}.net.{j}``, ``beta``,
``skip``), so their checkpoints load with a short, explicit key map
(:mod:`robustvae.models.kuzina.convert`). Convolutions come from
:func:`robustvae.models.blocks.conv` (weight norm over every dimension but the first,
as the authors' legacy ``weight_norm`` does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustvae.models.blocks import conv

SOFTPLUS_BETA = 0.7
LOGVAR_RANGE = (-5.0, 0.0)


def kuzina_logvar(raw: Tensor) -> Tensor:
    """clamp(log softplus_0.7(raw), -5, 0): the authors' log-variance of every ladder prior and posterior."""
    return torch.log(F.softplus(raw, beta=SOFTPLUS_BETA)).clamp(*LOGVAR_RANGE)


class _Unit(nn.Module):
    """One convolution with its SiLU before (encoder blocks) or after it (decoder blocks), as ``net``."""

    def __init__(self, layer: nn.Module, act_first: bool):
        super().__init__()
        self.net = nn.Sequential(nn.SiLU(), layer) if act_first else nn.Sequential(layer, nn.SiLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _Gated(nn.Module):
    """``skip(x) + beta * branch(x)`` with a learned scalar gate that starts at 0, or the branch alone."""

    def __init__(self, cin: int, cout: int, residual: bool):
        super().__init__()
        self.residual = residual
        if residual:
            self.beta = nn.Parameter(torch.zeros(1))
            self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.net(x)
        return self.skip(x) + self.beta * h if self.residual else h


class EncoderBlock(_Gated):
    """Pre-activation 1x1 -> 3x3 -> 3x3 -> 1x1 branch (a SiLU before every convolution), gated residual."""

    def __init__(self, cin: int, hid: int, cout: int, weight_norm: bool):
        super().__init__(cin, cout, residual=True)
        shapes = [(cin, hid, 1), (hid, hid, 3), (hid, hid, 3), (hid, cout, 1)]
        self.net = nn.Sequential(*(_Unit(conv(a, b, k, weight_norm=weight_norm), True) for a, b, k in shapes))


class DecoderBlock2x3(_Gated):
    """Post-activation 1x1 -> 3x3 -> 3x3 -> 1x1 branch (no activation after the last), gated residual or none."""

    def __init__(self, cin: int, hid: int, cout: int, weight_norm: bool, residual: bool):
        super().__init__(cin, cout, residual)
        units = [
            _Unit(conv(a, b, k, weight_norm=weight_norm), False)
            for a, b, k in [(cin, hid, 1), (hid, hid, 3), (hid, hid, 3)]
        ]
        self.net = nn.Sequential(*units, conv(hid, cout, 1))


class PriorNet(_Gated):
    """The prior net: 1x1 -> depthwise 5x5 -> 1x1, no residual; its last convolution starts at zero."""

    def __init__(self, cin: int, hid: int, cout: int, weight_norm: bool):
        super().__init__(cin, cout, residual=False)
        self.net = nn.Sequential(
            _Unit(conv(cin, hid, 1, weight_norm=weight_norm), False),
            _Unit(conv(hid, hid, 5, weight_norm=weight_norm, groups=hid), False),
            conv(hid, cout, 1, zero=True),
        )
