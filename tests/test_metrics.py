"""MS-SSIM against a brute-force per-image loop written from docs/protocol.md, and against pytorch-msssim."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as reference_ms_ssim
from scipy.signal import correlate2d

from robustvae.metrics import ms_ssim, psnr

pytestmark = pytest.mark.numerical  # CI runs these again under ATEN_CPU_CAPABILITY=default

W = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]


def _brute_kuzina(a: np.ndarray, b: np.ndarray, window_size=14, L=1.0) -> float:
    """One image (C, H, W), float64, straight from the formula: loops, scipy, no batching."""
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    cs_levels, ssim_last = [], None
    for level in range(5):
        n = min(window_size, a.shape[1], a.shape[2])
        coords = np.arange(n) - n // 2
        g = np.exp(-(coords**2) / (2 * 1.5**2))
        g /= g.sum()
        win = np.outer(g, g)
        ssim_vals, cs_vals = [], []
        for ch in range(a.shape[0]):
            x, y = a[ch], b[ch]
            f = lambda z: correlate2d(z, win, mode="valid")  # noqa: E731
            mu1, mu2 = f(x), f(y)
            s11, s22, s12 = f(x * x) - mu1**2, f(y * y) - mu2**2, f(x * y) - mu1 * mu2
            cs = (2 * s12 + c2) / (s11 + s22 + c2)
            ssim_vals.append(((2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1) * cs).ravel())
            cs_vals.append(cs.ravel())
        ssim_mean = max(np.concatenate(ssim_vals).mean(), 0.0)
        cs_mean = max(np.concatenate(cs_vals).mean(), 0.0)
        if level < 4:
            cs_levels.append(cs_mean)
            h, w = a.shape[1] // 2, a.shape[2] // 2
            a = a[:, : 2 * h, : 2 * w].reshape(a.shape[0], h, 2, w, 2).mean((2, 4))
            b = b[:, : 2 * h, : 2 * w].reshape(b.shape[0], h, 2, w, 2).mean((2, 4))
        else:
            ssim_last = ssim_mean
    out = ssim_last ** (4 * W[4])
    for c, w in zip(cs_levels, W[:4]):
        out *= c**w
    return out


@pytest.mark.parametrize("shape", [(6, 1, 28, 28), (4, 3, 32, 32), (3, 1, 17, 23)])
def test_kuzina_batched_equals_brute_force_per_image(shape, gen):
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    # a mix of mild and strong distortions so the values spread over (0, 1)
    scale = torch.linspace(0.02, 0.6, shape[0], dtype=torch.float64).view(-1, 1, 1, 1)
    y = (x + scale * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    got = ms_ssim(x, y, variant="kuzina")
    ref = [_brute_kuzina(x[i].numpy(), y[i].numpy()) for i in range(shape[0])]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9, atol=1e-12)
    # per-image: a batch equals scoring each image alone
    alone = torch.cat([ms_ssim(x[i : i + 1], y[i : i + 1]) for i in range(shape[0])])
    torch.testing.assert_close(got, alone)


def test_float32_batch_of_attack_size_matches_float64_and_per_image(gen):
    """The matrix-product filtering keeps float32 close to float64, and a batch equal to its images alone."""
    x = torch.rand(250, 1, 28, 28, generator=gen)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    got = ms_ssim(x, y)
    torch.testing.assert_close(got, ms_ssim(x.double(), y.double()).float(), rtol=0, atol=1e-4)
    alone = torch.cat([ms_ssim(x[i : i + 1], y[i : i + 1]) for i in range(0, 250, 25)])
    torch.testing.assert_close(got[::25], alone, rtol=0, atol=1e-5)  # float32 rounding of the variances


def test_window_bands_are_cached_per_size_and_dtype():
    from robustvae.metrics import _band

    a = _band(28, 14, torch.float32, torch.device("cpu"))
    assert a is _band(28, 14, torch.float32, torch.device("cpu"))
    assert a.shape == (15, 28) and _band(28, 14, torch.float64, torch.device("cpu")).dtype == torch.float64
    torch.testing.assert_close(a.sum(1), torch.ones(15))


def test_identical_images_score_one(gen):
    x = torch.rand(3, 1, 28, 28, generator=gen)
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(3))
    torch.testing.assert_close(ms_ssim(x, x, variant="standard"), torch.ones(3))


def test_standard_equals_pytorch_msssim_on_large_images(gen):
    x = torch.rand(3, 3, 200, 180, generator=gen, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    ref = reference_ms_ssim(x, y, data_range=1.0, size_average=False)
    torch.testing.assert_close(ms_ssim(x, y, variant="standard"), ref)
    # the own implementation (used for small images) agrees where both apply
    from robustvae.metrics import _standard_own

    # (pytorch-msssim builds its window in float32, hence the tolerance)
    torch.testing.assert_close(_standard_own(x, y, 1.0, 11), ref, rtol=1e-5, atol=1e-7)


def test_small_images_are_rejected_clearly():
    with pytest.raises(ValueError, match="too small for 5-level MS-SSIM"):
        ms_ssim(torch.rand(1, 1, 12, 12), torch.rand(1, 1, 12, 12))
    with pytest.raises(ValueError, match="unknown MS-SSIM variant"):
        ms_ssim(torch.rand(1, 1, 28, 28), torch.rand(1, 1, 28, 28), variant="fancy")


def test_psnr_matches_formula(gen):
    x = torch.rand(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.rand(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    mse = ((x - y) ** 2).mean((1, 2, 3))
    torch.testing.assert_close(psnr(x, y), 10 * torch.log10(1 / mse))
