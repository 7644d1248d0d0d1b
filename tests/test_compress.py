"""The compression experiment: exact patching, the rate against the model's own KLs, the JPEG search, errors, end to end."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn

from robustvae import zoo
from robustvae.cli import main
from robustvae.api import compress
from robustvae.compression import code_images, jpeg
from robustvae.models.contract import LayerInfo
from robustvae.zoo import LoadedModel
from robustvae.compression.images import InputImage, patchify, read_image, stitch
from robustvae.config import CompressConfig
from robustvae.registry import build_model, get_preset
from robustvae.seeding import derive_seed
from tolerance import msssim_rounding


def _random_image(gen: torch.Generator, channels: int, h: int, w: int) -> np.ndarray:
    return torch.randint(0, 256, (channels, h, w), generator=gen, dtype=torch.uint8).numpy()


def _save(pixels: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(path)
    return path


def _brute_patches(pixels: np.ndarray, size: int) -> list[np.ndarray]:
    """Patches cut one by one from the image padded by numpy's reflection (no edge repeat), row by row."""
    c, h, w = pixels.shape
    padded = np.pad(pixels, ((0, 0), (0, -h % size), (0, -w % size)), mode="reflect")
    return [
        padded[:, r : r + size, q : q + size]
        for r in range(0, padded.shape[1], size)
        for q in range(0, padded.shape[2], size)
    ]


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_patches_are_the_brute_force_ones_and_stitch_back_exactly(channels, size, gen):
    for h, w in [(size, size), (size + 1, 2 * size + 1), (45, 31 + size), (3 * size - 1, size)]:
        x = _random_image(gen, channels, h, w)
        patches, grid = patchify(torch.from_numpy(x).float(), size)
        want = _brute_patches(x, size)
        assert patches.shape == (len(want), channels, size, size) and grid[0] * grid[1] == len(want)
        for p, q in zip(patches, want):
            np.testing.assert_array_equal(p.numpy(), q)
        assert torch.equal(stitch(patches, grid, h, w), torch.from_numpy(x).float())


class Identity(nn.Module):
    """A 'model' whose reconstruction is its input: patching, batching and stitching must give the image back."""

    arch = "identity"

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.cfg = SimpleNamespace(image_channels=channels, image_size=size)
        self.num_layers = 1
        self.layers = [LayerInfo(1, size, (1, size, size))]

    def make_noise(self, batch, generator=None):
        return []

    def reconstruct(self, x, k, temperature, noise):
        return x.clone()

    def elbo(self, x):
        return SimpleNamespace(kl=torch.zeros(x.shape[0], 1))


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_identity_model_round_trips_images_of_odd_sizes(channels, size, gen):
    shapes = [(size, size), (size + 3, 2 * size + 5), (61, 47), (2 * size, size + 1)]
    images = [
        InputImage(f"im{i}", "", _random_image(gen, channels, h, w), "L", "", "") for i, (h, w) in enumerate(shapes)
    ]
    cfg = CompressConfig(layers="1", batch_size=3)  # batches that cut across images
    recs, bits, counts, _ = code_images(Identity(channels, size), images, [1], cfg, torch.device("cpu"))
    for im, rec, n in zip(images, recs, counts):
        np.testing.assert_array_equal(rec[1], im.pixels)
        assert n == math.ceil(im.height / size) * math.ceil(im.width / size)
    assert all(float(b.sum()) == 0 for b in bits)


def _model(preset: str, seed: int) -> nn.Module:
    cfg = get_preset(preset)
    torch.manual_seed(seed)
    return build_model(cfg.model).eval()


@pytest.mark.parametrize("preset", ["vdvae-mnist-tiny", "dctvae-mnist-tiny"])
def test_rate_is_the_sum_of_the_models_layer_kls_in_bits(preset, tmp_path, gen):
    seed = int(torch.randint(0, 1000, (1,), generator=gen))
    model = _model(preset, seed)
    h, w = 40 + seed % 9, 60 + seed % 7  # 2 x 3 patches
    pixels = _random_image(gen, 1, h, w)
    path = _save(pixels, tmp_path / "in" / "x.png")
    cfg = CompressConfig(layers="1-3", seed=seed, batch_size=16)
    records = compress(
        [LoadedModel.in_memory(model, get_preset(preset))], [path], cfg, tmp_path / "out", device="cpu"
    ).records
    # reference: the patches cut by hand, the model's own per-layer KLs (nats) with the same seeded draws
    patches = torch.from_numpy(np.stack(_brute_patches(pixels, 28))).float() / 255
    torch.manual_seed(derive_seed(seed, "rate"))
    with torch.no_grad():
        kl = model.elbo(patches).kl.double()
    context = preset.startswith("dctvae")
    for k in (1, 2, 3):
        row = records[records.k == k].iloc[0]
        want_bits = float(kl[:, :k].sum()) / math.log(2)
        assert row.bits == pytest.approx(want_bits, rel=1e-5)
        assert row.bpp == pytest.approx(want_bits / (h * w), rel=1e-5)
        if context:  # 6 patches x (1 x 6 x 6 coefficients of 2 bits) stored raw, the seed's BPP*
            assert row.context_bits_prior == pytest.approx(float(kl[:, 0].sum()) / math.log(2), rel=1e-5)
            assert row.context_bits_raw == 6 * 36 * 2
            gaussian = float(kl[:, 1:k].sum()) / math.log(2)
            assert row.bpp_context_raw == pytest.approx((6 * 36 * 2 + gaussian) / (h * w), rel=1e-5)
        else:
            assert math.isnan(row.bpp_context_raw) and math.isnan(row.context_bits_raw)


def _brute_jpeg(pixels: np.ndarray) -> list[tuple[int, int, float]]:
    """(quality, bytes, PSNR) for every quality 1..95, with Pillow and numpy only."""
    img = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    out = []
    for q in range(1, 96):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q, subsampling=0)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float64).reshape(img.size[1], img.size[0], -1)
        ref = np.asarray(img, dtype=np.float64).reshape(dec.shape)
        mse = np.mean((dec / 255 - ref / 255) ** 2)
        out.append((q, len(buf.getvalue()), 10 * math.log10(1 / mse)))
    return out


@pytest.mark.parametrize("which", ["astronaut", "camera"])
def test_jpeg_search_finds_the_quality_with_the_closest_psnr(which, gen):
    a = getattr(skimage.data, which)()
    y, x = (int(v) for v in torch.randint(0, 400, (2,), generator=gen))
    crop = a[y : y + 48, x : x + 72]
    pixels = crop.transpose(2, 0, 1).copy() if crop.ndim == 3 else crop[None].copy()
    sweep = jpeg.sweep(pixels)
    brute = _brute_jpeg(pixels)
    assert sweep.qualities == [q for q, _, _ in brute]
    assert [len(f) for f in sweep.files] == [b for _, b, _ in brute]
    np.testing.assert_allclose(sweep.bpp, [8 * b / (48 * 72) for _, b, _ in brute])
    np.testing.assert_allclose(sweep.psnr, [p for _, _, p in brute], atol=1e-3)
    psnrs = [p for _, _, p in brute]
    targets = list(torch.empty(20).uniform_(min(psnrs) - 2, max(psnrs) + 2, generator=gen).tolist()) + psnrs[::7]
    for t in targets:
        want = min(brute, key=lambda r: abs(r[2] - t))[0]  # ties: the first (lowest) quality
        got = sweep.qualities[sweep.closest(t)]
        assert got == want or abs(sweep.psnr[sweep.closest(t)] - t) == pytest.approx(abs(psnrs[want - 1] - t), abs=1e-3)


def test_colour_for_a_grey_model_is_converted_by_luma(tmp_path, gen):
    rgb = _random_image(gen, 3, 30, 40)
    pixels, mode, conversion = read_image(_save(rgb, tmp_path / "c.png"), channels=1)
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    assert mode == "RGB" and "luma" in conversion and pixels.shape == (1, 30, 40)
    assert np.abs(pixels[0].astype(float) - luma).max() <= 1.0
    grey, _, none = read_image(_save(rgb[:1], tmp_path / "g.png"), channels=1)
    assert none == "" and np.array_equal(grey, rgb[:1])


def _one_line_error(capsys, argv: list[str], fragment: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, (code, err)
    assert fragment in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained tiny checkpoints (the numbers do not matter here, the pipeline does)."""
    d = tmp_path_factory.mktemp("ckpt")
    for name in ("vdvae-mnist-tiny", "dctvae-mnist-tiny", "vdvae-cifar10-tiny"):
        cfg = get_preset(name)
        torch.manual_seed(0)
        zoo.atomic_save(zoo.make_checkpoint(cfg, build_model(cfg.model)), d / f"{name}.pt")
    return d


def test_bad_input_is_one_line_and_writes_nothing(checkpoints, tmp_path, capsys, gen):
    grey_model, rgb_model = str(checkpoints / "vdvae-mnist-tiny.pt"), str(checkpoints / "vdvae-cifar10-tiny.pt")
    out = tmp_path / "out"
    good = _save(_random_image(gen, 1, 30, 30), tmp_path / "good.png")
    base = ["compress", grey_model, "--out", str(out), "-q"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    _one_line_error(capsys, [*base, "--images", str(tmp_path / "empty"), "--layers", "1"], "no PNG/JPEG images in")
    _one_line_error(
        capsys,
        [*base, "--images", str(tmp_path / "empty" / "notes.txt"), "--layers", "1"],
        "cannot be read as an image",
    )
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "x.png").write_bytes(b"not a png")
    _one_line_error(capsys, [*base, "--images", str(tmp_path / "fake"), "--layers", "1"], "cannot be read as an image")
    small = _save(_random_image(gen, 1, 20, 40), tmp_path / "small" / "s.png")
    _one_line_error(capsys, [*base, "--images", str(small), "--layers", "1"], "smaller than one 28x28 patch")
    _one_line_error(
        capsys,
        ["compress", rgb_model, "--out", str(out), "--images", str(good), "--layers", "1"],
        "is a greyscale image but the model takes RGB",
    )
    _one_line_error(capsys, [*base, "--images", str(good)], "--layers is required")
    _one_line_error(capsys, [*base, "--images", str(good), "--layers", "5"], "--layers 5 is more than")
    _one_line_error(capsys, [*base, "--images", str(good), "--layers", "0"], "counts start at 1")
    _one_line_error(capsys, [*base, "--images", str(good), "--layers", "1", "--temperature", "-1"], "--temperature")
    _one_line_error(capsys, [*base, "--images", str(tmp_path / "missing"), "--layers", "1"], "does not exist")
    _one_line_error(capsys, [*base, "--layers", "1"], "no images given")
    _one_line_error(capsys, [*base, "--images", str(good), "--layers", "1", "--device", "cuda:7"], "cuda")
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    _one_line_error(capsys, [*base, "--images", str(good), "--layers", "1"], "already exists and is not empty")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_compress_and_report_end_to_end(checkpoints, tmp_path, capsys, gen):
    images = tmp_path / "images"
    _save(_random_image(gen, 1, 28, 28), images / "a<i>.png")  # names reach the HTML: escaped
    _save(_random_image(gen, 1, 45, 61), images / "b.png")
    _save(np.ascontiguousarray(skimage.data.chelsea()[:60, :90].transpose(2, 0, 1)), images / "c.jpg")  # colour
    out = tmp_path / "run"
    models = [str(checkpoints / "vdvae-mnist-tiny.pt"), str(checkpoints / "dctvae-mnist-tiny.pt")]
    argv = [
        "compress",
        *models,
        "--images",
        str(images),
        "--layers",
        "1,2",
        "--out",
        str(out),
        "-q",
        "--batch-size",
        "5",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "compression: means over 3 image(s)" in printed
    rec = pd.read_csv(out / "records.csv")
    # a (model, k) whose matched JPEG misses its PSNR by more than 1 dB on some image is a warning, here and in run.json
    missed = sorted({(r.model, r.k) for r in rec.itertuples() if abs(r.jpeg_psnr - r.psnr) > 1.0})
    warned = json.loads((out / "run.json").read_text())["warnings"]
    assert [w.split(":")[0] for w in warned] == [f"{m} k={k}" for m, k in missed]
    assert printed.count("warning: ") == len(missed)
    assert len(rec) == 3 * 2 * 2 and set(rec.k) == {1, 2}
    for col in ("psnr", "msssim", "bpp", "bits", "jpeg_quality", "jpeg_psnr", "jpeg_bpp", "patches"):
        assert pd.api.types.is_numeric_dtype(rec[col]), col
    assert (rec.bpp > 0).all() and rec.msssim.between(0, 1 + msssim_rounding()).all()
    assert rec[rec.image == "b"].patches.eq(6).all() and set(rec.msssim_impl) == {"robustvae standard (small-image)"}
    assert rec[rec.image == "c"].conversion.str.contains("luma").all()
    assert (
        rec[rec.arch == "dctvae"].bpp_context_raw.notna().all()
        and rec[rec.arch == "vdvae"].bpp_context_raw.isna().all()
    )
    sweep = pd.read_csv(out / "jpeg.csv")
    assert len(sweep) == 3 * 95
    for _, r in rec.iterrows():  # the matched quality is the sweep's closest PSNR
        s = sweep[sweep.image == r.image]
        assert r.jpeg_quality == s.quality.iloc[int(np.argmin((s.psnr - r.psnr).abs().to_numpy()))]
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "compress" and info["settings"]["layers"] == "1,2" and len(info["models"]) == 2
    assert all(m["patches_per_s"] > 0 for m in info["models"]) and info["versions"]["pillow"]
    for name in (
        "rd.png",
        "rd.pdf",
        "side-by-side/a_i_.png",
        "side-by-side/c.png",
        "images/b/dctvae-mnist-tiny-k2.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert Image.open(out / "images" / "b" / "dctvae-mnist-tiny-k2.png").size == (61, 45)
    # --force replaces the run, and only the files a run writes
    (out / "mine.txt").write_text("keep")
    assert main([*argv[:-2], "--batch-size", "64", "--force"]) == 0
    assert (out / "mine.txt").read_text() == "keep"
    capsys.readouterr()

    # an RGB model on a natural image large enough for pytorch-msssim
    rgb_out = tmp_path / "rgb"
    _save(
        np.ascontiguousarray(skimage.data.astronaut()[:176, :200].transpose(2, 0, 1)), tmp_path / "rgb-in" / "astro.png"
    )
    assert (
        main(
            [
                "compress",
                str(checkpoints / "vdvae-cifar10-tiny.pt"),
                "--images",
                str(tmp_path / "rgb-in"),
                "--layers",
                "all",
                "--out",
                str(rgb_out),
                "-q",
            ]
        )
        == 0
    )
    rgb = pd.read_csv(rgb_out / "records.csv")
    assert list(rgb.k) == [1, 2, 3] and set(rgb.msssim_impl) == {"pytorch_msssim"} and rgb.patches.eq(42).all()

    # the report: compression alone, and beside an attack run (whose part is unchanged)
    from test_report import records, write_run

    assert main(["report", str(out), str(rgb_out), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "index.html").read_text()
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert "Compression (Appendix G)" in html and "figure10" not in html and html.count("data:image/png") == 2 + 4
    assert "a<i>" not in html and "a&lt;i&gt;" in html
    assert html.count("Warning: ") == len(missed) + len(json.loads((rgb_out / "run.json").read_text())["warnings"])
    assert {r["model"] for r in summary["compression"]["table"]} == {
        "vdvae-mnist-tiny",
        "dctvae-mnist-tiny",
        "vdvae-cifar10-tiny",
    }
    assert summary["files"] == [
        "index.html",
        "summary.json",
        "compression-rd-1.png",
        "compression-rd-2.png",
        "compression.csv",
        "compression.md",
    ]
    attack = write_run(tmp_path / "attack", records(models=("vdvae-a",)))
    assert main(["report", str(attack), str(out), "--out", str(tmp_path / "both")]) == 0
    both = json.loads((tmp_path / "both" / "summary.json").read_text())
    alone = json.loads(_report_of(attack, tmp_path / "alone").read_text())
    assert {k: v for k, v in both.items() if k not in ("compression", "files", "title")} == {
        k: v for k, v in alone.items() if k not in ("files", "title")
    }
    assert both["files"][: len(alone["files"])] == alone["files"]
    assert "Compression (Appendix G)" in (tmp_path / "both" / "index.html").read_text()


def _report_of(run: Path, out: Path) -> Path:
    assert main(["report", str(run), "--out", str(out)]) == 0
    return out / "summary.json"


def test_a_jpeg_that_cannot_reach_the_models_psnr_is_a_warning():
    """Hand-made rows: only (model, k) pairs with an image more than 1 dB from its matched JPEG are named."""
    from robustvae.compression.jpeg import match_warnings

    rows = pd.DataFrame(
        {
            "model": ["a", "a", "a", "b"],
            "k": [1, 1, 2, 1],
            "image": ["x", "y", "x", "x"],
            "psnr": [8.0, 30.0, 25.0, 40.0],
            "jpeg_psnr": [18.2, 30.4, 25.9, 40.0],
            "jpeg_quality": [1, 40, 30, 60],
        }
    )
    (line,) = match_warnings(rows)
    assert line.startswith("a k=1: on 1 of 2 image(s) no JPEG quality comes within 1 dB") and "q1 18.2 dB" in line
    assert match_warnings(rows.assign(jpeg_psnr=rows.psnr)) == []


def test_output_names_are_distinct_whatever_the_file_names():
    """Names that coincide after making them file-name-safe, or in case only, get -2, -3, ... in order."""
    from robustvae.io import unique_names

    assert unique_names(["c d", "c_d", "C_D", "x", "x#2", "x_2", "c_d-2"]) == [
        "c_d",
        "c_d-2",
        "C_D-3",
        "x",
        "x_2",
        "x_2-2",
        "c_d-2-2",
    ]
    assert (
        unique_names(["", ".", ".."])
        == [
            "_",
            "_.",
            "_..",
        ]
        and unique_names([]) == []
    )
    names = ["a b", "a_b", "A_B", "a?b", "ab"]
    got = unique_names(names)
    assert len({n.casefold() for n in got}) == len(names) and got == unique_names(names)  # distinct, deterministic


def test_names_that_clash_on_disk_get_their_own_folders(checkpoints, tmp_path, capsys, gen):
    """``c d.png`` and ``c_d.png`` (and x.png / x.jpg) in one folder: each image gets its own outputs, the report reads
    them back, and nothing is written before the inputs are checked."""
    images = tmp_path / "images"
    pixels = {name: _random_image(gen, 1, 28, 28) for name in ("c d.png", "c_d.png", "x.png", "x.jpg", "X_2.png")}
    for name, p in pixels.items():
        _save(p, images / name)
    out = tmp_path / "run"
    model = str(checkpoints / "vdvae-mnist-tiny.pt")
    # a bad image among them: refused before anything is written
    (images / "z.png").write_bytes(b"not a png")
    _one_line_error(
        capsys,
        ["compress", model, "--images", str(images), "--layers", "1", "--out", str(out), "-q"],
        "cannot be read as an image",
    )
    assert not out.exists()
    (images / "z.png").unlink()
    assert main(["compress", model, "--images", str(images), "--layers", "1", "--out", str(out), "-q"]) == 0, (
        capsys.readouterr().err
    )
    info = json.loads((out / "run.json").read_text())
    folders = {Path(im["path"]).name: im["folder"] for im in info["images"]}
    # files are listed sorted: "X_2.png", "c d.png", "c_d.png", "x.jpg", "x.png" (x.png is the second x: x#2 -> x_2)
    assert folders == {"X_2.png": "X_2", "c d.png": "c_d", "c_d.png": "c_d-2", "x.jpg": "x", "x.png": "x_2-2"}
    for name, folder in folders.items():  # each folder holds its own image, bit for bit
        original = np.asarray(Image.open(out / "images" / folder / "original.png"))
        want = pixels[name][0] if name.endswith(".png") else np.asarray(Image.open(images / name))
        assert np.array_equal(original, want), name
        assert (out / "side-by-side" / f"{folder}.png").is_file()
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
