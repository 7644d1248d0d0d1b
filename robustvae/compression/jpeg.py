"""The JPEG baseline through Pillow: a sweep over qualities, and the quality whose PSNR is closest to a target.

Every quality in :data:`QUALITIES` (1 .. 95; Pillow advises against values above 95)
is really encoded: the size is the length of the file Pillow writes (headers
included), in bits per pixel (over H x W pixel positions, as for the models), and
the decoded file is scored with the same PSNR and MS-SSIM as the models. Colour
images keep every chroma sample (``subsampling=0``, 4:4:4, as the DCT-VAE authors
encoded Kodak); Pillow's default Huffman tables, no ``optimize``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from robustvae.metrics import ms_ssim, psnr, pytorch_msssim_accepts

QUALITIES = tuple(range(1, 96))
SETTINGS = {"encoder": "Pillow", "qualities": [QUALITIES[0], QUALITIES[-1]], "subsampling": "4:4:4", "optimize": False}
MATCH_TOLERANCE_DB = 1.0  # a "matched" JPEG further than this from the model's PSNR is not at the same quality
MSSSIM_BATCH = 8  # decoded images scored at once (memory: a Kodak image is 1.2 M values)


def encode(pixels: np.ndarray, quality: int) -> bytes:
    """The JPEG file of an 8-bit (C, H, W) image (C = 1 or 3) at ``quality``."""
    from PIL import Image

    img = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality), subsampling=0, optimize=False)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """A JPEG file -> 8-bit (C, H, W) array."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def msssim_impl(height: int, width: int) -> str:
    """Which MS-SSIM scores an image of this size: pytorch-msssim itself, or robustvae's window-shrunk variant."""
    return "pytorch_msssim" if pytorch_msssim_accepts(height, width) else "robustvae standard (small-image)"


def score(original: np.ndarray, decoded: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """(PSNR dB, MS-SSIM) of each 8-bit decoded image against ``original``, on [0, 1] (data range 1)."""
    x = torch.from_numpy(original).float().div(255)[None]
    ps, ms = [], []
    for i in range(0, len(decoded), MSSSIM_BATCH):
        y = torch.from_numpy(np.stack(decoded[i : i + MSSSIM_BATCH])).float().div(255)
        xs = x.expand_as(y)
        ps += psnr(xs, y).tolist()
        ms += ms_ssim(xs, y, variant="standard").tolist()
    return ps, ms


@dataclass
class Sweep:
    """One image encoded at every quality: per quality the file, its size and its scores."""

    qualities: list[int]
    files: list[bytes]
    bpp: list[float]
    psnr: list[float]
    msssim: list[float]

    def closest(self, target: float) -> int:
        """Index of the quality whose PSNR is closest to ``target`` (ties: the lowest quality)."""
        gaps = [abs(p - target) if math.isfinite(p) or math.isfinite(target) else math.inf for p in self.psnr]
        return int(np.argmin(gaps))


def sweep(pixels: np.ndarray, qualities: tuple[int, ...] = QUALITIES) -> Sweep:
    """Encode and score ``pixels`` (8-bit (C, H, W)) at every quality."""
    files = [encode(pixels, q) for q in qualities]
    ps, ms = score(pixels, [decode(f) for f in files])
    pixel_count = pixels.shape[1] * pixels.shape[2]
    return Sweep(list(qualities), files, [8 * len(f) / pixel_count for f in files], ps, ms)


def match_warnings(records: pd.DataFrame) -> list[str]:
    """One line per (model, k) whose matched JPEG misses the model's PSNR by more than :data:`MATCH_TOLERANCE_DB`
    on some image: no quality reaches it (the model is below JPEG at quality 1, or above it at 95), so the
    comparison at "the same PSNR" does not hold there. ``records``: rows with model, k, psnr, jpeg_psnr, jpeg_quality."""
    out = []
    gap = (records.jpeg_psnr - records.psnr).abs()
    for (model, k), g in records[gap > MATCH_TOLERANCE_DB].groupby(["model", "k"], sort=True):
        n = int((records.model == model).mul(records.k == k).sum())
        out.append(
            f"{model} k={k}: on {len(g)} of {n} image(s) no JPEG quality comes within {MATCH_TOLERANCE_DB:g} dB "
            f"of the model's PSNR (model {g.psnr.mean():.1f} dB, nearest JPEG q{int(g.jpeg_quality.iloc[0])} "
            f"{g.jpeg_psnr.mean():.1f} dB): the JPEG beside it is not at the same quality"
        )
    return out
