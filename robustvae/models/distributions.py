"""Distribution objects that carry their parameters (the NVAE habit).

* :class:`DiagGaussian` — per-layer priors and posteriors (``mean``, ``logvar``,
  ``kl``, ``log_prob``, ``sample``).
* :class:`Bernoulli` and :class:`DiscretizedLogisticMixture` — the two image
  likelihoods. Both take images in [0, 1] and return per-image log-likelihoods in
  nats, and both expose ``mean``: the decoder's mean image in [0, 1].
* :class:`PointMass` — the deterministic posterior of DCT-VAE's context layer.
* :class:`DiscretizedGaussian` — a Gaussian over the ``2**bits`` evenly spaced
  levels of the context quantiser (:func:`snap_to_levels`), the last step
  p(y0 | y1) of the diffusion prior.

Every method returns elementwise values unless it says otherwise;
:func:`sum_except_batch` reduces them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from robustvae.models import rng

LOG_2PI = math.log(2 * math.pi)


def sum_except_batch(t: Tensor) -> Tensor:
    return t.flatten(1).sum(1)


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32 when it is of lower precision (autocast's bfloat16), else as it is (float32, float64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def soft_clamp(x: Tensor, limit: float) -> Tensor:
    """Smoothly keep ``x`` inside (-limit, limit); identity near 0, gradients everywhere."""
    return limit * torch.tanh(x / limit)


DIVERGENCES = ("skl", "kl_forward", "kl_reverse", "means")  # how two Gaussian posteriors are compared


class DiagGaussian:
    """Diagonal Gaussian N(mean, exp(logvar))."""

    def __init__(self, mean: Tensor, logvar: Tensor):
        self.mean = mean
        self.logvar = logvar

    @property
    def var(self) -> Tensor:
        return self.logvar.exp()

    @property
    def std(self) -> Tensor:
        return (0.5 * self.logvar).exp()

    @property
    def shape(self) -> torch.Size:
        return self.mean.shape

    def sample(self, noise: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """Reparameterised sample ``mean + temperature * std * noise`` (noise ~ N(0, I) if None)."""
        if noise is None:
            noise = rng.randn_like(self.mean)
        return self.mean + temperature * self.std * noise

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mean) ** 2 / self.var)

    def kl(self, other: DiagGaussian) -> Tensor:
        """Analytic KL(self || other), elementwise, in nats."""
        return 0.5 * (other.logvar - self.logvar + (self.var + (self.mean - other.mean) ** 2) / other.var - 1.0)

    def compare(self, reference: DiagGaussian, divergence: str = "skl", straight_through: bool = False) -> Tensor:  # noqa: ARG002
        """Per-image divergence of this (attacked) posterior from ``reference``, summed over its units.

        ``skl`` = KL(ref || self) + KL(self || ref) (symmetric KL); ``kl_forward`` =
        KL(ref || self); ``kl_reverse`` = KL(self || ref); ``means`` = squared L2
        distance between the means. ``straight_through`` concerns quantised layers only.
        """
        if divergence == "skl":
            d = reference.kl(self) + self.kl(reference)
        elif divergence == "kl_forward":
            d = reference.kl(self)
        elif divergence == "kl_reverse":
            d = self.kl(reference)
        elif divergence == "means":
            d = (self.mean - reference.mean) ** 2
        else:
            raise ValueError(f"unknown divergence {divergence!r} (known: {', '.join(DIVERGENCES)})")
        return d.flatten(1).sum(1)

    def detach(self) -> DiagGaussian:
        return DiagGaussian(self.mean.detach(), self.logvar.detach())

    def __repr__(self) -> str:
        return f"DiagGaussian(shape={tuple(self.mean.shape)})"


class Bernoulli:
    """Bernoulli likelihood over binary pixels, parameterised by logits.

    ``clamp``: score with probabilities clamped to [clamp, 1 - clamp] as
    x log p + (1 - x) log(1 - p) (the Kuzina & Tomczak code's variant); None: exact, from the logits.
    """

    def __init__(self, logits: Tensor, clamp: float | None = None):
        self.logits = logits
        self.clamp = clamp

    @property
    def mean(self) -> Tensor:
        p = torch.sigmoid(self.logits)
        return p if self.clamp is None else p.clamp(self.clamp, 1 - self.clamp)

    def log_prob(self, x: Tensor) -> Tensor:
        """Per-image log p(x) in nats for x in {0, 1} (continuous x gives the cross-entropy)."""
        if self.clamp is not None:
            p = self.mean
            return sum_except_batch(x * torch.log(p) + (1 - x) * torch.log(1 - p))
        return -sum_except_batch(F.binary_cross_entropy_with_logits(self.logits, x, reduction="none"))

    def sample(self) -> Tensor:
        return torch.bernoulli(self.mean)


def _log_sigmoid_diff(a: Tensor, b: Tensor) -> Tensor:
    """Stable log(sigmoid(a) - sigmoid(b)) for a > b."""
    return a + torch.log(-torch.expm1(b - a)) - F.softplus(a) - F.softplus(b)


DMOL_LAYOUTS = ("grouped", "per-channel")  # how the decoder's output channels hold the mixture's parameters
DMOL_GRIDS = ("even", "uint8")  # where the likelihood puts the levels of a [0, 1] image


def quantise_levels(x01: Tensor, bits: int, grid: str = "even") -> Tensor:
    """[0, 1] images -> the ``2**bits`` levels on [-1, 1] of :class:`DiscretizedLogisticMixture`'s ``grid``."""
    if grid == "uint8":
        v = torch.round(x01.clamp(0, 1) * 255)
        if bits < 8:
            step = 2 ** (8 - bits)
            v = torch.floor(v / step) * step
        return (v - 127.5) * (1 / 127.5)
    n = 2**bits - 1
    return torch.round(x01.clamp(0, 1) * n) / n * 2 - 1


class DiscretizedLogisticMixture:
    """Discretised mixture of logistics (PixelCNN++ / VDVAE) over ``2**bits`` levels.

    Parameters come from a decoder output of ``K * (1 + 2C + C(C-1)/2)`` channels:
    mixture logits, per-channel locations and log-scales, and the linear
    coefficients that make channel c depend on channels < c. The extreme levels
    take the whole tails, so the probabilities over all levels sum to 1 exactly.
    Images are given in [0, 1] and modelled on [-1, 1] internally.

    Options (the defaults are robustvae's own; openai/vdvae's checkpoints use the others):

    * ``layout``: ``"grouped"`` (after the K logits: every channel's K locations, then
      every channel's K log-scales, then the K coefficients of each channel pair) or
      ``"per-channel"`` (PixelCNN++ / openai/vdvae, 3 channels: for each channel its K
      locations, K log-scales and K coefficients);
    * ``grid``: ``"even"`` (level j of n = 2**bits - 1 at 2j/n - 1) or ``"uint8"`` (the
      8-bit value v = round(255 x) with its lowest 8 - bits bits cleared, at (v - 127.5) / 127.5:
      openai/vdvae's 5-bit FFHQ-256, whose top level sits below 1 and has no tail; the same
      levels as ``"even"`` at 8 bits);
    * ``tiny_bin``: where a bin's probability, computed as sigmoid(upper) - sigmoid(lower),
      is not above this, score the bin's density at its centre times its width instead
      (openai/vdvae and PixelCNN++ use 1e-5); None scores every bin exactly.
    """

    def __init__(
        self,
        params: Tensor,
        channels: int,
        num_mixtures: int,
        bits: int = 8,
        min_log_scale: float = -7.0,
        *,
        layout: str = "grouped",
        grid: str = "even",
        tiny_bin: float | None = None,
    ):
        B, _, H, W = params.shape
        K, C = num_mixtures, channels
        if layout not in DMOL_LAYOUTS or grid not in DMOL_GRIDS:
            raise ValueError(
                f"layout must be one of {DMOL_LAYOUTS} and grid one of {DMOL_GRIDS}, got {layout!r}, {grid!r}"
            )
        self.C, self.K, self.bits = C, K, bits
        self.levels = 2**bits
        self.grid, self.tiny_bin = grid, tiny_bin
        self.logit_probs = params[:, :K]  # B,K,H,W
        if layout == "per-channel":
            if C != 3:
                raise ValueError(
                    f"the per-channel layout holds 3 coefficients per channel: it needs 3 channels, got {C}"
                )
            rest = params[:, K:].reshape(B, C, 3, K, H, W).transpose(1, 2).reshape(B, 3 * C, K, H, W)
        else:
            rest = params[:, K:].reshape(B, -1, K, H, W)
        self.locs = rest[:, :C]  # B,C,K,H,W
        self.log_scales = rest[:, C : 2 * C].clamp(min=min_log_scale)
        self.coeffs = torch.tanh(rest[:, 2 * C :])  # B,C(C-1)/2,K,H,W

    @staticmethod
    def num_params(channels: int, num_mixtures: int) -> int:
        return num_mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)

    def _means(self, x: Tensor) -> Tensor:
        """Per-channel component locations, channel c shifted by coeffs * x_{<c}."""
        means = [self.locs[:, 0]]
        j = 0
        for c in range(1, self.C):
            m = self.locs[:, c]
            for d in range(c):
                m = m + self.coeffs[:, j] * x[:, d]
                j += 1
            means.append(m)
        return torch.stack(means, 1)

    def quantise(self, x01: Tensor) -> Tensor:
        """[0, 1] images -> the levels on [-1, 1] that the likelihood scores (see ``grid``)."""
        return quantise_levels(x01, self.bits, self.grid)

    def log_prob(self, x01: Tensor) -> Tensor:
        """Per-image log p(x) in nats; x in [0, 1] is quantised to ``2**bits`` levels."""
        x = self.quantise(x01)  # B,C,H,W
        xk = x.unsqueeze(2)  # B,C,1,H,W
        means = self._means(xk)
        half = 1.0 / (self.levels - 1)  # half bin width on [-1, 1]
        inv_s = torch.exp(-self.log_scales)
        centred = xk - means
        plus = inv_s * (centred + half)
        minus = inv_s * (centred - half)
        lp_mid = _log_sigmoid_diff(plus, minus)
        if self.tiny_bin is not None:
            mid = inv_s * centred
            at_centre = mid - self.log_scales - 2.0 * F.softplus(mid) + math.log(2 * half)
            lp_mid = torch.where(torch.sigmoid(plus) - torch.sigmoid(minus) > self.tiny_bin, lp_mid, at_centre)
        lp_low = F.logsigmoid(plus)  # the lowest level takes (-inf, edge]
        lp_high = -F.softplus(minus)  # the highest level takes [edge, inf)
        lp = torch.where(xk < -1 + half / 2, lp_low, torch.where(xk > 1 - half / 2, lp_high, lp_mid))
        lp = lp.sum(1) + F.log_softmax(self.logit_probs, dim=1)  # B,K,H,W
        return sum_except_batch(torch.logsumexp(lp, dim=1))

    @property
    def mean(self) -> Tensor:
        """Expected image in [0, 1]: mixture-weighted component means (clamped)."""
        comp = self._means_of_means()
        w = torch.softmax(self.logit_probs, dim=1).unsqueeze(1)
        return ((comp * w).sum(2).clamp(-1, 1) + 1) / 2

    def _means_of_means(self) -> Tensor:
        return self._chain(self.locs, self.coeffs, lambda c, m: m)

    def _select(self, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(locations, log-scales, coefficients) of component ``k`` (B, H, W) at every pixel."""
        onehot = F.one_hot(k, self.K).permute(0, 3, 1, 2).unsqueeze(1).to(self.locs.dtype)  # B,1,K,H,W
        return (self.locs * onehot).sum(2), (self.log_scales * onehot).sum(2), (self.coeffs * onehot).sum(2)

    def _chain(self, locs: Tensor, coeffs: Tensor, finish) -> Tensor:
        """Channel by channel: ``finish(c, location + coefficients x the earlier channels' finished values)``."""
        xs: list[Tensor] = []
        j = 0
        for c in range(self.C):
            m = locs[:, c]
            for d in range(c):
                m = m + coeffs[:, j] * xs[d]
                j += 1
            xs.append(finish(c, m))
        return torch.stack(xs, 1)

    def top_component_image(self) -> Tensor:
        """A deterministic image in [0, 1]: at every pixel the component with the largest logit, its locations
        with the coefficients applied channel by channel to the clipped earlier channels, each clipped to [-1, 1]
        (openai/vdvae's sampler with its mixture and logistic noise at their medians)."""
        locs, _, coeffs = self._select(self.logit_probs.argmax(1))
        return (self._chain(locs, coeffs, lambda c, m: m.clamp(-1, 1)) + 1) / 2

    def sample(self) -> Tensor:
        """Draw images in [0, 1] (one mixture component per pixel, channels in order)."""
        k = torch.distributions.Categorical(logits=self.logit_probs.permute(0, 2, 3, 1)).sample()  # B,H,W
        locs, log_s, coeffs = self._select(k)
        u = torch.rand_like(locs).clamp(1e-5, 1 - 1e-5)
        noise = log_s.exp() * (torch.log(u) - torch.log1p(-u))
        return (self._chain(locs, coeffs, lambda c, m: self.quantise(((m + noise[:, c]).clamp(-1, 1) + 1) / 2)) + 1) / 2


class PointMass:
    """A deterministic posterior: all its mass on ``mean`` (DCT-VAE's quantised context).

    ``pre_quant`` holds the normalised coefficients before quantisation, which are
    differentiable in the image (the quantised ``mean`` is not): attacks on the
    context measure their change. Sampling returns ``mean`` whatever the noise.
    """

    def __init__(self, mean: Tensor, pre_quant: Tensor):
        self.mean = mean
        self.pre_quant = pre_quant

    @property
    def shape(self) -> torch.Size:
        return self.mean.shape

    def sample(self, noise: Tensor | None = None, temperature: float = 1.0) -> Tensor:  # noqa: ARG002
        return self.mean

    def compare(self, reference: PointMass, divergence: str = "skl", straight_through: bool = False) -> Tensor:  # noqa: ARG002
        """Per-image squared L2 distance between the coefficients before quantisation (any ``divergence``).

        Divergences between point masses are infinite or zero, and quantisation has zero
        gradient, so a deterministic layer is compared through its pre-quantisation
        coefficients; with ``straight_through`` through the quantised values, with the
        coefficients' gradient.
        """
        return (self.value(straight_through) - reference.value(straight_through)).pow(2).flatten(1).sum(1)

    def value(self, straight_through: bool = False) -> Tensor:
        """The coefficients before quantisation, or the quantised ones with their gradient (straight-through)."""
        return self.pre_quant + (self.mean - self.pre_quant).detach() if straight_through else self.pre_quant

    def detach(self) -> PointMass:
        return PointMass(self.mean.detach(), self.pre_quant.detach())

    def __repr__(self) -> str:
        return f"PointMass(shape={tuple(self.mean.shape)})"


def snap_to_levels(u: Tensor, levels: int) -> Tensor:
    """Nearest of ``levels`` evenly spaced values -1, ..., 1 (values outside [-1, 1] go to the ends).

    The cells of this quantiser are the bins of :class:`DiscretizedGaussian`: width
    2 / (levels - 1) around each level, the two extreme cells reaching +-infinity.
    """
    n = levels - 1
    return (2 * torch.round((u.clamp(-1, 1) + 1) * (n / 2)) - n) / n  # level j is (2j - n) / n, correctly rounded


def level_index(y: Tensor, levels: int) -> Tensor:
    """Index 0 .. levels-1 of values that lie on the levels of :func:`snap_to_levels`."""
    return torch.round((y.clamp(-1, 1) + 1) * ((levels - 1) / 2)).long()


def _log1mexp(x: Tensor) -> Tensor:
    """Stable log(1 - exp(x)) for x < 0."""
    x = x.clamp(max=-1e-30)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_normal_interval(a: Tensor, b: Tensor) -> Tensor:
    """Stable log(Phi(b) - Phi(a)) for finite a < b (Phi: the standard normal CDF)."""
    flip = a > 0  # both in the right tail: use Phi(-a) - Phi(-b), which keeps its precision
    hi = torch.where(flip, -a, b)
    lo = torch.where(flip, -b, a)
    lhi = torch.special.log_ndtr(hi)
    return lhi + _log1mexp(torch.special.log_ndtr(lo) - lhi)


def approx_ndtr(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF (GELU's): 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


class DiscretizedGaussian:
    """N(mean, exp(logvar)) discretised onto ``levels`` evenly spaced values on [-1, 1].

    Level j owns the quantiser's cell [v_j - d/2, v_j + d/2] (d = 2 / (levels - 1)),
    the lowest and highest cells extended to -inf and +inf, so the probabilities of
    the levels sum to exactly 1 (the bins are the quantiser's own).
    """

    def __init__(self, mean: Tensor, logvar: Tensor, levels: int, cdf: str = "exact"):
        if levels < 2:
            raise ValueError(f"a discretised Gaussian needs at least 2 levels, got {levels}")
        if cdf not in ("exact", "tanh"):
            raise ValueError(f"cdf must be exact or tanh, got {cdf!r}")
        self.mean = mean
        self.logvar = logvar
        self.levels = levels
        self.cdf = cdf

    def _log_prob_tanh(self, y: Tensor) -> Tensor:
        """``cdf="tanh"``, the Kuzina & Tomczak variant: the same half-width around *any* value y, the tanh CDF
        (:func:`approx_ndtr`), each probability floored at 1e-10, the left tail for y <= -1 + d/2 and the
        right tail for y >= 1 - d/2. Their context values are not on the levels, so the cells overlap and
        the probabilities need not sum to 1."""
        half = 1.0 / (self.levels - 1)
        inv_s = torch.exp(-(0.5 * self.logvar))
        c = y - self.mean
        cdf_plus = approx_ndtr(inv_s * (c + half))
        cdf_min = approx_ndtr(inv_s * (c - half))
        low = torch.log(cdf_plus.clamp(min=1e-10))
        high = torch.log((1.0 - cdf_min).clamp(min=1e-10))
        mid = torch.log((cdf_plus - cdf_min).clamp(min=1e-10))
        return torch.where(y <= -1.0 + half, low, torch.where(y >= 1.0 - half, high, mid))

    def log_prob(self, y: Tensor) -> Tensor:
        """Elementwise log P(y) in nats for ``y`` on the levels."""
        if self.cdf == "tanh":
            return self._log_prob_tanh(y)
        half = 1.0 / (self.levels - 1)
        inv_s = torch.exp(-0.5 * self.logvar)
        upper = (y + half - self.mean) * inv_s
        lower = (y - half - self.mean) * inv_s
        j = level_index(y, self.levels)
        lp_low = torch.special.log_ndtr(upper)  # (-inf, upper edge]
        lp_high = torch.special.log_ndtr(-lower)  # [lower edge, inf)
        lp_mid = log_normal_interval(lower, upper)
        return torch.where(j == 0, lp_low, torch.where(j == self.levels - 1, lp_high, lp_mid))

    def sample(self, noise: Tensor | None = None) -> Tensor:
        """A draw on the levels: the nearest level of a continuous draw (its cell holds it)."""
        if noise is None:
            noise = torch.randn_like(self.mean)
        return snap_to_levels(self.mean + torch.exp(0.5 * self.logvar) * noise, self.levels)
