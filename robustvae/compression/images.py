"""Images for the compression experiment: reading files, fitting them to a model, cutting them into patches.

* :func:`find_images`: files and folders -> image files (a folder contributes its
  ``*.png``, ``*.jpg``, ``*.jpeg``, not recursively; other files in it are skipped).
* :func:`read_image`: one file -> an 8-bit (C, H, W) array as a model with
  ``channels`` input channels sees it. A colour image for a one-channel model is
  converted to grey by Pillow's ``convert("L")`` (ITU-R 601-2 luma,
  L = 0.299 R + 0.587 G + 0.114 B); a grey image for an RGB model is refused (the
  model would invent colours that JPEG never has to code); an alpha channel is dropped.
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

from robustvae.errors import RobustVAEError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA")
DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
LUMA = "colour -> grey by Pillow convert('L'): ITU-R 601-2 luma, 0.299 R + 0.587 G + 0.114 B"


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


def find_images(specs: list[str | os.PathLike]) -> tuple[list[Path], int]:
    """Image files named by ``specs`` (files, or folders of PNG / JPEG files) and the number of other files skipped."""
    if not specs:
        raise RobustVAEError("no images given: pass --images with a folder of PNG/JPEG files or image files")
    files: list[Path] = []
    skipped = 0
    for spec in specs:
        p = Path(spec).expanduser()
        if p.is_dir():
            inside = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            found = [f for f in inside if f.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise RobustVAEError(
                    f"no PNG/JPEG images in {p} (looked for {', '.join('*' + s for s in IMAGE_SUFFIXES)}); "
                    f"pass a folder that holds images, or the image files themselves"
                )
            files += found
            skipped += len(inside) - len(found)
        elif p.is_file():
            files.append(p)
        else:
            raise RobustVAEError(f"--images {p} does not exist; pass a folder of PNG/JPEG files or image files")
    return files, skipped


MAX_PIXELS = 4_000_000  # default size limit of one image (width x height): 4 MPixel, e.g. 2000 x 2000


def read_image(path: Path, channels: int, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str, str]:
    """(pixels (C, H, W) uint8, the file's Pillow mode, the conversion applied) for a model with ``channels`` inputs.

    The size is checked from the header before any pixel is decoded, so a decompression
    bomb (a small file that decodes to gigapixels) is refused without using the memory.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise RobustVAEError(
                    f"{path} is {w}x{h} pixels, more than the limit of {max_pixels:,} pixels; crop or scale it "
                    f"down, or raise --max-pixels")
            im.load()
            img = im.copy()
    except Image.DecompressionBombError:
        raise RobustVAEError(f"{path} decodes to far more pixels than its size suggests (a decompression bomb); "
                             f"pass ordinary PNG/JPEG files") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise RobustVAEError(
            f"{path} cannot be read as an image ({type(e).__name__}); pass PNG/JPEG files only"
        ) from None
    mode = img.mode
    if mode in DEEP_MODES:
        raise RobustVAEError(f"{path} has {mode} pixels (16-bit or float); save it as an 8-bit PNG first")
    grey = mode in GREY_MODES
    if channels == 1:
        conversion = "" if mode == "L" else ("1-bit -> 8-bit grey" if mode == "1" else
                                             "alpha dropped" if mode == "LA" else LUMA)
        arr = np.asarray(img.convert("L"))[None]
    elif channels == 3:
        if grey:
            raise RobustVAEError(
                f"{path} is a greyscale image but the model takes RGB images; convert the file to RGB "
                f"(e.g. Image.open(p).convert('RGB').save(...)) or use a greyscale model"
            )
        conversion = "" if mode == "RGB" else f"{mode} -> RGB" + (" (alpha dropped)" if "A" in mode else "")
        arr = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
    else:
        raise RobustVAEError(f"models with {channels} input channels are not supported; use a grey or an RGB model")
    return np.array(arr, dtype=np.uint8, order="C", copy=True), mode, conversion


def read_images(specs: list[str | os.PathLike], channels: int, patch: int,
                max_pixels: int = MAX_PIXELS) -> tuple[list[InputImage], int]:
    """Every image named by ``specs``, converted for ``channels``, at least one ``patch`` x ``patch`` patch large and
    at most ``max_pixels`` pixels."""
    files, skipped = find_images(specs)
    out: list[InputImage] = []
    seen: dict[str, int] = {}
    for f in files:
        pixels, mode, conversion = read_image(f, channels, max_pixels)
        h, w = pixels.shape[1:]
        if h < patch or w < patch:
            raise RobustVAEError(
                f"{f} is {w}x{h} pixels, smaller than one {patch}x{patch} patch of the model; "
                f"use images of at least {patch}x{patch} pixels"
            )
        seen[f.stem] = seen.get(f.stem, 0) + 1
        name = f.stem if seen[f.stem] == 1 else f"{f.stem}#{seen[f.stem]}"
        out.append(InputImage(name, str(f), pixels, mode, conversion, hashlib.sha256(f.read_bytes()).hexdigest()))
    return out, skipped


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
