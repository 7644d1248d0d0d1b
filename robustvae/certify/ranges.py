"""Exact ranges of the context coefficients over a perturbation ball, certified radii and fractions.

For one coefficient v = v0 + w . delta (w: its weights over its channel's pixels) and
the set {delta : ||delta|| <= eps, 0 <= x + delta <= 1}, the largest increase moves
each pixel p in the direction of sign(w_p) by a_p, up to its room ``cap_p``
(``1 - x_p`` or ``x_p``):

* L-inf: a_p = min(eps, cap_p), so the gain is sum_p |w_p| min(eps, cap_p);
* L2 (Lagrange / KKT of a linear objective over ball and box): a_p = min(t |w_p|, cap_p)
  with t the root of sum_p min(t |w_p|, cap_p)^2 = eps^2 (every pixel at its cap when
  the box corner is inside the ball); the gain is sum_p |w_p| a_p.

Both are sums of clipped linear (or squared) terms, inverted exactly by sorting their
breakpoints (:func:`_invert`); the decrease is the same with the other caps. The
certified radius inverts the gain itself: the smallest eps whose gain reaches the
distance to the nearest cell edge (less the float32 margin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from robustvae.certify.affine import AffineContext, check_eps, check_norm, prepare

_CHUNK = 2_000_000  # elements of a (points, C, K, P) work array


def _invert(tau: Tensor, p: Tensor, q: Tensor, target: Tensor, square: bool) -> Tensor:
    """Smallest t >= 0 with f(t) >= target for f(t) = sum_j (p_j if t >= tau_j else phi(t) q_j), last axis j.

    phi(t) = t, or t^2 when ``square``; every term must be continuous (p_j = phi(tau_j) q_j)
    and nondecreasing. Sorting the breakpoints tau_j makes f(t) = P_k + phi(t) Q_k on the
    k-th segment (P_k: clipped terms so far, Q_k: the rest), solved in closed form.
    inf where sup f < target.
    """
    tau, order = tau.sort(-1)
    p, q = p.gather(-1, order), q.gather(-1, order)
    P = p.cumsum(-1) - p  # terms already clipped before breakpoint k
    Q = q.flip(-1).cumsum(-1).flip(-1)  # terms still growing at breakpoint k
    at = (P + (tau * tau if square else tau) * Q).cummax(-1).values  # f at each breakpoint
    n = tau.shape[-1]
    k = (at < target[..., None]).sum(-1, keepdim=True)
    kk = k.clamp(max=n - 1)
    Pk, Qk = P.gather(-1, kk)[..., 0], Q.gather(-1, kk)[..., 0]
    phi = (target - Pk).clamp(min=0) / Qk.clamp(min=1e-300)
    t = phi.sqrt() if square else phi
    t = torch.minimum(t, tau.gather(-1, kk)[..., 0])
    t = torch.maximum(t, torch.where(k > 0, tau.gather(-1, (k - 1).clamp(min=0)), 0.0)[..., 0])
    t = torch.where(k[..., 0] >= n, math.inf, t)
    return torch.where(target <= 0, 0.0, t)


def _caps(w: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Room per pixel to increase / decrease each coefficient: (B, C, K, P) each."""
    x = x[:, :, None, :]
    pos = w > 0
    return torch.where(pos, 1 - x, x), torch.where(pos, x, 1 - x)


def _l2_terms(aw: Tensor, cap: Tensor) -> tuple[Tensor, Tensor]:
    """Breakpoints t = cap / |w| of the L2 terms, 0 where the pixel cannot move the coefficient."""
    live = (aw > 0) & (cap > 0)
    return torch.where(live, cap / torch.where(live, aw, 1.0), 0.0), live


def _moves(aw: Tensor, cap: Tensor, t: Tensor) -> Tensor:
    """a_p = min(t |w_p|, cap_p) of the L2 optimum (t may be inf: every pixel at its cap)."""
    return torch.where(aw > 0, torch.minimum(t[..., None] * aw, cap), 0.0)


def _gains(w: Tensor, x: Tensor, eps: float, norm: str) -> tuple[Tensor, Tensor]:
    """Largest increase and decrease (B, C, K) of every coefficient over ball and box."""
    aw = w.abs()[None]
    out = []
    for cap in _caps(w, x):
        if norm == "linf":
            out.append((aw * cap.clamp(max=eps)).sum(-1))
        else:
            tau, live = _l2_terms(aw, cap)
            p = torch.where(live, cap * cap, 0.0)
            q = torch.where(live, aw * aw, 0.0)
            t = _invert(tau, p, q, torch.full(tau.shape[:-1], eps * eps, dtype=tau.dtype), square=True)
            out.append((aw * _moves(aw, cap, t)).sum(-1))
    return out[0], out[1]


def _radius_to(w: Tensor, x: Tensor, d_up: Tensor, d_down: Tensor, norm: str) -> Tensor:
    """Smallest eps (B, C, K) at which the increase reaches d_up or the decrease reaches d_down."""
    aw = w.abs()[None]
    out = []
    for cap, d in zip(_caps(w, x), (d_up, d_down)):
        aw_b = aw.expand_as(cap)
        if norm == "linf":
            out.append(_invert(cap, aw_b * cap, aw_b, d, square=False))
        else:
            tau, live = _l2_terms(aw_b, cap)
            t = _invert(tau, torch.where(live, aw_b * cap, 0.0), torch.where(live, aw_b * aw_b, 0.0), d, square=False)
            r = _moves(aw_b, cap, t).pow(2).sum(-1).sqrt()
            out.append(torch.where(torch.isinf(t), math.inf, r))
    return torch.minimum(out[0], out[1])


def _chunks(B: int, ac: AffineContext):
    step = max(1, _CHUNK // max(1, ac.channels * ac.M.shape[0] * ac.M.shape[1]))
    for i in range(0, B, step):
        yield slice(i, min(B, i + step))


def _margin(ac: AffineContext, margin: float | None) -> Tensor:
    if margin is None:
        return ac.margin
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return torch.full_like(ac.margin, float(margin))


@dataclass
class Ranges:
    """Exact range of every normalised context coefficient over an eps-ball intersected with [0, 1]^n.

    Tensors are (B, C, c, c) on the CPU. ``lo``/``hi``/``clean`` are unclamped
    normalised coefficients (float64); ``clean_level`` is the codec's own float32 level
    of x; ``reach_lo``/``reach_hi`` the lowest/highest level any image of the set may
    get, counting a cell edge within ``margin`` (the float32 rounding bound, (C, c, c))
    of the range as reachable (every level where the ball may leave the region in which
    the codec is affine, :meth:`~robustvae.models.context.ContextCodec.affine_radius`); ``certified``: no image of the set can change the level.
    """

    eps: float
    norm: str
    lo: Tensor
    hi: Tensor
    clean: Tensor
    clean_level: Tensor
    reach_lo: Tensor
    reach_hi: Tensor
    certified: Tensor
    margin: Tensor

    @property
    def point_certified(self) -> Tensor:
        """(B,) bool: the whole context of the point is certified unchanged."""
        return self.certified.flatten(1).all(1)


def coefficient_ranges(codec, x: Tensor, eps: float, norm: str = "linf", margin: float | None = None) -> Ranges:
    """Exact min/max of every normalised coefficient over {x + d : ||d||_norm <= eps, 0 <= x + d <= 1}.

    ``codec``: a context codec or a DCT-VAE; ``x``: (B, C, H, W) in [0, 1] (used as the
    float32 images the codec sees). Closed form for L-inf, exact (sort-based KKT) for
    L2, both in float64. ``margin`` (normalised units) widens the ranges before the
    reachable levels are read off: None uses the proven float32 rounding bound of the
    codec (sound for the real codec), 0 the exact real-arithmetic quantiser.
    Why: a coefficient whose widened range meets no cell edge cannot change level,
    so the context is certified for that point and eps.
    """
    check_norm(norm)
    eps = check_eps(eps)
    codec, ac, x32, x64, clean_level = prepare(codec, x)
    m = _margin(ac, margin)
    w = ac.weights
    v0 = ac.values(x64)
    up, down = torch.empty_like(v0), torch.empty_like(v0)
    for sl in _chunks(x64.shape[0], ac):
        up[sl], down[sl] = _gains(w, x64[sl], eps, norm)
    lo, hi = v0 - down, v0 + up
    reach_lo, reach_hi = ac.reachable(lo - m, hi + m)
    _check_clean(reach_lo, reach_hi, clean_level, eps)
    beyond = (eps >= codec.affine_radius(x32, norm))[:, None, None]  # the ball may leave the affine region
    reach_lo, reach_hi = torch.where(beyond, 0, reach_lo), torch.where(beyond, ac.n, reach_hi)
    shape = (x64.shape[0], ac.channels, codec.size, codec.size)
    return Ranges(
        eps,
        norm,
        lo.view(shape),
        hi.view(shape),
        v0.view(shape),
        clean_level.view(shape),
        reach_lo.view(shape),
        reach_hi.view(shape),
        (reach_lo == reach_hi).view(shape),
        m.view(shape[1:]),
    )


def _check_clean(reach_lo: Tensor, reach_hi: Tensor, clean_level: Tensor, eps: float) -> None:
    bad = (clean_level < reach_lo) | (clean_level > reach_hi)
    if bad.any():  # the float32 bound failed, or margin=0 met a float32 rounding: never certify silently
        raise ArithmeticError(
            f"the codec's float32 level lies outside the analysed range for {int(bad.sum())} coefficient(s) "
            f"at eps={eps}; use margin=None (the float32 rounding bound)"
        )


def certified_radius(
    codec, x: Tensor, norm: str = "linf", per_coefficient: bool = False, margin: float | None = None
) -> Tensor:
    """Certified radius: the smallest eps at which some coefficient's level may change.

    Returns (B,) float64, or (B, C, c, c) with ``per_coefficient`` (inf: no image in
    [0, 1] can change it; 0: already within ``margin`` of a cell edge). Every eps
    strictly below the radius is certified (:func:`coefficient_ranges` agrees); at the
    radius the range touches an edge. Exact for both norms (closed forms after a sort,
    float64); ``margin`` as in :func:`coefficient_ranges`.
    Why: one number per point that summarises the context's robustness for every eps.
    """
    check_norm(norm)
    codec, ac, x32, x64, clean_level = prepare(codec, x)
    m = _margin(ac, margin)
    v0 = ac.values(x64)
    j_lo, j_hi = ac.reachable(v0 - m, v0 + m)
    _check_clean(j_lo, j_hi, clean_level, 0.0)
    lower, upper = ac.cell(j_lo)
    d_up = upper - m - v0  # inf in the top cell
    d_down = v0 - m - lower
    r = torch.empty_like(v0)
    w = ac.weights
    for sl in _chunks(x64.shape[0], ac):
        r[sl] = _radius_to(w, x64[sl], d_up[sl], d_down[sl], norm)
    r = torch.where(j_lo == j_hi, r, 0.0)
    r = torch.minimum(r, codec.affine_radius(x32, norm)[:, None, None])  # no certificate beyond the affine region
    if per_coefficient:
        return r.view(x64.shape[0], ac.channels, codec.size, codec.size)
    return r.flatten(1).amin(1) if r.shape[0] else r.new_zeros(0)


def certified_fraction(
    codec, x: Tensor, eps_list: Sequence[float], norm: str = "linf", margin: float | None = None
) -> Tensor:
    """(len(eps_list),) fraction of the points whose whole context is certified unchanged at each eps.

    A point counts at eps when eps < its :func:`certified_radius` (the same as
    ``coefficient_ranges(...).point_certified``). Why: the certified-accuracy-style curve
    of the context layer, an exact lower bound on what no attack can move.
    """
    eps = torch.tensor([check_eps(e) for e in eps_list], dtype=torch.float64)
    r = certified_radius(codec, x, norm, margin=margin)
    if r.numel() == 0:
        return torch.full_like(eps, math.nan)
    return (eps[:, None] < r[None]).double().mean(1)
