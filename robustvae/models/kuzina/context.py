"""The authors' DCT context: a variant of :class:`~robustvae.models.context.ContextCodec` (SPEC sections 1, 4.1, 4.2).

What differs from robustvae's DCT codec, each as an override:

* the transform is the *unnormalised* DCT-II (factor 2 per axis, DC = 4 sum u), applied to
  u = (x + 1) / 2 of the image x on [-1, 1], or to x itself when no pixel of the image is
  below 0 (their dataset's conditional); computed here as the orthonormal
  :func:`~robustvae.models.context.dct2` times fixed per-frequency factors;
* the scale is max over the training images of |floor(coefficient)| (floor, not abs);
* the quantiser is k = floor(2^b a + n), a = (v + 1) / 2 capped at 0.999, with a dither
  n = (u - 1/2) / 4 of a quarter cell that is never subtracted: q = 2 (k + 1/2) / 2^b - 1
  takes 2^b + 2 values (the outer two only through the dither). Dither off means n = 0;
* the decoded image is clamp(IDCT(zero-padded q * scale), 0, 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robustvae.data import to_float
from robustvae.models import rng
from robustvae.models.context import ContextCodec, ContextCode, dct2, idct2


def _factors(n: int, size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(size, size) ratios of the unnormalised DCT-II (factor 2 per axis) to the orthonormal one."""
    a = torch.full((size,), math.sqrt(2.0 * n), dtype=torch.float64)
    a[0] = 2.0 * math.sqrt(n)
    return (a[:, None] * a[None, :]).to(dtype=dtype, device=device)


def signed_image(x01: Tensor) -> Tensor:
    """[0, 1] images as the authors' data pipeline gives them to the model: (x - 0.5) / 0.5 on [-1, 1]."""
    return (x01 - 0.5) / 0.5


class KuzinaDCTContext(ContextCodec):
    """The authors' context: top-left c x c block of the unnormalised DCT, floor-scaled, quarter-cell dither."""

    def __init__(self, channels: int, image_size: int, size: int, bits: int):
        super().__init__(channels, image_size, size, bits)
        self.bits = bits
        self.reachable_levels = 2**bits + 2

    def coefficients(self, x: Tensor) -> Tensor:
        """Unnormalised DCT-II block of the image on [-1, 1] mapped by their dataset's rule."""
        xs = signed_image(x)
        dark = xs.flatten(1).amin(1).lt(0).view(-1, 1, 1, 1)
        u = torch.where(dark, (xs + 1) / 2, xs)
        c = self.size
        return dct2(u)[..., :c, :c] * _factors(self.image_size, c, u.dtype, u.device)

    def synthesise(self, coef: Tensor) -> Tensor:
        """clamp(inverse unnormalised DCT of the zero-padded block, 0, 1)."""
        return self.linear_synthesis(coef).clamp(0, 1)

    @torch.no_grad()
    def fit(self, images: Tensor, batch_size: int = 1000) -> None:
        """scale = max over ``images`` (the training split) of |floor(coefficient)|, as the authors' dataset fits it."""
        top = torch.zeros_like(self.scale)
        for i in range(0, images.shape[0], batch_size):
            xb = to_float(images[i : i + batch_size]).to(self.scale.device).float()
            top = torch.maximum(top, self.coefficients(xb).floor().abs().amax(0))
        self.scale.copy_(top.clamp(min=1e-12))

    @staticmethod
    def _unit(v: Tensor) -> Tensor:
        """a = (v + 1) / 2 with a = 1 moved to 0.999 (so v = 1 stays in the top cell)."""
        a = (v + 1) / 2
        return torch.where(a >= 1, torch.full_like(a, 0.999), a)

    def quantise(self, u: Tensor, dither: bool | Tensor = False, straight_through: bool | None = None) -> Tensor:
        """k = floor(2^b a + n); ``dither``: False (n = 0), True (a fresh U[0,1) draw) or the draw itself."""
        a = self._unit(u)
        if isinstance(dither, Tensor):
            n = 0.25 * (dither * 2 - 1)
        else:
            n = 0.25 * (rng.rand_like(a) * 2 - 1) if dither else torch.zeros_like(a)
        q = ((torch.floor(a * 2.0**self.bits + n) + 0.5) / 2.0**self.bits) * 2 - 1
        st = self.straight_through if straight_through is None else straight_through
        return u + (q - u).detach() if st else q

    def forward(self, x: Tensor, dither: bool | Tensor = False) -> ContextCode:
        """The context of images ``x`` in [0, 1], with the dither off (default), drawn (True) or given."""
        v = self.normalise(x)
        return ContextCode(pre_quant=v, value=self.quantise(v, dither=dither))

    @property
    def level_values(self) -> Tensor:
        """(2^b,) the deterministic quantiser's outputs 2 (k + 1/2) / 2^b - 1, k = 0 .. 2^b - 1 (float64, CPU).

        Its cell edges (:attr:`boundaries`, the midpoints) are 2 k / 2^b - 1, k = 1 .. 2^b - 1: k = floor(2^b a).
        """
        k = torch.arange(self.levels, dtype=torch.float64)
        return (2 * k + 1) / self.levels - 1

    def level_of(self, u: Tensor) -> Tensor:
        """k = floor(2^b a) of :meth:`quantise` without dither, as level indices 0 .. 2^b - 1."""
        return torch.floor(self._unit(u) * 2.0**self.bits).clamp(0, self.levels - 1).long()

    def linear_synthesis(self, coef: Tensor) -> Tensor:
        """The inverse unnormalised DCT of the zero-padded block, before the clamp to [0, 1]."""
        pad = self.image_size - self.size
        ortho = coef / _factors(self.image_size, self.size, coef.dtype, coef.device)
        return idct2(torch.nn.functional.pad(ortho, (0, pad, 0, pad)))

    def affine_radius(self, x: Tensor, norm: str) -> Tensor:
        """(B,) budget at which every pixel of an image may reach 1/2 (on [-1, 1]: 0), where :meth:`coefficients`
        switches from u = (x + 1) / 2 of the signed image to u = x (their dataset's rule); inf never."""
        need = (0.5 - x.detach().double().cpu().flatten(1)).clamp(min=0)
        return need.amax(1) if norm == "linf" else need.norm(dim=1)

    def output_values(self) -> Tensor:
        """Every value the quantiser can output, lowest first: 2 (k + 1/2) / 2^b - 1 for k = -1 .. 2^b."""
        k = torch.arange(-1, 2**self.bits + 1, dtype=torch.float32, device=self.scale.device)
        return ((k + 0.5) / 2.0**self.bits) * 2 - 1

    def log_prob(self, v: Tensor, q: Tensor) -> Tensor:
        """Elementwise log P(q | v) under the uniform dither: the posterior of the context given the image."""
        s = self._unit(v) * 2.0**self.bits
        k = torch.round((q + 1) / 2 * 2.0**self.bits - 0.5)
        lo = torch.maximum(k - s, torch.full_like(s, -0.25))
        hi = torch.minimum(k + 1 - s, torch.full_like(s, 0.25))
        return torch.log(((hi - lo) / 0.5).clamp(min=1e-12))
