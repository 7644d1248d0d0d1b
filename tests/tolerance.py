"""Tolerances for recorded float32 numbers, derived from float32 rounding (for the tests only).

A recorded number (tests/golden/, the authors' fixtures) was computed on one machine; another
CPU computes the same float32 operations with other kernels (torch picks them by instruction
set: AVX-512, AVX2, none under ``ATEN_CPU_CAPABILITY=default``). Elementwise +, -, *, / and
sqrt are correctly rounded in IEEE arithmetic and agree everywhere; what differs is the
result of every operation whose kernel chooses an order or an approximation: reductions
(summation order), matrix products and convolutions (blocking, fused multiply-add) and
transcendental functions (vectorised approximations). Each of those results is another
float32 rounding of the same value: a change of an ulp (unit in the last place) or more.

How far that moves a test's result is the computation's sensitivity to float32 rounding.
:class:`float32_jitter` measures it: inside it, the result of every such operation is
multiplied by ``1 + 2^-23 u`` with ``u ~ U(-1, 1)`` drawn from a generator of its own (the
computation's own random draws are untouched), which moves it by up to one ulp, and a sum (a
matrix product, a convolution, a mean) is also moved by up to one ulp of the sum of its terms'
magnitudes: summed in another order, a sum that cancels is rounded at the size of its partial
sums (a scrambled model's activations reach 1e6 while its outputs are of order 1). Running a computation once as is and once
jittered gives, per field, the change that one more rounding of everything makes; the
tolerance of a comparison with a recorded number is ``SAFETY`` times that change, taken as the
largest over a group of like fields (every row's ``msssim``, say: one draw of the jitter
is a noisy estimate of the spread, the largest over a group is not), plus ``SAFETY`` roundings
of the value itself (a field the jitter does not move may still be rounded differently).

``SAFETY = 8``: the recorded run and this one differ by two independent roundings (the
recorded machine's and this one's), a factor sqrt(2) to 2 over one; the largest change of
one jittered run over a group of n fields estimates the largest of n draws, and the
differences between real kernels (several ulps for a vectorised exp, a reordered sum of
hundreds of terms) exceed one rounding of the result by a few. Measured when this was written
(AMD EPYC without AVX-512, its AVX2 and the ``default`` kernels, against the recording machine's
golden files and the authors' fixtures): the largest difference was 0.47 of its tolerance (an
attack's delta_linf, 2 ulps of 0.1, held by the roundings of the value); where the jitter moved a
field, differences reached 2.6 times its largest change (a weight sum of dctvae's training).
"""

from __future__ import annotations

import math
from functools import lru_cache
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

EPS32 = 2.0**-24  # float32 unit roundoff: a correctly rounded result is within EPS32 relative of the exact value
SAFETY = 8

# Operations whose float32 result depends on the kernel (order of summation, blocking, FMA, approximations).
# Elementwise arithmetic, comparisons, min/max, clamp, rounding, indexing and copies are exact everywhere.
SUMS = frozenset(
    {  # sums of products or of terms: another order rounds the partial sums, of the size of the terms
        "matmul",
        "__matmul__",
        "__rmatmul__",
        "mm",
        "bmm",
        "mv",
        "dot",
        "einsum",
        "linear",
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "sum",
        "mean",
        "nansum",
        "cumsum",
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
    }
)
KERNEL_DEPENDENT = SUMS | frozenset(
    {
        # other reductions (of positive terms, or normalised)
        "addmm",
        "baddbmm",
        "prod",
        "cumprod",
        "var",
        "std",
        "norm",
        "vector_norm",
        "logsumexp",
        "softmax",
        "log_softmax",
        "batch_norm",
        "group_norm",
        "layer_norm",
        # transcendental functions
        "exp",
        "exp2",
        "expm1",
        "log",
        "log2",
        "log10",
        "log1p",
        "pow",
        "__pow__",
        "__rpow__",
        "float_power",
        "sigmoid",
        "logsigmoid",
        "tanh",
        "softplus",
        "silu",
        "gelu",
        "elu",
        "mish",
        "erf",
        "erfc",
        "erfinv",
        "lgamma",
        "digamma",
        "sin",
        "cos",
        "tan",
        "atan",
        "atan2",
        "logaddexp",
        "logit",
    }
)


# Elementwise arithmetic: the same on every CPU, but another implementation of a formula orders it otherwise
# (float32_jitter(elementwise=True), for comparisons with another code base's numbers).
ELEMENTWISE_SUMS = frozenset({"add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "rsub", "addcmul", "lerp"})
ELEMENTWISE = ELEMENTWISE_SUMS | frozenset(
    {"mul", "__mul__", "__rmul__", "div", "__truediv__", "__rtruediv__", "sqrt", "rsqrt", "reciprocal", "square"}
)


def _magnitudes(a: Any) -> Any:
    return torch.utils._pytree.tree_map(
        lambda t: t.abs() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, a
    )


class float32_jitter(TorchFunctionMode):
    """Within this context, the floating result of every kernel-dependent operation (``KERNEL_DEPENDENT``) is
    rounded once more: multiplied by ``1 + eps u``, and a sum (``SUMS``: matrix products, convolutions, sums,
    means, pooling) also moved by ``eps u' S``, where S is the same operation on the magnitudes of its inputs
    (the sum of |terms|: a sum that cancels is rounded at the size of its partial sums, not of its result).
    u, u' ~ U(-1, 1); eps is the machine epsilon of the dtype (2^-23 for float32): up to one ulp of each.

    ``elementwise``: round elementwise arithmetic once more too (sums of two terms at the size of the terms),
    which every CPU computes alike but another code base's formulas may order otherwise.

    The draws come from a generator seeded with ``seed``; torch's global generator is not touched, so a
    computation draws the same random numbers with and without the jitter. Gradients pass through the
    factor (the backward pass is rounded once more too), not through the moved sums.
    """

    def __init__(self, seed: int = 1, elementwise: bool = False):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)
        self.ops = KERNEL_DEPENDENT | ELEMENTWISE if elementwise else KERNEL_DEPENDENT
        self.sums = SUMS | ELEMENTWISE_SUMS if elementwise else SUMS

    def _uniform(self, like: torch.Tensor) -> torch.Tensor:
        return (torch.rand(like.shape, generator=self.generator, dtype=like.dtype) * 2 - 1).to(like.device)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", None)
        if (
            name in self.ops
            and isinstance(out, torch.Tensor)
            and out.is_floating_point()
            and out.numel()
            and "out" not in kwargs
        ):
            eps = torch.finfo(out.dtype).eps
            moved = out * (1 + eps * self._uniform(out))
            if name in self.sums:
                with torch.no_grad():
                    size = func(*_magnitudes(args), **_magnitudes(kwargs))
                moved = moved + eps * self._uniform(out) * size
            out = moved
        return out


def leaves(obj: Any, path: tuple = ()) -> dict[tuple, Any]:
    """Nested dicts and lists -> {path: value} (a path is the tuple of keys and indices down to the value)."""
    if isinstance(obj, Mapping):
        return {p: v for k, sub in obj.items() for p, v in leaves(sub, (*path, k)).items()}
    if isinstance(obj, (list, tuple)):
        return {p: v for i, sub in enumerate(obj) for p, v in leaves(sub, (*path, i)).items()}
    return {path: obj}


def field_name(path: tuple) -> Hashable:
    """The default group of a leaf: its innermost dict key (every row's ``msssim`` together, every layer's KL)."""
    return next((k for k in reversed(path) if isinstance(k, str)), ())


class RoundingTolerance:
    """Per group of fields, ``SAFETY`` x the largest change one float32 jitter made to a field of the group.

    ``reference``: a result computed as is; ``jittered``: the same computation under :class:`float32_jitter`
    (one or more seeds), same structure; a field not finite in either run counts as changed without bound.
    ``group(path)`` names the group of a leaf (default: its field name).
    ``scale(path)``: the unit in which a leaf's change is pooled with its group's (default 1: absolute; a sum's
    rounding, say, scales with the sum of its terms' magnitudes, not with the sum).
    """

    def __init__(
        self,
        reference: Any,
        jittered: Iterable[Any],
        group: Callable[[tuple], Hashable] = field_name,
        scale: Callable[[tuple], float] = lambda path: 1.0,
        safety: float = SAFETY,
    ):
        self.group, self.scale, self.safety = group, scale, safety
        ref = leaves(reference)
        self.spread: dict[Hashable, float] = {}  # per group: the largest change, in units of scale
        for other in jittered:
            jit = leaves(other)
            assert jit.keys() == ref.keys(), "the jittered run has other fields than the reference"
            for p, v in ref.items():
                if isinstance(v, float) and math.isfinite(v):
                    change = abs(jit[p] - v) / scale(p) if math.isfinite(jit[p]) else math.inf
                    g = group(p)
                    self.spread[g] = max(self.spread.get(g, 0.0), change)
        self.worst: tuple[float, tuple, float, float] | None = None  # (|diff| / tolerance, path, |diff|, tolerance)

    def tolerance(self, path: tuple, want: float) -> float:
        """The allowed |got - want| at ``path``: the group's spread and the value's own roundings, times the safety."""
        return self.safety * (self.spread.get(self.group(path), 0.0) * self.scale(path) + EPS32 * abs(want))

    def assert_close(self, got: Any, want: Any, where: str = "", exact: Iterable[Hashable] = ()) -> None:
        """Equal structure; strings, ints, bools and the groups in ``exact`` exactly; other floats within
        :meth:`tolerance` (NaN equals NaN).

        Records the worst |difference| / tolerance in ``self.worst`` (for the closing note of a change).
        """
        g, w = leaves(got), leaves(want)
        exact = set(exact)
        assert list(g) == list(w), (where, [p for p in g if p not in w][:3], [p for p in w if p not in g][:3])
        for p, b in w.items():
            a = g[p]
            if (isinstance(a, float) or isinstance(b, float)) and self.group(p) not in exact:
                if not (math.isfinite(a) and math.isfinite(b)):  # NaN equals NaN, inf equals inf (PSNR of equal images)
                    assert a == b or (math.isnan(a) and math.isnan(b)), (where, p, a, b)
                    continue
                tol, diff = self.tolerance(p, b), abs(a - b)
                ratio = diff / tol if tol else (math.inf if diff else 0.0)
                if self.worst is None or ratio > self.worst[0]:
                    self.worst = (ratio, p, diff, tol)
                assert diff <= tol, (where, p, a, b, f"|diff| {diff:.3g} > tolerance {tol:.3g}")
            else:
                assert a == b or (a != a and b != b), (where, p, a, b)  # NaN settings (not applicable) are equal


@lru_cache(maxsize=None)
def msssim_rounding() -> float:
    """How far float32 rounding can carry an MS-SSIM past its range [0, 1]: ``SAFETY`` x the largest change one
    :class:`float32_jitter` makes to the MS-SSIM (both variants) of 64 smooth random 28 x 28 images (uniform noise
    averaged over 7 x 7 windows) against themselves plus Gaussian noise of 1e-3 (nearly identical images, where a
    score just under 1 can be read as just over 1).

    Measured when this was written: a change of 1.2e-4 (smooth images have small local variances, which the
    constants C1, C2 barely dominate), so the bound is about 1e-3; grey MNIST digits give 1.3e-5. The float32
    MS-SSIM of an attacked reconstruction of a golden run reads 1.000005.
    """
    from robustvae.metrics import VARIANTS, ms_ssim

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(64, 1, 34, 34, generator=g), 7, stride=1)
    y = (x + 1e-3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    change = 0.0
    for variant in VARIANTS:
        plain = ms_ssim(x, y, variant=variant)
        with float32_jitter(1):
            jittered = ms_ssim(x, y, variant=variant)
        change = max(change, (jittered.double() - plain.double()).abs().max().item())
    return SAFETY * change
