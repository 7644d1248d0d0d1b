"""Image metrics: MS-SSIM (two variants) and PSNR.

Divergences between posteriors belong to the posteriors themselves
(:meth:`robustvae.models.distributions.DiagGaussian.compare`).

``ms_ssim`` scores a batch at once and returns one value per image.

* ``variant="kuzina"`` (default; docs/protocol.md) reproduces the MS-SSIM of the
  DCT-VAE authors' attack code: Gaussian window (sigma 1.5) of size
  min(window_size, H, W) at each level, valid convolution, C1 = (0.01 L)^2,
  C2 = (0.03 L)^2, 5 levels with weights [0.0448, 0.2856, 0.3001, 0.2363, 0.1333],
  2x2 average pooling (floor) between levels, ssim and cs the means of their maps
  over channels and pixels, each clipped at 0, and
  result = prod_{i<5} cs_i^{w_i} * ssim_5^{4 w_5} (the last level enters four times,
  as in their code). Their code averaged cs over the whole batch; here every image
  is scored on its own.
* ``variant="standard"`` is Wang et al. (2003), prod_{i<5} cs_i^{w_i} * ssim_5^{w_5},
  per channel then averaged over channels. Where ``pytorch_msssim.ms_ssim`` accepts
  the image size it is used directly; smaller images use the same computation with
  the window shrunk to the image at each level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
VARIANTS = ("kuzina", "standard")


def gaussian_window(size: int, sigma: float = 1.5, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Normalised 1-D Gaussian of ``size`` taps centred at size // 2 (as pytorch-msssim)."""
    coords = torch.arange(size, dtype=dtype, device=device) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


_BANDS: dict[tuple[int, int, torch.dtype, torch.device], Tensor] = {}


def _band(size: int, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(size - n + 1, size) matrix whose row i is the n-tap window at offset i: ``z @ band.T`` filters
    the last axis of z (valid, no padding) in one matrix product. A side shorter than the window
    is left alone (identity). Built once per (size, n, dtype, device) and cached."""
    key = (size, n, dtype, device)
    band = _BANDS.get(key)
    if band is None:
        if size < n:
            band = torch.eye(size, dtype=torch.float64)
        else:
            g = gaussian_window(n, 1.5, torch.float64)
            band = torch.zeros(size - n + 1, size, dtype=torch.float64)
            for i in range(size - n + 1):
                band[i, i : i + n] = g
        band = _BANDS[key] = band.to(dtype=dtype, device=device)
    return band


def _filter(z: Tensor, n: int) -> Tensor:
    """Separable valid Gaussian filtering of the last two axes of ``z`` (..., H, W), as two matrix products.

    Returns the filtered maps transposed, (..., W', H'): what follows is pixelwise or a mean
    over both axes, so the orientation does not matter and the second product needs no copy back.
    """
    h, w = z.shape[-2:]
    t = z @ _band(w, n, z.dtype, z.device).T  # (..., H, W')
    return t.transpose(-1, -2) @ _band(h, n, z.dtype, z.device).T  # (..., W', H')


def _ssim_cs_maps(xy: Tensor, n: int, c1: float, c2: float) -> tuple[Tensor, Tensor]:
    """ssim and cs maps of the pair ``xy`` = stack([x, y]); the five local moments are filtered in one go."""
    x, y = xy
    mu1, mu2, e11, e22, e12 = _filter(torch.cat([xy, xy * xy, (x * y)[None]]), n)
    s11 = e11 - mu1**2
    s22 = e22 - mu2**2
    s12 = e12 - mu1 * mu2
    cs = (2 * s12 + c2) / (s11 + s22 + c2)
    ssim = (2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1) * cs
    return ssim, cs


def _ms_ssim_levels(x: Tensor, y: Tensor, data_range: float, window_size: int, per_channel: bool, pad_odd: bool):
    """ssim and cs per level: lists of (B,) tensors (or (B, C) with ``per_channel``)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    dims = (-2, -1) if per_channel else (1, 2, 3)
    xy = torch.stack([x, y])  # (2, B, C, H, W): filtered and pooled together
    ssims, css = [], []
    for level in range(len(MS_SSIM_WEIGHTS)):
        s, c = _ssim_cs_maps(xy, min(window_size, *xy.shape[-2:]), c1, c2)
        ssims.append(torch.relu(s.mean(dims)))
        css.append(torch.relu(c.mean(dims)))
        if level < len(MS_SSIM_WEIGHTS) - 1:
            pad = [d % 2 for d in xy.shape[-2:]] if pad_odd else 0
            xy = F.avg_pool2d(xy.flatten(0, 1), 2, padding=pad).unflatten(0, (2, -1))
    return ssims, css


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            f"ms_ssim needs two (B, C, H, W) batches of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    levels = len(MS_SSIM_WEIGHTS)
    need = 2 ** (levels - 1)
    if min(x.shape[-2:]) < need:
        raise ValueError(
            f"images of {x.shape[-2]}x{x.shape[-1]} are too small for {levels}-level MS-SSIM "
            f"(need at least {need}x{need}); use psnr or a single-scale SSIM instead"
        )


def ms_ssim(
    x: Tensor, y: Tensor, data_range: float = 1.0, variant: str = "kuzina", window_size: int | None = None
) -> Tensor:
    """MS-SSIM of every image pair in two batches: a (B,) tensor.

    ``window_size`` defaults to 14 for ``kuzina`` (the attack metric of the paper) and
    11 for ``standard`` (Wang et al., pytorch-msssim).
    """
    _check_pair(x, y)
    w = torch.tensor(MS_SSIM_WEIGHTS, dtype=x.dtype, device=x.device)
    if variant == "kuzina":
        ssims, css = _ms_ssim_levels(x, y, data_range, window_size or 14, per_channel=False, pad_odd=False)
        cs = torch.stack(css[:-1], 0)  # (4, B)
        return torch.prod(cs ** w[:-1, None], 0) * ssims[-1] ** (4 * w[-1])
    if variant == "standard":
        win = window_size or 11
        if pytorch_msssim_accepts(x.shape[-2], x.shape[-1], win):
            from pytorch_msssim import ms_ssim as reference

            return reference(x, y, data_range=data_range, size_average=False, win_size=win)
        return _standard_own(x, y, data_range, win)
    raise ValueError(f"unknown MS-SSIM variant {variant!r} (known: {', '.join(VARIANTS)})")


def pytorch_msssim_accepts(height: int, width: int, window_size: int = 11) -> bool:
    """Whether ``pytorch_msssim.ms_ssim`` scores images of this size (it asserts min(H, W) > (win - 1) * 16)."""
    return window_size % 2 == 1 and min(height, width) > (window_size - 1) * 2**4


def _standard_own(x: Tensor, y: Tensor, data_range: float, window_size: int) -> Tensor:
    """Wang et al. MS-SSIM as pytorch-msssim computes it, with the window shrunk to small images."""
    w = torch.tensor(MS_SSIM_WEIGHTS, dtype=x.dtype, device=x.device)
    ssims, css = _ms_ssim_levels(x, y, data_range, window_size, per_channel=True, pad_odd=True)
    stack = torch.stack(css[:-1] + [ssims[-1]], 0)  # (5, B, C)
    return torch.prod(stack ** w[:, None, None], 0).mean(1)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image (inf for identical images)."""
    mse = (x - y).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)
