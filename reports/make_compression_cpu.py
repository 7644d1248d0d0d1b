"""The compression measurements of reports/compression-cpu/ (Appendix G on a CPU budget). Rerun from anywhere:

    OMP_NUM_THREADS=1 python reports/make_compression_cpu.py

1. Inputs, written as PNG files into RUNS/images/ (nothing downloaded):
   * digits/: the first 8 test digits of mnist-offline (28x28 grey, one patch each);
   * tiled/: the first 64 test digits tiled 8 x 8 into one 224x224 image (so JPEG's headers are
     shared by 64 digits, and pytorch-msssim can score it);
   * natural/: scikit-image's astronaut (512x512), coffee (400x600) and chelsea (300x451), RGB.
2. A tiny CIFAR-shaped model (preset vdvae-cifar10-tiny: 3x32x32, channels 8/8, 3 latent layers,
   3-component logistic mixture) trained for TRAIN_STEPS steps of batch 32 on 32x32 crops (stride 16)
   of six *other* scikit-image photographs (rocket, hubble_deep_field, retina, immunohistochemistry,
   and both views of stereo_motorcycle), registered in this process as the dataset
   ``skimage-natural-crops``; none of the three test images is among them.
3. ``robustvae compress`` of the 30-epoch MNIST models (VDVAE, DCT-VAE; MNIST_RUNS) on digits/ and
   tiled/, and of the tiny model on natural/; then ``robustvae report`` of all three runs.

Settings from the environment: RUNS=runs/compression-cpu, OUT=reports/compression-cpu,
MNIST_RUNS=runs (holding vdvae-mnist-cpu/ and dctvae-mnist-cpu/), TRAIN_STEPS=1500, FORCE=1 retrains.
The commands and their wall times go to RUNS/commands.txt and into the report.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RUNS = Path(os.environ.get("RUNS", ROOT / "runs" / "compression-cpu"))
OUT = Path(os.environ.get("OUT", ROOT / "reports" / "compression-cpu"))
MNIST_RUNS = Path(os.environ.get("MNIST_RUNS", ROOT / "runs"))
TRAIN_STEPS = int(os.environ.get("TRAIN_STEPS", "1500"))
FORCE = os.environ.get("FORCE") == "1"
TRAIN_IMAGES = ("rocket", "hubble_deep_field", "retina", "immunohistochemistry")
TEST_IMAGES = ("astronaut", "coffee", "chelsea")
NOTES = RUNS / "commands.txt"


def note(text: str) -> None:
    with open(NOTES, "a") as f:
        f.write(text + "\n")


def save(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_inputs() -> None:
    import skimage.data

    from robustvae.config import DataConfig
    from robustvae.data import load_dataset

    test = (load_dataset(DataConfig("mnist-offline")).test.images[:64, 0] * 255).round().to(torch.uint8).numpy()
    for i in range(8):
        save(test[i], RUNS / "images" / "digits" / f"digit{i}.png")
    save(
        test.reshape(8, 8, 28, 28).transpose(0, 2, 1, 3).reshape(224, 224), RUNS / "images" / "tiled" / "digits-8x8.png"
    )
    for name in TEST_IMAGES:
        save(getattr(skimage.data, name)(), RUNS / "images" / "natural" / f"{name}.png")


def natural_crops(_cfg):
    """(train + validation pool, test) of 32x32 crops (stride 16) of the training photographs, uint8."""
    import skimage.data

    from robustvae.data import Split

    photos = [getattr(skimage.data, n)() for n in TRAIN_IMAGES] + list(skimage.data.stereo_motorcycle()[:2])
    crops = []
    for a in photos:
        t = torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1)
        crops.append(t.unfold(1, 32, 16).unfold(2, 32, 16).permute(1, 2, 0, 3, 4).reshape(-1, 3, 32, 32))
    x = torch.cat(crops)[torch.randperm(sum(len(c) for c in crops), generator=torch.Generator().manual_seed(0))]
    labels = torch.full((len(x),), -1, dtype=torch.long)
    return Split(x[500:], labels[500:]), Split(x[:500], labels[:500])


def train_tiny(out: Path) -> None:
    from robustvae.data import DATASETS, DatasetSpec
    from robustvae.registry import get_preset
    from robustvae.training import Trainer

    DATASETS["skimage-natural-crops"] = DatasetSpec(
        natural_crops, False, (3, 32, 32), 500, "32x32 crops (stride 16) of 6 scikit-image photographs"
    )
    cfg = get_preset("vdvae-cifar10-tiny")
    cfg = dataclasses.replace(
        cfg,
        name="vdvae-cifar10-tiny-natural",
        data=dataclasses.replace(cfg.data, name="skimage-natural-crops"),
        train=dataclasses.replace(cfg.train, steps=TRAIN_STEPS, batch_size=32, val_batches=8),
    )
    Trainer.prepare_dir(out, resume=False, force=True)
    t0 = time.perf_counter()
    s = Trainer(cfg, out, torch.device("cpu"), quiet=True).fit()
    note(
        f"# trained {cfg.name} in-process (Trainer API): vdvae-cifar10-tiny, {TRAIN_STEPS} steps of batch 32 on "
        f"skimage-natural-crops = 32x32 crops, stride 16, of {', '.join(TRAIN_IMAGES)}, stereo_motorcycle (both views); "
        f"validation -ELBO {s['final_val']['bpd']:.3f} bits/dim\n    # {time.perf_counter() - t0:.0f} s"
    )


def run(*args: str) -> None:
    cmd = [sys.executable, "-m", "robustvae", *args]
    shown = "OMP_NUM_THREADS=1 python -m robustvae " + shlex.join(map(str, args))
    note(shown)
    print("+", shown, file=sys.stderr)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    note(f"    # {time.perf_counter() - t0:.0f} s")


def main() -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    NOTES.write_text(
        f"Produced by reports/make_compression_cpu.py on {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, "
        f"one CPU thread.\n\n"
    )
    write_inputs()
    tiny = RUNS / "vdvae-cifar10-tiny-natural"
    if FORCE or not (tiny / "summary.json").is_file():
        train_tiny(tiny)
    else:
        note(f"# reused {tiny} (FORCE=1 retrains)")
    mnist = [str(MNIST_RUNS / "vdvae-mnist-cpu"), str(MNIST_RUNS / "dctvae-mnist-cpu")]
    images = RUNS / "images"
    run(
        "compress",
        *mnist,
        "--images",
        str(images / "digits"),
        "--layers",
        "1-8",
        "--out",
        str(RUNS / "mnist-digits"),
        "--device",
        "cpu",
        "--force",
        "-q",
    )
    run(
        "compress",
        *mnist,
        "--images",
        str(images / "tiled"),
        "--layers",
        "1-8",
        "--out",
        str(RUNS / "mnist-tiled"),
        "--device",
        "cpu",
        "--force",
        "-q",
    )
    run(
        "compress",
        str(tiny),
        "--images",
        str(images / "natural"),
        "--layers",
        "all",
        "--out",
        str(RUNS / "natural-tiny"),
        "--device",
        "cpu",
        "--force",
        "-q",
    )
    run(
        "report",
        str(RUNS / "mnist-digits"),
        str(RUNS / "mnist-tiled"),
        str(RUNS / "natural-tiny"),
        "--notes",
        str(NOTES),
        "--out",
        str(OUT),
        "--force",
        "--title",
        "robustvae compression (Appendix G) on a CPU budget",
    )


if __name__ == "__main__":
    main()
