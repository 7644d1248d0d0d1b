"""DCT-VAE's deterministic context (Appendix E and F of the paper).

* :func:`dct2` / :func:`idct2`: the orthonormal 2-D DCT-II over the last two axes and
  its inverse (equal to ``scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))``),
  as two matrix products with a DCT matrix built once per (size, dtype, device).
* :class:`DCTContext`: the c x c lowest frequencies of each channel of an image in
  [0, 1], divided by a per-coefficient scale, clamped to [-1, 1] and quantised to
  2^b levels; decoding multiplies back, zero-pads to H x W and inverts the DCT.
* :class:`DownsampleContext` (Appendix F): c x c average pooling (centred to [-1, 1])
  with the same scale, clamp and quantiser; decoding upsamples (nearest neighbour).

The scale is the largest |coefficient| over the **training split only**
(:meth:`ContextCodec.fit`; statistics of held-out data would leak into the model), kept in the buffer ``scale`` so that it
travels in the state dict and every checkpoint. Until ``fit`` is called it is 1.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustvae.pixels import to_float
from robustvae.models import rng
from robustvae.models.distributions import level_index, snap_to_levels

if TYPE_CHECKING:  # annotations only: importing the config here would close a cycle through certify and attacks
    from robustvae.config import ModelConfig

_DCT_MATRICES: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def dct_matrix(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """The orthonormal DCT-II matrix D (n x n): ``D @ v`` transforms a vector, ``D.T`` inverts it.

    Built in float64 once per (n, dtype, device) and cached.
    """
    key = (n, dtype, torch.device(device))
    d = _DCT_MATRICES.get(key)
    if d is None:
        k = torch.arange(n, dtype=torch.float64)[:, None]
        i = torch.arange(n, dtype=torch.float64)[None, :]
        m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
        m[0] /= math.sqrt(2.0)
        d = _DCT_MATRICES[key] = m.to(dtype=dtype, device=key[2])
    return d


def dct2(x: Tensor) -> Tensor:
    """Orthonormal 2-D DCT-II over the last two axes (any leading batch/channel axes)."""
    h, w = x.shape[-2:]
    return dct_matrix(h, x.dtype, x.device) @ x @ dct_matrix(w, x.dtype, x.device).T


def idct2(X: Tensor) -> Tensor:
    """Inverse of :func:`dct2` (the orthonormal DCT-III over the last two axes)."""
    h, w = X.shape[-2:]
    return dct_matrix(h, X.dtype, X.device).T @ X @ dct_matrix(w, X.dtype, X.device)


def _float32(x: Tensor):
    """Autocast off: the codec's transforms and quantiser run in float32 on every device."""
    return torch.autocast(x.device.type, enabled=False) if x.device.type in ("cuda", "cpu") else nullcontext()


@dataclass
class ContextCode:
    """The context of a batch of images."""

    pre_quant: Tensor  # (B, C, c, c) normalised coefficients in [-1, 1] before quantisation; differentiable in x
    value: Tensor  # (B, C, c, c) the quantised context on the 2^b levels: what the decoder and the prior see


class ContextCodec(nn.Module):
    """Image -> normalised c x c coefficients -> quantised context -> image.

    Subclasses define the linear analysis (:meth:`coefficients`) and synthesis
    (:meth:`synthesise`); this class adds the fitted scale, the clamp and the
    quantiser. The quantiser's levels are 2^b evenly spaced values -1, ..., 1
    (:func:`~robustvae.models.distributions.snap_to_levels`). With ``dither`` it adds
    uniform noise of one level's width before rounding, in training mode only (the
    result still lies on the levels). ``straight_through`` (attribute, or per call)
    passes the quantiser's gradient through unchanged; by default its gradient is 0.
    """

    def __init__(self, channels: int, image_size: int, size: int, bits: int, dither: bool = False):
        super().__init__()
        self.channels, self.image_size, self.size = channels, image_size, size
        self.levels = 2**bits
        self.dither = dither
        self.straight_through = False
        self.register_buffer("scale", torch.ones(channels, size, size))

    def coefficients(self, x: Tensor) -> Tensor:
        """Unscaled (B, C, c, c) coefficients of images in [0, 1]."""
        raise NotImplementedError

    def synthesise(self, coef: Tensor) -> Tensor:
        """(B, C, H, W) image from unscaled coefficients."""
        raise NotImplementedError

    @torch.no_grad()
    def fit(self, images: Tensor, batch_size: int = 1000) -> None:
        """Set ``scale`` to the largest |coefficient| over ``images`` (the training split only).

        ``images``: (N, C, H, W) floats in [0, 1] or uint8 0..255, on any device.
        Coefficients that are 0 on every image get a tiny scale (their context is 0).
        """
        top = torch.zeros_like(self.scale)
        for i in range(0, images.shape[0], batch_size):
            xb = to_float(images[i : i + batch_size]).to(self.scale.device)
            with _float32(xb):
                top = torch.maximum(top, self.coefficients(xb).abs().amax(0))
        self.scale.copy_(top.clamp(min=1e-12))

    def normalise(self, x: Tensor) -> Tensor:
        """Coefficients divided by the scale and clamped to [-1, 1] (the quantiser's input)."""
        with _float32(x):
            return (self.coefficients(x.float()) / self.scale).clamp(-1, 1)

    def quantise(self, u: Tensor, dither: bool = False, straight_through: bool | None = None) -> Tensor:
        """Snap ``u`` in [-1, 1] to the 2^b levels (after uniform dither of one level's width if ``dither``)."""
        if dither:
            width = 2.0 / (self.levels - 1)
            u = u + (rng.rand_like(u) - 0.5) * width
        q = snap_to_levels(u, self.levels)
        st = self.straight_through if straight_through is None else straight_through
        return u + (q - u).detach() if st else q

    def forward(self, x: Tensor) -> ContextCode:
        """The context of images ``x`` in [0, 1]; dithered only in training mode when configured."""
        u = self.normalise(x)
        return ContextCode(pre_quant=u, value=self.quantise(u, dither=self.training and self.dither))

    def decode(self, y: Tensor) -> Tensor:
        """Image (B, C, H, W) of a (quantised) normalised context ``y``."""
        with _float32(y):
            return self.synthesise(y.float() * self.scale)

    # ------------------------------------------------------------------ the quantiser, for exact analysis

    @property
    def level_values(self) -> Tensor:
        """(levels,) the values the deterministic quantiser outputs, lowest first, in normalised units (float64, CPU)."""
        n = self.levels - 1
        return (2 * torch.arange(self.levels, dtype=torch.float64) - n) / n

    @property
    def boundaries(self) -> Tensor:
        """(levels - 1,) the quantiser's cell edges in normalised units (float64, CPU), ascending.

        Level j owns the cell between ``boundaries[j - 1]`` and ``boundaries[j]``; the end
        cells reach to -inf / +inf (the clamp). With ``scale`` (coefficient units per
        normalised unit) they let anyone check a context by hand:
        ``level = #{edges below coefficients(x) / scale}`` (a value on an edge may go either way).
        """
        v = self.level_values
        return (v[1:] + v[:-1]) / 2

    def level_of(self, u: Tensor) -> Tensor:
        """Level indices 0 .. levels-1 of normalised values ``u`` under the deterministic quantiser (no dither)."""
        return level_index(snap_to_levels(u, self.levels), self.levels)

    def linear_synthesis(self, coef: Tensor) -> Tensor:
        """The affine part of :meth:`synthesise` (the same here; a codec that clips its output leaves the clip out)."""
        return self.synthesise(coef)

    def affine_radius(self, x: Tensor, norm: str) -> Tensor:
        """(B,) the smallest budget at which a perturbation of ``x`` (within [0, 1]) may leave the region where
        :meth:`coefficients` is the affine map it is at ``x``; inf for a codec that is affine everywhere."""
        return torch.full((x.shape[0],), math.inf, dtype=torch.float64)


class DCTContext(ContextCodec):
    """The c x c lowest-frequency block of each channel's orthonormal 2-D DCT."""

    def coefficients(self, x: Tensor) -> Tensor:
        return dct2(x)[..., : self.size, : self.size]

    def synthesise(self, coef: Tensor) -> Tensor:
        pad = self.image_size - self.size
        return idct2(F.pad(coef, (0, pad, 0, pad)))


class DownsampleContext(ContextCodec):
    """Appendix F: c x c average pooling of the image mapped to [-1, 1]; nearest-neighbour decoding."""

    def coefficients(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, self.size) * 2 - 1

    def synthesise(self, coef: Tensor) -> Tensor:
        return (F.interpolate(coef, size=(self.image_size, self.image_size), mode="nearest") + 1) / 2


CODECS: dict[str, type[ContextCodec]] = {"dct": DCTContext, "downsample": DownsampleContext}


def build_codec(cfg: ModelConfig) -> ContextCodec:
    """The context codec ``cfg.context`` names, sized by the config."""
    return CODECS[cfg.context](
        cfg.image_channels, cfg.image_size, cfg.context_size, cfg.context_bits, cfg.context_dither
    )
