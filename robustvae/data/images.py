"""A user's own images: PNG / JPEG files or an array file, checked against the image shape of a model.

What ``--images PATH`` (attack, eval, certify, compress) and the API's ``images=`` take:

* a folder of PNG / JPEG files (:func:`find_images`: its ``*.png``, ``*.jpg``, ``*.jpeg``,
  not recursively, other files skipped, in name order) or one image file. :func:`read_image`
  reads one file as a model with ``channels`` input channels sees it: a colour image for a
  one-channel model is converted to grey by Pillow's ``convert("L")`` (ITU-R 601-2 luma,
  L = 0.299 R + 0.587 G + 0.114 B); a grey image for an RGB model is refused (the model
  would invent colours); an alpha channel is dropped.
* an array file: ``.npy`` (read with ``allow_pickle=False``), ``.npz`` (its one array, or
  the one named ``images``; ``allow_pickle=False``) or ``.pt`` (``torch.load(...,
  weights_only=True)``: a tensor, or a dict holding one tensor or one named ``images``);
  or an array / tensor in memory (API). Pixels are uint8 (0..255) or floats in [0, 1].
  The layout is (N, C, H, W) or (N, H, W, C), told apart by the model's channel count
  (channels first when both read; (N, H, W) is taken for a grey model): :func:`read_array`.

Every check (the file's kind, the layout against the model's C x H x W, the dtype, the
range, NaN / inf) fails with one line naming the problem and the fix, before anything is
written. An array's shape and dtype are read from its header before its pixels are.
:func:`load_image_set` returns an :class:`ImageSet`: the images as float32 (N, C, H, W) in
[0, 1], in file order, with where they came from and a hash of their pixels.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robustvae.errors import RobustVAEError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz", ".pt")
GREY_MODES = ("1", "L", "LA")
DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
LUMA = "colour -> grey by Pillow convert('L'): ITU-R 601-2 luma, 0.299 R + 0.587 G + 0.114 B"
MAX_PIXELS = 4_000_000  # default size limit of one image (width x height): 4 MPixel, e.g. 2000 x 2000
SOURCES = "a folder of PNG/JPEG files, an image file, or a .npy / .npz / .pt array"


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
                    f"down, or raise --max-pixels"
                )
            im.load()
            img = im.copy()
    except Image.DecompressionBombError:
        raise RobustVAEError(
            f"{path} decodes to far more pixels than its size suggests (a decompression bomb); "
            f"pass ordinary PNG/JPEG files"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise RobustVAEError(
            f"{path} cannot be read as an image ({type(e).__name__}); pass PNG/JPEG files only"
        ) from None
    mode = img.mode
    if mode in DEEP_MODES:
        raise RobustVAEError(f"{path} has {mode} pixels (16-bit or float); save it as an 8-bit PNG first")
    grey = mode in GREY_MODES
    if channels == 1:
        conversion = (
            "" if mode == "L" else ("1-bit -> 8-bit grey" if mode == "1" else "alpha dropped" if mode == "LA" else LUMA)
        )
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


# --------------------------------------------------------------------------- arrays


def _one_entry(entries: dict[str, Any], path: Path, what: str) -> Any:
    """The one entry of an .npz / a .pt dict, or the one named ``images``."""
    if len(entries) == 1:
        return next(iter(entries.values()))
    if "images" in entries:
        return entries["images"]
    raise RobustVAEError(
        f"{path} holds {len(entries)} {what} ({', '.join(sorted(entries)[:5])}); keep one, or name the images 'images'"
    )


def _load_array(path: Path) -> np.ndarray | Tensor:
    """The array of an .npy / .npz / .pt file, never unpickling anything (.npy: memory-mapped, pixels not yet read)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return np.asarray(_one_entry({k: z[k] for k in z.files}, path, "arrays"))
        with warnings.catch_warnings():  # torch's notes on the pickle protocol would add lines to a one-line error
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except RobustVAEError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower() or "python objects" in str(e).lower():  # an object array: never unpickled
            raise RobustVAEError(
                f"{path} holds Python objects, which robustvae does not unpickle; save a plain "
                f"numeric array (numpy.save of a uint8 or float array)"
            ) from None
        raise RobustVAEError(
            f"{path} cannot be read as a {suffix} array ({' '.join(str(e).split())[:120]}); "
            f"save it with numpy.save / torch.save"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or unsafe (pickled objects) files all land here
        raise RobustVAEError(
            f"{path} cannot be read as a {suffix} array: it is corrupt, truncated, or holds pickled "
            f"objects that safe loading refuses ({type(e).__name__}); save a plain tensor or "
            f"array"
        ) from None
    if isinstance(obj, dict):
        obj = _one_entry(obj, path, "entries")
    if not isinstance(obj, Tensor):
        raise RobustVAEError(f"{path} holds a {type(obj).__name__}, not a tensor; torch.save a tensor of images")
    return obj


def layout_of(shape: tuple[int, ...], channels: int, size: int | None, where: str) -> str:
    """``NCHW``, ``NHWC`` or ``NHW`` (grey) of an array of images for a model of ``channels`` x ``size`` x ``size``
    (``size`` None: any height and width); channels first when both read."""
    want = f"{channels}x{size}x{size}" if size else f"{channels}-channel"
    if len(shape) == 3 and channels == 1 and (size is None or tuple(shape[1:]) == (size, size)):
        return "NHW"
    if len(shape) == 4:
        if shape[1] == channels and (size is None or tuple(shape[2:]) == (size, size)):
            return "NCHW"
        if shape[3] == channels and (size is None or tuple(shape[1:3]) == (size, size)):
            return "NHWC"
    example = (
        f"(N, {channels}, {size}, {size}) or (N, {size}, {size}, {channels})"
        if size
        else f"(N, {channels}, H, W) or (N, H, W, {channels})"
    )
    raise RobustVAEError(
        f"{where} holds an array of shape {tuple(shape)}, not {want} images; the model takes {example}"
    )


def to_unit_float(arr: np.ndarray | Tensor, where: str) -> Tensor:
    """uint8 (0..255) or floats in [0, 1] -> float32; any other dtype, NaN / inf or a value out of range is refused."""
    t = torch.from_numpy(np.array(arr, copy=True)) if isinstance(arr, np.ndarray) else arr.detach().cpu()
    if t.dtype == torch.uint8:
        return t.float().div_(255)
    if not t.is_floating_point():
        raise RobustVAEError(
            f"{where} holds {str(t.dtype).replace('torch.', '')} pixels; pass uint8 (0..255) or floats in [0, 1]"
        )
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise RobustVAEError(f"{where} holds {bad} NaN or infinite pixel values; pass finite floats in [0, 1]")
    t = t.float()
    if t.numel() and (t.min() < 0 or t.max() > 1):
        hint = "; divide 0..255 values by 255" if t.max() > 1 else ""
        raise RobustVAEError(
            f"{where} holds pixel values from {float(t.min()):g} to {float(t.max()):g}; floats must be in [0, 1]{hint}"
        )
    return t


def read_array(
    source: str | os.PathLike | np.ndarray | Tensor,
    channels: int,
    size: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> tuple[Tensor, str, str]:
    """(images (N, C, H, W) float32 in [0, 1], layout, source dtype) of an array file or an array in memory.

    ``size`` None accepts any height and width up to ``max_pixels`` per image (compress cuts them into patches).
    """
    where = "the images given" if isinstance(source, (np.ndarray, Tensor)) else str(source)
    arr = source if isinstance(source, (np.ndarray, Tensor)) else _load_array(Path(source))
    shape = tuple(arr.shape)
    layout = layout_of(shape, channels, size, where)
    if shape[0] == 0:
        raise RobustVAEError(f"{where} holds no images (its first axis is empty)")
    height, width = shape[1:3] if layout != "NCHW" else shape[2:4]
    if height * width > max_pixels:
        raise RobustVAEError(
            f"{where} holds {width}x{height} images, more than the limit of {max_pixels:,} pixels; "
            f"crop or scale them down, or raise --max-pixels"
        )
    dtype = str(arr.dtype).replace("torch.", "")
    x = to_unit_float(arr, where)
    x = x.unsqueeze(1) if layout == "NHW" else x.permute(0, 3, 1, 2) if layout == "NHWC" else x
    return x.contiguous(), layout, dtype


# --------------------------------------------------------------------------- image sets


def one_source(data: object, images: object) -> None:
    """A dataset (``--data``) or a user's images (``--images``) name where the images come from, never both."""
    if data is not None and images is not None:
        raise RobustVAEError("pass --data or --images, not both: the images come from a dataset or from your files")


def pixels_sha256(images: Tensor) -> str:
    """sha256 of images as float32 (N, C, H, W) bytes (C order): what the records call the pixels' hash."""
    return hashlib.sha256(images.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class ImageSet:
    """A user's own images, in file order, as a model takes them (no labels)."""

    images: Tensor  # (N, C, H, W) float32 in [0, 1]
    path: str  # the folder or file they came from ("<in memory>" for an array given to the API)
    layout: str  # NCHW | NHWC | NHW (arrays) or files (a folder or an image file)
    dtype: str  # the source's pixel type (image files: uint8)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def name(self) -> str:
        """What records and reports call the set where they would name a dataset: ``images:<file or folder name>``."""
        return f"images:{Path(self.path).name or self.path}"

    @property
    def sha256(self) -> str:
        return pixels_sha256(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def describe(self) -> str:
        """One line for the printed settings: where from, how many, how they were read."""
        c, h, w = self.shape
        how = "PNG/JPEG files" if self.layout == "files" else f"{self.layout} {self.dtype} array"
        return f"{self.path}: {len(self)} images of {c}x{h}x{w} ({how}; pixels sha256 {self.sha256[:12]})"

    def info(self) -> dict[str, Any]:
        """What run.json and eval records say about the set."""
        return {
            "path": self.path,
            "images": len(self),
            "shape": list(self.shape),
            "layout": self.layout,
            "dtype": self.dtype,
            "pixels_sha256": self.sha256,
            "labels": None,
        }


def load_image_set(source: str | os.PathLike | np.ndarray | Tensor | ImageSet, channels: int, size: int) -> ImageSet:
    """The images of ``source`` (see the module docstring) for a model of ``channels`` x ``size`` x ``size``."""
    if isinstance(source, ImageSet):
        if source.shape != (channels, size, size):
            raise RobustVAEError(
                f"the image set {source.path} holds {'x'.join(map(str, source.shape))} images; the "
                f"model takes {channels}x{size}x{size}"
            )
        return source
    if isinstance(source, (np.ndarray, Tensor)):
        x, layout, dtype = read_array(source, channels, size)
        return ImageSet(x, "<in memory>", layout, dtype)
    p = Path(source).expanduser()
    if p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES:
        files, _ = find_images([p])
        x = torch.stack([_sized(read_image(f, channels)[0], f, channels, size) for f in files]).float().div_(255)
        return ImageSet(x, str(source), "files", "uint8")
    if not p.exists():
        raise RobustVAEError(f"--images {p} does not exist; pass {SOURCES}")
    if p.suffix.lower() not in ARRAY_SUFFIXES:
        raise RobustVAEError(f"--images {p}: unknown kind of file ({p.suffix or 'no suffix'}); pass {SOURCES}")
    x, layout, dtype = read_array(p, channels, size)
    return ImageSet(x, str(source), layout, dtype)


def _sized(pixels: np.ndarray, path: Path, channels: int, size: int) -> Tensor:
    if pixels.shape[1:] != (size, size):
        raise RobustVAEError(
            f"{path} is {pixels.shape[2]}x{pixels.shape[1]} pixels; the model takes {size}x{size} "
            f"images (resize them, e.g. Image.open(p).resize(({size}, {size})))"
        )
    return torch.from_numpy(pixels)
