"""A user's own images (robustvae.data.images): every file kind and layout reads to the same pixels, every bad file is
one line, and what attack / eval record about the set (its name, count, hash) is what it holds."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from robustvae.compression.images import read_images
from robustvae.data.images import ImageSet, load_image_set, pixels_sha256, read_array
from robustvae.errors import RobustVAEError


@pytest.fixture
def grey(gen):
    """Six random 8-bit grey 28x28 images, NCHW."""
    return torch.randint(0, 256, (6, 1, 28, 28), generator=gen, dtype=torch.uint8)


def _npy(path, arr):
    np.save(path, arr)
    return path


def test_every_file_kind_and_layout_reads_to_the_same_pixels(tmp_path, grey):
    want = grey.float() / 255
    nchw, nhwc = grey.numpy(), grey.permute(0, 2, 3, 1).numpy()
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(nchw):
        Image.fromarray(img[0]).save(folder / f"{i:02d}.png")
    (folder / "notes.txt").write_text("skipped")
    np.savez(tmp_path / "one.npz", anything=nhwc)
    np.savez(tmp_path / "named.npz", images=nchw, labels=np.arange(6))
    torch.save(torch.from_numpy(nchw).float() / 255, tmp_path / "t.pt")
    torch.save({"images": torch.from_numpy(nhwc), "meta": torch.zeros(1)}, tmp_path / "d.pt")
    cases = {  # source -> (layout, dtype) it must report
        _npy(tmp_path / "nchw.npy", nchw): ("NCHW", "uint8"),
        _npy(tmp_path / "nhwc.npy", nhwc): ("NHWC", "uint8"),
        _npy(tmp_path / "nhw.npy", nchw[:, 0]): ("NHW", "uint8"),
        _npy(tmp_path / "f64.npy", nchw.astype(np.float64) / 255): ("NCHW", "float64"),
        tmp_path / "one.npz": ("NHWC", "uint8"),
        tmp_path / "named.npz": ("NCHW", "uint8"),
        tmp_path / "t.pt": ("NCHW", "float32"),
        tmp_path / "d.pt": ("NHWC", "uint8"),
        folder: ("files", "uint8"),
    }
    for source, (layout, dtype) in cases.items():
        s = load_image_set(source, 1, 28)
        assert (s.layout, s.dtype) == (layout, dtype), source
        assert s.images.dtype == torch.float32 and s.images.shape == (6, 1, 28, 28)
        # uint8 / 255 and float64 / 255 rounded to float32 agree exactly; a float32 tensor was stored as computed
        assert torch.equal(s.images, want), source
        assert s.sha256 == pixels_sha256(want) and s.name == f"images:{source.name}"
    mem = load_image_set(torch.from_numpy(nhwc), 1, 28)
    assert (mem.path, mem.layout) == ("<in memory>", "NHWC") and torch.equal(mem.images, want)


def test_rgb_layouts_are_told_apart_by_the_channel_count(gen):
    x = torch.rand(2, 3, 32, 32, generator=gen)
    assert read_array(x, 3, 32)[1] == "NCHW"
    got, layout, _ = read_array(x.permute(0, 2, 3, 1).numpy(), 3, 32)
    assert layout == "NHWC" and torch.equal(got, x)
    # a 3x3x3 image fits both readings: channels first wins
    assert read_array(torch.rand(1, 3, 3, 3, generator=gen), 3, 3)[1] == "NCHW"
    # compress (any size): the channel count alone decides
    assert read_array(torch.rand(2, 40, 50, 3, generator=gen), 3, None)[0].shape == (2, 3, 40, 50)


@pytest.mark.parametrize(
    "arr, fragment",
    [
        (np.zeros((2, 1, 32, 32), np.uint8), "not 1x28x28 images"),
        (np.zeros((2, 3, 28, 28), np.uint8), "not 1x28x28 images"),
        (np.zeros((28, 28), np.uint8), "not 1x28x28 images"),
        (np.zeros((0, 1, 28, 28), np.uint8), "holds no images"),
        (np.zeros((2, 1, 28, 28), np.int64), "holds int64 pixels"),
        (np.zeros((2, 1, 28, 28), bool), "holds bool pixels"),
        (np.full((2, 1, 28, 28), 255.0, np.float32), "from 255 to 255; floats must be in [0, 1]; divide"),
        (np.full((2, 1, 28, 28), -0.5, np.float32), "from -0.5 to -0.5"),
        (np.full((2, 1, 28, 28), np.nan, np.float32), "1568 NaN or infinite"),
    ],
)
def test_bad_arrays_are_one_line_errors(tmp_path, arr, fragment):
    path = _npy(tmp_path / "bad.npy", arr)
    with pytest.raises(RobustVAEError, match=None) as e:
        load_image_set(path, 1, 28)
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_files_that_would_unpickle_or_do_not_read_are_refused(tmp_path, capfd):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    np.save(tmp_path / "obj.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    torch.save({"images": [1, 2]}, tmp_path / "list.pt")
    np.savez(tmp_path / "two.npz", a=np.zeros(1), b=np.zeros(1))
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY")
    (tmp_path / "x.csv").write_text("1,2")
    cases = {
        "obj.npy": "holds Python objects",
        "evil.pt": "pickled objects that safe loading refuses",
        "list.pt": "not a tensor",
        "two.npz": "holds 2 arrays (a, b)",
        "cut.npy": "cannot be read",
        "x.csv": "unknown kind of file",
        "missing.npy": "does not exist",
    }
    for name, fragment in cases.items():
        with pytest.raises(RobustVAEError) as e:
            load_image_set(tmp_path / name, 1, 28)
        assert fragment in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    assert "unpickled!" not in capfd.readouterr().out  # nothing was unpickled on the way


def test_image_files_of_the_wrong_size_or_kind_are_refused(tmp_path):
    Image.fromarray(np.zeros((30, 28), np.uint8)).save(tmp_path / "tall.png")
    with pytest.raises(RobustVAEError, match="28x30 pixels; the model takes 28x28"):
        load_image_set(tmp_path / "tall.png", 1, 28)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(RobustVAEError, match="greyscale image but the model takes RGB"):
        load_image_set(tmp_path / "grey.png", 3, 32)
    s = load_image_set(torch.zeros(2, 1, 28, 28), 1, 28)
    with pytest.raises(RobustVAEError, match="holds 1x28x28 images; the model takes 3x32x32"):
        load_image_set(s, 3, 32)
    assert load_image_set(s, 1, 28) is s and isinstance(s, ImageSet)


def test_compress_reads_arrays_as_8_bit_images_and_names_them(tmp_path, gen):
    x = torch.rand(3, 40, 50, 1, generator=gen)
    _npy(tmp_path / "photos.npy", x.numpy())
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "a.png")
    imgs, skipped = read_images([tmp_path / "photos.npy", tmp_path / "a.png"], 1, 28)
    assert skipped == 0 and [im.name for im in imgs] == ["photos-0", "photos-1", "photos-2", "a"]
    assert imgs[1].path.endswith("photos.npy[1]") and imgs[1].conversion == "float32 in [0, 1] -> 8 bits (rounded)"
    assert np.array_equal(imgs[2].pixels, (x[2].permute(2, 0, 1) * 255).round().to(torch.uint8).numpy())
    assert imgs[0].pixels.shape == (1, 40, 50)
    _npy(tmp_path / "small.npy", np.zeros((1, 20, 20), np.uint8))
    with pytest.raises(RobustVAEError, match="smaller than one 28x28 patch"):
        read_images([tmp_path / "small.npy"], 1, 28)
