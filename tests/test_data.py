"""Datasets: offline digits, splits, binarisation, and the real loaders on local files."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import scipy.io
import torch

from robustvae.config import DataConfig
from robustvae.data import binarize, eval_images, load_dataset, stratified_order
from robustvae.errors import DataError


def test_mnist_offline_is_real_digits_split_by_seed():
    ds = load_dataset(DataConfig("mnist-offline"))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (3500, 500, 1000)
    assert ds.image_shape == (1, 28, 28) and ds.binary
    for s in (ds.train, ds.val, ds.test):
        assert s.images.min() >= 0 and s.images.max() <= 1
    # stratified: each digit 100 times in test, 50 times in validation
    assert torch.bincount(ds.test.labels).tolist() == [100] * 10
    assert torch.bincount(ds.val.labels).tolist() == [50] * 10
    # disjoint: no image appears in two splits
    flat = lambda s: {bytes(r.numpy().tobytes()) for r in (s.images * 255).round().to(torch.uint8).flatten(1)}  # noqa: E731
    tr, va, te = flat(ds.train), flat(ds.val), flat(ds.test)
    assert not (tr & va) and not (tr & te) and not (va & te)
    again = load_dataset(DataConfig("mnist-offline"))
    assert torch.equal(again.val.images, ds.val.images)
    other = load_dataset(DataConfig("mnist-offline", split_seed=1))
    assert not torch.equal(other.val.images, ds.val.images)


def test_stratified_order_prefixes_are_balanced(gen):
    labels = torch.randint(0, 5, (1000,), generator=gen)
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(1000))
    counts = torch.bincount(labels, minlength=5).double()
    head = torch.bincount(labels[order[:200]], minlength=5).double()
    assert torch.all((head - counts * 0.2).abs() <= 1.0)


def test_dynamic_binarisation_matches_intensity(gen):
    x = torch.rand(200, 1, 28, 28, generator=gen)
    b = binarize(x, gen)
    assert set(torch.unique(b).tolist()) <= {0.0, 1.0}
    assert abs(b.mean().item() - x.mean().item()) < 0.01
    ds = load_dataset(DataConfig("synthetic"))
    assert torch.equal(eval_images(ds, "test", True), eval_images(ds, "test", True))  # fixed for evaluation


def _write_idx(path, arr: np.ndarray):
    with open(path, "wb") as f:
        if arr.ndim == 3:
            f.write(struct.pack(">IIII", 0x803, *arr.shape))
        else:
            f.write(struct.pack(">II", 0x801, arr.shape[0]))
        f.write(arr.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_local_files(tmp_path, gen):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
    tr = g.integers(0, 256, (120, 28, 28))
    te = g.integers(0, 256, (30, 28, 28))
    _write_idx(raw / "train-images-idx3-ubyte", tr)
    _write_idx(raw / "train-labels-idx1-ubyte", g.integers(0, 10, 120))
    _write_idx(raw / "t10k-images-idx3-ubyte", te)
    _write_idx(raw / "t10k-labels-idx1-ubyte", g.integers(0, 10, 30))
    ds = load_dataset(DataConfig("mnist", data_dir=str(tmp_path), download=False, val_size=20))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (100, 20, 30)
    assert torch.equal(ds.test.images[:, 0], torch.as_tensor(te, dtype=torch.uint8))


def test_omniglot_from_a_local_chardata_mat(tmp_path, gen):
    """The IWAE file stores images column-major; a known asymmetric image must come back upright."""
    img = torch.zeros(28, 28)
    img[2, 3:20] = 1.0  # a horizontal stroke near the top
    img[5:25, 4] = 0.5  # a vertical stroke near the left
    col = img.numpy().reshape(-1, order="F")  # column-major, as in chardata.mat
    n_train, n_test = 40, 10
    data = np.tile(col[:, None], (1, n_train))
    targets = np.zeros((50, n_train))
    targets[3] = 1
    d = tmp_path / "omniglot"
    d.mkdir()
    scipy.io.savemat(
        d / "chardata.mat",
        {"data": data, "target": targets, "testdata": data[:, :n_test], "testtarget": targets[:, :n_test]},
    )
    ds = load_dataset(DataConfig("omniglot", data_dir=str(tmp_path), download=False, val_size=5))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (35, 5, 10)
    assert torch.equal(ds.test.images[0, 0], img)
    assert ds.train.labels.unique().tolist() == [3]


@pytest.mark.parametrize("name", ["mnist", "omniglot", "cifar10"])
def test_missing_data_offline_says_where_and_how(name, tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)) as e:
        load_dataset(DataConfig(name, data_dir=str(tmp_path), download=False))
    assert "--data-dir" in str(e.value) or "download" in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_dataset_and_too_large_val():
    with pytest.raises(DataError, match="known: mnist"):
        load_dataset(DataConfig("mnistt"))
    with pytest.raises(DataError, match="lower data.val_size"):
        load_dataset(DataConfig("synthetic", val_size=100000))


def test_synthetic_rgb_is_cifar_shaped():
    ds = load_dataset(DataConfig("synthetic-rgb"))
    assert ds.image_shape == (3, 32, 32) and not ds.binary and ds.train.images.dtype == torch.uint8
