"""Pixel conversions shared by the data loaders and the models (a leaf module: it imports nothing of robustvae)."""

from __future__ import annotations

import torch
from torch import Tensor


def to_float(images: Tensor) -> Tensor:
    """uint8 0..255 or float [0, 1] -> float32 in [0, 1]."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()
