"""The context codec as exact float64 algebra: its affine analysis map, its quantiser cells, its float32 error.

A codec (:class:`~robustvae.models.context.ContextCodec`) computes, per channel,
``v = (M x + b) / s`` (the normalised coefficients before the clamp), then snaps
``clamp(v, -1, 1)`` to the nearest of ``L = 2^bits`` levels. This module extracts
``M`` and ``b`` by probing the codec's own ``coefficients`` in float64 (so any
channel-separable affine codec works: the DCT block has ``b = 0``, the average-pooling
context ``b = -1``), the Gram matrix of its synthesis (for the decoded-context change),
and a rigorous bound on how far the codec's float32 arithmetic can stray from the
exact value (:func:`float32_margin`).

Quantiser cells come from the codec (:attr:`ContextCodec.boundaries`, ``n = L - 1``
edges in normalised units): level ``j`` owns the open cell between edges ``j - 1`` and
``j``; the end cells reach to -inf / +inf, which is exactly what the clamp does. For
robustvae's quantiser (level ``j`` at ``(2j - n) / n``) the edges are the midpoints
``(2k + 1 - n) / n``; for the authors' floor quantiser (``kuzina``) they are
``2k / L - 1``. A value *on* an edge may go either way (``torch.round`` sends it to the
even neighbour, ``floor`` up), so the analysis treats an edge as reachable from both
sides (conservative). The codec computes its own levels (:meth:`ContextCodec.level_of`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from robustvae.protocol import NORMS
from robustvae.models.context import ContextCodec

UNIT32 = 2.0**-24  # unit roundoff of float32

_MAPS: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}


def codec_of(obj) -> ContextCodec:
    """The context codec of a DCT-VAE (``obj.codec``), or ``obj`` itself when it is a codec."""
    codec = getattr(obj, "codec", obj)
    if not isinstance(codec, ContextCodec):
        raise TypeError(f"expected a ContextCodec or a model with .codec, got {type(obj).__name__}")
    return codec


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r} (known: {', '.join(NORMS)})")


def check_eps(eps: float) -> float:
    eps = float(eps)
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return eps


def _probe(codec: ContextCodec) -> tuple[Tensor, Tensor, Tensor]:
    """(M (K, P), b (K,), S (K, P)): one channel's analysis map, offset and synthesis map, in float64.

    Probed with the P = H * W unit images; cached per codec class and size (they do not
    depend on the fitted scale).
    """
    H = W = codec.image_size
    c = codec.size
    key = (type(codec), codec.channels, H, c)
    if key not in _MAPS:
        P, K = H * W, c * c
        with torch.no_grad():
            zero = torch.zeros(1, 1, H, W, dtype=torch.float64)
            basis = torch.eye(P, dtype=torch.float64).view(P, 1, H, W)
            b = codec.coefficients(zero).reshape(K)
            M = (codec.coefficients(basis).reshape(P, K) - b).T.contiguous()
            czero = torch.zeros(1, 1, c, c, dtype=torch.float64)
            cbasis = torch.eye(K, dtype=torch.float64).view(K, 1, c, c)
            S = (
                codec.linear_synthesis(cbasis).reshape(K, P) - codec.linear_synthesis(czero).reshape(1, P)
            ).contiguous()
        _MAPS[key] = (M, b, S)
    return _MAPS[key]


@dataclass(frozen=True)
class AffineContext:
    """A codec's pre-quantisation map ``v = (M x_c + b) / s`` per channel ``c``, in float64 on the CPU.

    ``M``: (K, P) with K = c * c coefficients and P = H * W pixels (the same for every
    channel); ``b``: (K,); ``scale``: (C, K), an exact float64 copy of ``codec.scale``;
    ``synth``: (K, P), the linear part of the synthesis; ``margin``: (C, K), the
    float32 error bound of :func:`float32_margin` in normalised units.
    """

    M: Tensor
    b: Tensor
    scale: Tensor
    synth: Tensor
    margin: Tensor
    levels: int
    channels: int
    height: int
    width: int
    bounds: Tensor  # (n,) the codec's cell edges in normalised units
    step: float  # distance between neighbouring levels in normalised units

    @property
    def n(self) -> int:
        """Number of quantiser steps (levels - 1)."""
        return self.levels - 1

    @property
    def spacing(self) -> float:
        """Distance between neighbouring levels in normalised units."""
        return self.step

    @property
    def weights(self) -> Tensor:
        """(C, K, P): d v / d x of every coefficient over its own channel's pixels."""
        return self.M[None] / self.scale[..., None]

    def values(self, x64: Tensor) -> Tensor:
        """(B, C, K) exact normalised coefficients (unclamped) of flattened images (B, C, P)."""
        return (x64 @ self.M.T + self.b) / self.scale

    def decoded_weights(self) -> Tensor:
        """(C, K): squared L2 change of the decoded context image per squared level step of each coefficient.

        ``||decode(y') - decode(y)||^2 = sum_i w_i (j'_i - j_i)^2`` for level indices j, j'.
        Needs a synthesis whose coefficient images are orthogonal (the DCT block: w = s^2
        spacing^2; nearest-neighbour upsampling: w = pixels-per-cell s^2 spacing^2 / 4).
        """
        G = self.synth @ self.synth.T
        diag = G.diagonal()
        off = G - torch.diag(diag)
        if off.abs().max() > 1e-9 * diag.abs().max().clamp(min=1e-300):
            raise NotImplementedError("the decoded-context change is separable only for orthogonal syntheses")
        return diag[None] * self.scale**2 * self.spacing**2

    def edges(self) -> Tensor:
        """(n,) interior cell edges in normalised units (the codec's ``boundaries``)."""
        return self.bounds

    def cell(self, j: Tensor) -> tuple[Tensor, Tensor]:
        """(lower, upper) edges of the cells of level indices ``j`` (the end cells reach -inf / +inf)."""
        e = torch.cat([self.bounds.new_tensor([-math.inf]), self.bounds, self.bounds.new_tensor([math.inf])])
        j = j.long()
        return e[j], e[j + 1]

    def reachable(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Lowest and highest level whose closed cell meets the interval [a, b] (an edge counts both ways)."""
        j_lo = torch.searchsorted(self.bounds, a.contiguous(), right=False)  # edges strictly below a
        j_hi = torch.searchsorted(self.bounds, b.contiguous(), right=True)  # edges at or below b
        return j_lo, j_hi


def float32_margin(M: Tensor, b: Tensor, scale: Tensor, size: int) -> Tensor:
    """(C, K) bound on |codec's float32 v - exact v| for any image in [0, 1], in normalised units.

    The codec's coefficients are dot products of length <= ``size`` (two matrix
    products for the DCT, one window sum for pooling) of float32 data, so their error
    is at most gamma_n |M| |x| per product (Higham, Accuracy and Stability, 3.1) plus
    the rounding of the float32 matrix, of the input image and of the offset; with
    |x| <= 1 this is at most rho (|M| 1 + |b|). The division by the scale, the ``+ 1``
    and the ``* n / 2`` of the quantiser add a few units of roundoff near a cell edge
    (where |v| < 1). rho = 4 gamma_n + 8 u is twice what the analysis needs.
    Valid for IEEE float32 arithmetic (not for TF32 matrix products).
    """
    u = UNIT32
    gamma = size * u / (1 - size * u)
    rho = 4 * gamma + 8 * u
    return rho * (M.abs().sum(1) + b.abs())[None] / scale + 8 * u


def affine_context(obj) -> AffineContext:
    """The :class:`AffineContext` of a codec (or of a DCT-VAE's ``.codec``) with its current scale."""
    codec = codec_of(obj)
    M, b, S = _probe(codec)
    C, H = codec.channels, codec.image_size
    scale = codec.scale.detach().to("cpu", torch.float64).reshape(C, -1)
    margin = float32_margin(M, b, scale, H)
    values = codec.level_values.double().cpu()
    steps = values.diff()
    if len(steps) and (steps - steps[0]).abs().max() > 1e-12:
        raise NotImplementedError(f"{type(codec).__name__}'s levels are not evenly spaced")
    step = float(steps[0]) if len(steps) else 2.0
    return AffineContext(M, b, scale, S, margin, codec.levels, C, H, H, codec.boundaries.double().cpu(), step)


def prepare(obj, x: Tensor) -> tuple[ContextCodec, AffineContext, Tensor, Tensor, Tensor]:
    """Codec, its affine map, the images as the codec sees them (float32) and flat in float64, their levels.

    Returns ``(codec, ac, x32 (B, C, H, W), x64 (B, C, P), clean_level (B, C, K))``; the
    clean level is the codec's own float32 level. Raises when the probed affine map does
    not reproduce the codec's coefficients on ``x`` (a codec that is not affine and
    channel-separable).
    """
    codec = codec_of(obj)
    ac = affine_context(codec)
    if x.dim() != 4 or tuple(x.shape[1:]) != (ac.channels, ac.height, ac.width):
        raise ValueError(f"expected images (B, {ac.channels}, {ac.height}, {ac.width}), got {tuple(x.shape)}")
    x32 = x.detach().float()
    x64 = x32.to("cpu", torch.float64)
    if x64.numel() and (x64.min() < 0 or x64.max() > 1):
        raise ValueError("images must lie in [0, 1]")
    B = x.shape[0]
    x64 = x64.reshape(B, ac.channels, -1)
    with torch.no_grad():
        direct = codec.coefficients(x64.view(B, ac.channels, ac.height, ac.width)).reshape(B, ac.channels, -1)
        if not torch.allclose(direct, x64 @ ac.M.T + ac.b, rtol=1e-9, atol=1e-9):
            raise NotImplementedError(f"{type(codec).__name__} is not an affine, channel-separable codec")
        clean = codec_level(codec, x32)
    return codec, ac, x32, x64, clean


def codec_level(codec: ContextCodec, x32: Tensor) -> Tensor:
    """(B, C, K) level indices of float32 images, computed by the codec itself (no dither), on the CPU."""
    if x32.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        warnings.warn("TF32 matrix products are on: the float32 rounding margin does not cover them", stacklevel=3)
    with torch.no_grad():
        dev = codec.scale.device
        return codec.level_of(codec.normalise(x32.to(dev))).reshape(x32.shape[0], codec.channels, -1).cpu()
