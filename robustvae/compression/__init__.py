"""Compression with the top k latent layers (Appendix G): the model side, JPEG, and images.

The experiment that runs it over images and writes records is
:mod:`robustvae.experiments.compress`; its figures are drawn by
:mod:`robustvae.reporting.compression`.

Every image is cut into patches of the model's input size (:mod:`.images`); each patch
is reconstructed from the posterior means of the top k layers with the layers below
drawn from the prior at ``temperature`` (``model.reconstruct``; binary-data models
return their Bernoulli likelihood's mean, i.e. pixel probabilities used as grey
values, never a sample); the patches are stitched back, rounded to 8 bits (the image
one would save) and scored against the image with PSNR and MS-SSIM (:mod:`.jpeg`).

Rate: the KL terms of the top k layers from ``model.elbo`` (analytic Gaussian KLs at one
seeded posterior sample: an unbiased estimate of the expected code length of those
latents under the prior), summed over the image's patches (padding included: it is
coded too), in bits, over the H x W pixel positions of the image: ``bpp``. For DCT-VAE,
layer 1 is the context: ``bpp`` counts its bits under the diffusion prior (the bound
``elbo().kl[:, 0]``), and ``bpp_context_raw`` (the seed's BPP*) counts instead the
quantised context's raw size, C x c x c coefficients x b bits, plus the same Gaussian
KLs. The JPEG baseline: for each image and k, the quality whose PSNR is closest to the
model's, with its real file size.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from robustvae.compression.images import InputImage, patchify, stitch, to_uint8
from robustvae.config import CompressConfig
from robustvae.seeding import derive_seed


def context_raw_bits(model: nn.Module) -> float:
    """Bits of one patch's top layer stored as it is when it is a quantised code (C x c x c x b bits); else 0."""
    return model.layers[0].raw_bits


@torch.no_grad()
def code_patches(
    model: nn.Module,
    patches: torch.Tensor,
    ks: list[int],
    cfg: CompressConfig,
    device: torch.device,
    advance=lambda n: None,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Reconstructions per k of ``patches`` (N, C, P, P) and each patch's per-layer rate in bits (N, L).

    Batches of ``cfg.batch_size`` patches; the prior noise (shared by every k) and the
    rate's posterior samples come from ``cfg.seed``; ``advance(n)`` reports progress.
    """
    n = patches.shape[0]
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "prior noise"))
    recs = {k: torch.empty(patches.shape) for k in ks}
    bits = torch.empty(n, model.num_layers)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(cfg.seed, "rate"))
        for i in range(0, n, cfg.batch_size):
            xb = patches[i : i + cfg.batch_size].to(device)
            noise = model.make_noise(xb.shape[0], gen)
            for k in ks:
                recs[k][i : i + xb.shape[0]] = model.reconstruct(xb, k, cfg.temperature, noise).float().cpu()
            bits[i : i + xb.shape[0]] = model.elbo(xb).kl.float().cpu() / math.log(2)
            advance(xb.shape[0])
    return recs, bits


class Reconstructions(dict):
    """An image's 8-bit reconstructions by k, and per k how many values were non-finite before the cast.

    An 8-bit image cannot hold NaN (it would be silently black): such a reconstruction is
    not scored (``nonfinite[k] > 0``; its PSNR and MS-SSIM are NaN and no JPEG is matched).
    """

    def __init__(self, recs: dict[int, np.ndarray], nonfinite: dict[int, int]):
        super().__init__(recs)
        self.nonfinite = nonfinite


def code_images(
    model: nn.Module,
    images: list[InputImage],
    ks: list[int],
    cfg: CompressConfig,
    device: torch.device,
    advance=lambda n: None,
) -> tuple[list[dict[int, np.ndarray]], list[torch.Tensor], list[int], float]:
    """Per image: its 8-bit reconstruction per k, per-layer bits summed over its patches, and its patch count.

    The patches of all images go through the model together (batched across images);
    the last item is the seconds the model passes took.
    """
    size = model.cfg.image_size
    cut = [patchify(im.tensor(), size) for im in images]
    t0 = time.perf_counter()
    recs, bits = code_patches(model, torch.cat([p for p, _ in cut]), ks, cfg, device, advance)
    seconds = time.perf_counter() - t0
    out_recs, out_bits, counts = [], [], []
    start = 0
    for im, (p, grid) in zip(images, cut):
        stop = start + p.shape[0]
        full = {k: stitch(recs[k][start:stop], grid, im.height, im.width) for k in ks}
        out_recs.append(
            Reconstructions(
                {k: to_uint8(v) for k, v in full.items()},
                nonfinite={k: int((~torch.isfinite(v)).sum()) for k, v in full.items()},
            )
        )
        out_bits.append(bits[start:stop].sum(0))
        counts.append(p.shape[0])
        start = stop
    return out_recs, out_bits, counts, seconds
