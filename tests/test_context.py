"""DCT context codec: the DCT against scipy, the quantiser, scale fitting and decoding."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from robustvae.models.context import DCTContext, DownsampleContext, dct2, dct_matrix, idct2
from robustvae.models.distributions import snap_to_levels


def levels_of(bits: int) -> torch.Tensor:
    n = 2**bits - 1
    return (2 * torch.arange(n + 1) - n) / n


@pytest.mark.parametrize("shape", [(5, 3), (7, 7), (2, 3, 8, 8), (4, 1, 28, 28), (3, 2, 6, 11)])
def test_dct2_matches_scipy_and_idct2_inverts_it(shape, gen):
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    ref = scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(dct2(x).numpy(), ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(idct2(torch.from_numpy(ref)).numpy(), x.numpy(), rtol=1e-10, atol=1e-10)
    x32 = x.float()
    torch.testing.assert_close(idct2(dct2(x32)), x32, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dct2(x32), torch.from_numpy(ref).float(), atol=1e-4, rtol=1e-4)


def test_dct2_is_differentiable_and_its_matrices_are_cached(gen):
    x = torch.randn(2, 1, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dct2(t).pow(2).sum() + idct2(t)[..., 0, 1].sum(), (x,))
    assert dct_matrix(9) is dct_matrix(9, torch.float32, "cpu")
    d = dct_matrix(6, torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(6, dtype=torch.float64))  # orthonormal


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_quantiser_hits_exactly_2_to_the_b_levels_and_is_idempotent(bits, gen):
    codec = DCTContext(1, 8, 4, bits)
    u = torch.cat([torch.rand(4000, generator=gen) * 2.4 - 1.2, torch.tensor([-1.0, 1.0])])
    q = codec.quantise(u)
    levels = levels_of(bits)
    assert torch.unique(q).numel() == 2**bits
    assert torch.equal(torch.unique(q), levels)
    torch.testing.assert_close(levels, torch.linspace(-1, 1, 2**bits))
    assert torch.equal(codec.quantise(q), q)
    # the nearest level (brute force) for values inside [-1, 1]
    inside = u.abs() <= 1
    nearest = levels[(u[inside, None] - levels[None]).abs().argmin(1)]
    torch.testing.assert_close(q[inside], nearest)


def test_dither_stays_on_the_levels_and_only_in_training(gen):
    codec = DCTContext(1, 28, 6, 2, dither=True)
    x = torch.rand(16, 1, 28, 28, generator=gen)
    codec.fit(x)
    levels = levels_of(2)
    codec.train()
    torch.manual_seed(0)
    a = codec(x).value
    assert torch.isin(a, levels).all()
    codec.eval()
    b, c = codec(x).value, codec(x).value
    assert torch.equal(b, c) and torch.equal(b, snap_to_levels(codec(x).pre_quant, 4))
    assert not torch.equal(a, b)


def test_straight_through_passes_the_quantiser_gradient(gen):
    codec = DCTContext(1, 8, 4, 3)
    u = (torch.rand(10, generator=gen) * 2 - 1).requires_grad_()
    codec.quantise(u).sum().backward()
    assert torch.equal(u.grad, torch.zeros(10))
    u.grad = None
    codec.quantise(u, straight_through=True).sum().backward()
    assert torch.equal(u.grad, torch.ones(10))


def test_fit_sets_the_scale_to_the_max_abs_coefficient_of_the_given_images(gen):
    x = torch.rand(37, 3, 16, 16, generator=gen)
    codec = DCTContext(3, 16, 5, 5)
    codec.fit(x, batch_size=8)
    ref = np.abs(scipy.fft.dctn(x.double().numpy(), type=2, norm="ortho", axes=(-2, -1))[..., :5, :5]).max(0)
    np.testing.assert_allclose(codec.scale.numpy(), ref, rtol=1e-5)
    # uint8 images (CIFAR10 is stored that way) give the scale of their float version
    u8 = (x * 255).round().to(torch.uint8)
    codec8 = DCTContext(3, 16, 5, 5)
    codec8.fit(u8)
    codec.fit(u8.float() / 255)
    torch.testing.assert_close(codec8.scale, codec.scale)
    # normalised training coefficients lie in [-1, 1] and reach +-1 somewhere per coefficient
    u = codec.normalise(u8.float() / 255)
    torch.testing.assert_close(u.abs().amax(0), torch.ones(3, 5, 5))
    assert "scale" in codec.state_dict()


def _smooth_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    low = torch.rand(n, 1, 7, 7, generator=gen)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(n, 1, size, size, generator=gen)).clamp(0, 1)


@pytest.mark.parametrize("kind", [DCTContext, DownsampleContext])
def test_decode_error_shrinks_as_the_context_grows(kind, gen):
    x = _smooth_images(24, 28, gen)
    errs, errs_q = [], []
    for c in (2, 4, 7, 14, 28):
        codec = kind(1, 28, c, 8)
        codec.fit(x)
        code = codec(x)
        errs.append(float((codec.decode(code.pre_quant) - x).pow(2).mean()))
        errs_q.append(float((codec.decode(code.value) - x).pow(2).mean()))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert all(a > b for a, b in zip(errs_q, errs_q[1:])), errs_q
    assert errs[-1] < 1e-10  # the whole image: decoding inverts exactly
    assert errs_q[-1] < 1e-3  # 8-bit quantisation error only


def test_downsample_context_is_block_means_on_a_centred_scale(gen):
    x = torch.rand(5, 2, 12, 12, generator=gen)
    codec = DownsampleContext(2, 12, 4, 4)
    codec.fit(x)
    means = x.reshape(5, 2, 4, 3, 4, 3).mean((3, 5))
    torch.testing.assert_close(codec.normalise(x) * codec.scale, means * 2 - 1)
    blocky = means.repeat_interleave(3, 2).repeat_interleave(3, 3)
    torch.testing.assert_close(codec.decode(codec.normalise(x)), blocky)


def test_pre_quant_is_differentiable_in_x(gen):
    codec = DCTContext(1, 28, 6, 2)
    x = _smooth_images(3, 28, gen)
    codec.fit(torch.cat([x, torch.ones(1, 1, 28, 28)]))
    x.requires_grad_()
    codec(x).pre_quant.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
