"""Images for the compression experiment: fitting them to a model, cutting them into patches.

* :func:`read_images`: files, folders and array files (read by :mod:`robustvae.data.images`,
  which also holds the conversion rules: colour -> grey by luma, grey for an RGB model
  refused) -> :class:`InputImage` s of at least one patch, as 8-bit pixels.
* :func:`patchify` / :func:`stitch`: an image -> square patches of the model's input
  size, the right and bottom borders padded by reflection (no edge repeat, as
  ``torch.nn.functional.pad(mode="reflect")``), and back, cropped to the image.
  Images smaller than one patch are refused: reflection cannot fill a patch from less
  than a patch of pixels without inventing most of it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robustvae.data.images import (  # noqa: F401 - re-exported: where compress read them before
    ARRAY_SUFFIXES,
    GREY_MODES,
    IMAGE_SUFFIXES,
    LUMA,
    MAX_PIXELS,
    find_images,
    read_array,
    read_image,
)
from robustvae.errors import RobustVAEError


@dataclass
class InputImage:
    """An image as the models of a run see it."""

    name: str  # unique within a run: the file name without its suffix (#2, #3 ... for repeats)
    path: str
    pixels: np.ndarray  # (C, H, W) uint8
    mode: str  # Pillow mode of the file
    conversion: str  # how the file was converted ("" when it was used as it is)
    sha256: str

    @property
    def height(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[2])

    def tensor(self) -> Tensor:
        """(C, H, W) float32 in [0, 1]."""
        return torch.from_numpy(self.pixels).float().div(255)


def read_images(
    specs: list[str | os.PathLike], channels: int, patch: int, max_pixels: int = MAX_PIXELS
) -> tuple[list[InputImage], int]:
    """Every image named by ``specs`` (folders, image files, array files), converted for ``channels``, at least one
    ``patch`` x ``patch`` patch large and at most ``max_pixels`` pixels; and the number of files skipped."""
    if not specs:
        raise RobustVAEError(
            "no images given: pass --images with a folder of PNG/JPEG files, image files or arrays, or --data NAME"
        )
    out: list[InputImage] = []
    skipped = 0
    for spec in specs:
        if Path(spec).suffix.lower() in ARRAY_SUFFIXES:
            out += _array_images(Path(spec), channels, max_pixels)
            continue
        files, n = find_images([spec])
        skipped += n
        for f in files:
            pixels, mode, conversion = read_image(f, channels, max_pixels)
            out.append(InputImage(f.stem, str(f), pixels, mode, conversion, hashlib.sha256(f.read_bytes()).hexdigest()))
    return check_images(out, patch), skipped


def check_images(images: list[InputImage], patch: int) -> list[InputImage]:
    """Refuse an image smaller than one ``patch`` x ``patch`` patch; make names unique (``#2``, ``#3``, ... for
    repeats)."""
    seen: dict[str, int] = {}
    for im in images:
        if im.height < patch or im.width < patch:
            raise RobustVAEError(
                f"{im.path} is {im.width}x{im.height} pixels, smaller than one {patch}x{patch} patch of the model; "
                f"use images of at least {patch}x{patch} pixels"
            )
        seen[im.name] = seen.get(im.name, 0) + 1
        if seen[im.name] > 1:
            im.name = f"{im.name}#{seen[im.name]}"
    return images


def _array_images(path: Path, channels: int, max_pixels: int) -> list[InputImage]:
    """The images of an array file as 8-bit images ``<stem>-<i>``; float pixels are rounded to 8 bits (noted)."""
    if not path.is_file():
        raise RobustVAEError(f"--images {path} does not exist; pass a folder of PNG/JPEG files, image files or arrays")
    x, layout, dtype = read_array(path, channels, None, max_pixels)
    conversion = "" if dtype == "uint8" else f"{dtype} in [0, 1] -> 8 bits (rounded)"
    n = x.shape[0]
    return from_tensor(x, [f"{path.stem}-{i}" for i in range(n)], [f"{path}[{i}]" for i in range(n)], conversion)


def from_tensor(x: Tensor, names: list[str], paths: list[str], conversion: str = "") -> list[InputImage]:
    """Images in [0, 1] (N, C, H, W) in memory (an array file's, a dataset's) as 8-bit :class:`InputImage` s."""
    mode = "L" if x.shape[1] == 1 else "RGB"
    return [
        InputImage(n, p, px, mode, conversion, hashlib.sha256(px.tobytes()).hexdigest())
        for n, p, px in zip(names, paths, to_uint8(x))
    ]


def patch_count(height: int, width: int, size: int) -> int:
    """How many ``size`` x ``size`` patches :func:`patchify` cuts from a ``height`` x ``width`` image."""
    return -(-height // size) * -(-width // size)


def patchify(x: Tensor, size: int) -> tuple[Tensor, tuple[int, int]]:
    """(C, H, W) -> ((rows * cols, C, size, size) row-major patches, (rows, cols)); H, W >= size.

    The right and bottom borders are padded by reflection up to a multiple of ``size``.
    """
    C, H, W = x.shape
    pad_h, pad_w = -H % size, -W % size
    if pad_h or pad_w:
        x = F.pad(x[None], (0, pad_w, 0, pad_h), mode="reflect")[0]
    rows, cols = x.shape[1] // size, x.shape[2] // size
    patches = x.reshape(C, rows, size, cols, size).permute(1, 3, 0, 2, 4).reshape(rows * cols, C, size, size)
    return patches, (rows, cols)


def stitch(patches: Tensor, grid: tuple[int, int], height: int, width: int) -> Tensor:
    """Inverse of :func:`patchify`: row-major patches -> (C, height, width), the padding cropped off."""
    rows, cols = grid
    _, C, s, _ = patches.shape
    x = patches.reshape(rows, cols, C, s, s).permute(2, 0, 3, 1, 4).reshape(C, rows * s, cols * s)
    return x[:, :height, :width]


def to_uint8(x: Tensor) -> np.ndarray:
    """Images in [0, 1] -> uint8 (rounded): a reconstruction as it would be saved and shown."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
