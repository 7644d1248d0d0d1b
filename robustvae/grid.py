"""Sample grids: many images as one PNG, scaled up so that small images stay visible."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, PngImagePlugin
from torchvision.utils import make_grid

from robustvae.io import atomic_file

MIN_SAMPLE_PIXELS = 84  # each image of the grid is scaled up (nearest neighbour) to at least this size


def save_grid(imgs: torch.Tensor, out: Path, settings: dict) -> int:
    """A square-ish grid of ``imgs`` (N, C, H, W) in [0, 1], scaled up by nearest neighbour; written atomically.

    Returns the scale factor.
    """
    scale = max(1, math.ceil(MIN_SAMPLE_PIXELS / max(imgs.shape[-2:])))
    big = F.interpolate(imgs, scale_factor=scale, mode="nearest")
    grid = make_grid(big, nrow=int(math.ceil(math.sqrt(len(imgs)))), padding=scale, pad_value=1.0)
    pixels = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    info = PngImagePlugin.PngInfo()
    info.add_text("robustvae-sample", json.dumps({**settings, "scale": scale}))
    with atomic_file(out) as f:  # its folder is created; never written through a link
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(f, format="PNG", pnginfo=info)
    return scale
