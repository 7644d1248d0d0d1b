"""The rounding-tolerance helper of the tests (tests/tolerance.py) does what its tolerances rely on."""

from __future__ import annotations

import math

import pytest
import torch

from tolerance import EPS32, SAFETY, RoundingTolerance, float32_jitter, msssim_rounding


pytestmark = pytest.mark.numerical


def test_jitter_rounds_kernel_dependent_results_again_and_leaves_the_rest_exact():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
    plain = (a @ b, a.exp(), a * b + a, a.clamp(-1, 1), a.sum())
    torch.manual_seed(5)
    with float32_jitter(1):
        jittered = (a @ b, a.exp(), a * b + a, a.clamp(-1, 1), a.sum())
        drawn = torch.rand(3)
    assert torch.equal(drawn, torch.manual_seed(5) and torch.rand(3))  # the global generator is untouched
    # a sum moves by up to one ulp of itself and one of the sum of its terms' magnitudes (and its own rounding)
    for p, j, size in ((plain[0], jittered[0], a.abs() @ b.abs()), (plain[4], jittered[4], a.abs().sum())):
        assert ((j - p).abs() <= 2 * EPS32 * (p.abs() + size) + 2 * EPS32 * p.abs()).all()
        assert (j != p).float().mean() > 0.3
    rel = ((jittered[1] - plain[1]) / plain[1]).abs()  # other results: one ulp
    assert rel.max() <= 3 * EPS32 and (rel > 0).float().mean() > 0.3
    assert torch.equal(plain[2], jittered[2]) and torch.equal(plain[3], jittered[3])  # correctly rounded everywhere


def test_jitter_reaches_the_backward_pass():
    x = torch.linspace(-1, 1, 50, requires_grad=True)
    grads = []
    for jitter in (False, True):
        with float32_jitter(3) if jitter else torch.enable_grad():
            (g,) = torch.autograd.grad(x.exp().sum(), x)
        grads.append(g)
    assert not torch.equal(*grads) and torch.allclose(*grads, rtol=8 * EPS32, atol=0)


def test_a_tolerance_is_the_safety_times_the_largest_change_in_its_group_plus_roundings():
    ref = [{"a": 1.0, "b": 10.0, "n": 3}, {"a": 2.0, "b": 20.0, "n": 4}]
    jit = [{"a": 1.0 + 1e-6, "b": 10.0, "n": 3}, {"a": 2.0 - 3e-6, "b": 20.0, "n": 4}]
    tol = RoundingTolerance(ref, [jit])
    assert tol.spread == {"a": pytest.approx(3e-6), "b": 0.0}
    assert tol.tolerance((0, "a"), 1.0) == pytest.approx(SAFETY * (3e-6 + EPS32))
    assert tol.tolerance((1, "b"), 20.0) == pytest.approx(SAFETY * EPS32 * 20)
    tol.assert_close([{"a": 1.0 + 2e-5, "b": 10.0, "n": 3}, {"a": 2.0, "b": 20.0 + 1e-6, "n": 4}], ref)
    with pytest.raises(AssertionError, match="tolerance"):
        tol.assert_close([{"a": 1.0 + 3e-5, "b": 10.0, "n": 3}, ref[1]], ref)
    with pytest.raises(AssertionError):  # integers (counts, indices) are exact
        tol.assert_close([{"a": 1.0, "b": 10.0, "n": 2}, ref[1]], ref)
    with pytest.raises(AssertionError):  # so are the groups named exact
        tol.assert_close([{"a": 1.0 + 1e-7, "b": 10.0, "n": 3}, ref[1]], ref, exact=("a",))
    tol.assert_close([{"a": math.nan, "b": math.inf, "n": 3}, ref[1]], [{"a": math.nan, "b": math.inf, "n": 3}, ref[1]])


def test_the_msssim_bound_covers_float64_against_float32_on_nearly_identical_images():
    """The bound comes from the jitter; float32's actual error (against float64) on other nearly identical
    pairs stays inside it, and identical images score 1 exactly."""
    from robustvae.metrics import VARIANTS, ms_ssim

    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.avg_pool2d(torch.rand(32, 1, 36, 36, generator=g), 5, stride=1)
    y = (x + 1e-3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    bound = msssim_rounding()
    assert 0 < bound < 1e-2
    for variant in VARIANTS:
        error = (ms_ssim(x, y, variant=variant).double() - ms_ssim(x.double(), y.double(), variant=variant)).abs()
        assert error.max() <= bound / SAFETY, (variant, error.max().item(), bound)
        assert torch.equal(ms_ssim(x, x, variant=variant), torch.ones(32))
