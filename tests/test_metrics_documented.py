"""MS-SSIM behaves as docs/protocol.md says: negative levels clip the score to 0 (as pytorch-msssim), and an even
window peaks at tap n // 2 with valid convolution (the map sizes stated there)."""

from __future__ import annotations

import pytest
import pytorch_msssim
import torch

from robustvae.metrics import _ssim_cs_maps, gaussian_window, ms_ssim


def test_an_anticorrelated_pair_scores_exactly_0_like_pytorch_msssim(gen):
    x = torch.rand(3, 1, 28, 28, generator=gen)
    assert torch.equal(ms_ssim(x, 1 - x), torch.zeros(3))  # kuzina, the attack metric
    big = torch.rand(1, 3, 176, 176, generator=gen)
    ours = ms_ssim(big, 1 - big, variant="standard")
    theirs = pytorch_msssim.ms_ssim(big, 1 - big, data_range=1.0, size_average=False)
    assert torch.equal(ours, torch.zeros(1)) and torch.equal(theirs, torch.zeros(1))


@pytest.mark.parametrize("n", [14, 8, 11])
def test_an_even_window_peaks_at_tap_n_over_2(n):
    g = gaussian_window(n).double()
    offsets = torch.arange(n) - n // 2  # -7 .. 6 for n = 14
    want = torch.exp(-(offsets.double() ** 2) / (2 * 1.5**2))
    torch.testing.assert_close(g, want / want.sum(), rtol=1e-6, atol=0)  # float32 window, rounding only
    assert int(g.argmax()) == n // 2


@pytest.mark.parametrize("side, maps", [(28, [15, 1, 1, 1, 1]), (32, [19, 3, 1, 1, 1])])
def test_the_map_sizes_of_docs_protocol(side, maps):
    """Valid convolution with min(14, side) taps at each level of 2 x 2 (floor) pooling: the sizes the docs list."""
    sizes, s = [], side
    for _ in range(5):
        xy = torch.rand(2, 1, 1, s, s)
        ssim, _ = _ssim_cs_maps(xy, min(14, s), 1e-4, 9e-4)
        sizes.append(ssim.shape[-1])
        s //= 2
    assert sizes == maps
