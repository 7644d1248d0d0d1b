"""``--device auto|cpu|cuda`` -> a torch.device, with a clear error when CUDA is absent."""

from __future__ import annotations

import torch

from robustvae.errors import RobustVAEError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else the CPU."""
    if isinstance(name, torch.device):
        return name
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RobustVAEError(
                f"--device {name} was asked for but no CUDA GPU is visible (torch.cuda.is_available() is False); "
                f"use --device cpu or --device auto"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RobustVAEError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return dev
    raise RobustVAEError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
