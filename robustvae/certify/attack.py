"""The optimal attack on the quantised context: a mixed-integer linear program (scipy's HiGHS).

Variables per image: the pixel perturbation delta (continuous, bounded by the box
[-x, 1 - x] and by eps per pixel) and one binary z_ij per coefficient i and
candidate level j (the levels its exact range can reach). The chosen cell is enforced
by the convex-hull form of the one-hot disjunction, with no big-M:

    sum_j z_ij = 1,   sum_j z_ij L_ij <= v_i(delta) <= sum_j z_ij U_ij,

where [L_ij, U_ij] is level j's cell shrunk by ``mu_i`` (the float32 rounding bound
plus ``interior``) and intersected with the coefficient's range. The objective is
linear in z: the squared L2 change of the decoded context, sum_i w_i (j - j0_i)^2
(:meth:`AffineContext.decoded_weights`), or the number of changed levels.

L-inf: the budget is the per-pixel bound, so one MILP is the exact problem (solved in
the incremental encoding of the levels, :func:`_incremental`); after it, an LP with the
levels fixed moves delta as deep into the chosen cells as possible.

L2: the ball is not linear. A Benders decomposition keeps the MILP linear: the master
is over the binaries alone (one-hot rows, and, when the coefficients' weight vectors
are orthogonal as for the DCT, the Bessel knapsack sum_i dist_ij^2 / |w_i|^2 z_ij <= eps^2).
Each master solution's level assignment gets the dual of its minimum-norm
realisation (:func:`_min_norm`): realisable within eps, it is optimal (the master is a
relaxation); not realisable (the dual value proves it), its dual multipliers give a
cut that is linear in z and valid for every assignment, and a greedy repair
(:func:`_repair`) turns the assignment into a verified incumbent. Out of time, the
best verified attack is a lower bound on the damage and the master's bound an upper
bound. Every answer is verified in float32 by the codec itself.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, linprog, milp, minimize
from torch import Tensor

from robustvae.certify.affine import AffineContext, check_eps, check_norm, codec_level, prepare
from robustvae.certify.ranges import coefficient_ranges

OBJECTIVES = ("decoded_l2", "count")


@dataclass
class ContextAttackResult:
    """The best verified context attack per image (tensors on the CPU unless noted).

    ``x_adv`` (B, C, H, W) float32 on x's device: the attacked images, inside the box and
    the budget (checked in float64) and with the levels ``levels`` when the codec
    computes them in float32; ``delta`` = x_adv - x in float64. ``levels`` and
    ``clean_levels`` (B, C, c, c) are level indices. ``decoded_l2`` (B,): L2 norm of
    decode(levels) - decode(clean); ``changed`` (B,): number of changed levels.
    ``bound`` (B,): the solver's upper bound on the objective (decoded L2 norm, or count)
    over attacks whose coefficients land ``interior`` inside their cells.
    ``proven_optimal`` (B,): the attack reaches that bound (solver status optimal).
    ``status``: solver messages; ``solve_time`` seconds; ``rounds``: MILPs solved.
    ``value`` (B,): the best verified objective over every candidate (decoded L2 norm, or
    count); it equals ``decoded_l2`` / ``changed`` unless ``score`` chose another candidate.
    ``score`` (B,): the chosen candidate's score (NaN without ``score``); ``candidates`` (B,):
    how many verified candidates were scored (0 without ``score``).
    """

    eps: float
    norm: str
    objective: str
    x_adv: Tensor
    delta: Tensor
    levels: Tensor
    clean_levels: Tensor
    decoded_l2: Tensor
    changed: Tensor
    bound: Tensor
    proven_optimal: Tensor
    status: list[str] = field(default_factory=list)
    solve_time: Tensor | None = None
    rounds: Tensor | None = None
    interior: float = 0.0
    value: Tensor | None = None
    score: Tensor | None = None
    candidates: Tensor | None = None


@dataclass
class _Problem:
    """One image's program: rows r are the coefficients that may change level, binaries z their candidate levels."""

    W: sp.csr_matrix  # (m, N) weights of those coefficients over all C * P pixels
    rows: np.ndarray  # (m,) their flat coefficient indices
    v0: np.ndarray  # (m,) clean values
    zrow: np.ndarray  # (Z,) row of every binary
    zlev: np.ndarray  # (Z,) its level
    zA: np.ndarray  # (Z,) its cell, shrunk by mu and cut to the range, minus v0: zA <= W delta <= zB
    zB: np.ndarray
    zedge: np.ndarray  # (Z, 2) whether zA / zB is a cell edge (not the range's end)
    gain: np.ndarray  # (Z,) objective gain
    lb: np.ndarray  # (N,) pixel bounds: the box and eps per pixel
    ub: np.ndarray

    @property
    def pick(self) -> sp.csr_matrix:
        """(m, Z) incidence of binaries in rows."""
        return sp.csr_matrix(
            (np.ones(len(self.zrow)), (self.zrow, np.arange(len(self.zrow)))), shape=(len(self.rows), len(self.zrow))
        )

    def bounds(self, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """a <= W delta <= b of an assignment (one binary per row)."""
        return self.zA[sel], self.zB[sel]


def _gain_table(ac: AffineContext, objective: str) -> np.ndarray:
    if objective == "count":
        return np.ones(ac.channels * ac.M.shape[0])
    return ac.decoded_weights().reshape(-1).numpy()


def _build(
    ac: AffineContext,
    rng,
    x: np.ndarray,
    clean: np.ndarray,
    mu: np.ndarray,
    eps: float,
    weight: np.ndarray,
    objective: str,
) -> _Problem | None:
    """The program of one image; None when some coefficient has no cell it can reach ``mu`` inside."""
    C, K, P = ac.channels, ac.M.shape[0], ac.M.shape[1]
    w = ac.weights.reshape(C * K, P).numpy()
    v0 = ac.values(torch.from_numpy(x).view(1, C, P)).reshape(-1).numpy()
    lo, hi = rng.lo.reshape(-1).numpy(), rng.hi.reshape(-1).numpy()
    r_lo, r_hi = rng.reach_lo.reshape(-1).numpy(), rng.reach_hi.reshape(-1).numpy()
    n = ac.n
    rows = np.flatnonzero(r_lo < r_hi)
    z = []  # (row, level, L, U, L is an edge, U is an edge)
    for r, i in enumerate(rows):
        count = len(z)
        for j in range(r_lo[i], r_hi[i] + 1):
            le = float(ac.bounds[j - 1]) + mu[i] if j > 0 else -math.inf
            ue = float(ac.bounds[j]) - mu[i] if j < n else math.inf
            L, U = max(lo[i], le), min(hi[i], ue)
            if L <= U:
                z.append((r, j, L, U, le >= lo[i], ue <= hi[i]))
        if len(z) == count:
            return None
    num = np.array([t[:4] for t in z], dtype=float).reshape(-1, 4)
    zrow, zlev = num[:, 0].astype(int), num[:, 1].astype(int)
    step = zlev - clean[rows[zrow]]
    gain = (step * step if objective == "decoded_l2" else (step != 0)) * weight[rows[zrow]]
    cols = (rows // K)[:, None] * P + np.arange(P)[None]
    Wm = sp.csr_matrix((w[rows].ravel(), (np.repeat(np.arange(len(rows)), P), cols.ravel())), shape=(len(rows), C * P))
    xf = x.reshape(-1)
    v = v0[rows]
    edge = np.array([t[4:] for t in z], dtype=bool).reshape(-1, 2)
    return _Problem(
        Wm,
        rows,
        v,
        zrow,
        zlev,
        num[:, 2] - v[zrow],
        num[:, 3] - v[zrow],
        edge,
        gain.astype(float),
        np.maximum(-eps, -xf),
        np.minimum(eps, 1 - xf),
    )


def _solve(
    c: np.ndarray,
    integrality: np.ndarray,
    lb: np.ndarray,
    ub: np.ndarray,
    blocks: list,
    time_limit: float,
    gap: float = 0.0,
    highs: dict | None = None,
):
    """scipy's milp (HiGHS); ``highs``: HiGHS options scipy does not know, passed verbatim (its warning silenced)."""
    cons = [LinearConstraint(A.tocsr(), lo, hi) for A, lo, hi in blocks]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
        return milp(
            c,
            integrality=integrality,
            bounds=Bounds(lb, ub),
            constraints=cons,
            options={"time_limit": max(time_limit, 0.01), "mip_rel_gap": gap, "disp": False, **(highs or {})},
        )


def _cutoff(gain: np.ndarray, floor: float) -> float:
    """Right-hand side of gain . z >= rhs: strictly better than ``floor`` (beyond the solver's tolerances)."""
    return floor + 1e-9 * max(1.0, abs(floor))


def _nogood_block(nogoods: list[np.ndarray], Z: int, offset: int = 0):
    """sum of the assignment's binaries <= rows - 1: that exact assignment is excluded."""
    rows = np.repeat(np.arange(len(nogoods)), [len(g) for g in nogoods])
    cols = np.concatenate(nogoods) + offset
    A = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(nogoods), offset + Z))
    return A, -np.inf, np.array([len(g) - 1 for g in nogoods], dtype=float)


def _incremental(pb: _Problem) -> tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix]:
    """The incremental encoding z = z0 + T y, with y_ik = [level of row i >= its k-th candidate], k >= 2.

    Same LP relaxation as the one-hot binaries, but a branch splits a coefficient at a
    cell edge (above / below) instead of fixing one level, which balances the search tree.
    Returns z0, T (Z, Y) and the ordering rows Ord (y_i,k+1 - y_ik <= 0).
    """
    Z = len(pb.gain)
    first = np.r_[True, pb.zrow[1:] != pb.zrow[:-1]]  # binaries are grouped by row, in level order
    ys = np.flatnonzero(~first)
    col = np.full(Z, -1)
    col[ys] = np.arange(len(ys))
    r, c, v = [], [], []
    for z in range(Z):  # z_first = 1 - y_2; z_k = y_k - y_k+1; z_last = y_last
        if not first[z]:
            r.append(z), c.append(col[z]), v.append(1.0)
        if z + 1 < Z and not first[z + 1]:
            r.append(z), c.append(col[z + 1]), v.append(-1.0)
    T = sp.csr_matrix((v, (r, c)), shape=(Z, len(ys)))
    pairs = [(col[z], col[z + 1]) for z in ys[:-1] if z + 1 < Z and not first[z + 1]]
    Ord = sp.csr_matrix(
        (np.tile([-1.0, 1.0], len(pairs)), (np.repeat(np.arange(len(pairs)), 2), np.ravel(pairs))),
        shape=(len(pairs), len(ys)),
    )
    return first.astype(float), T, Ord


# HiGHS options of the L-inf MILP beyond scipy's (passed verbatim). Left at HiGHS' defaults: switching off its
# RINS / RENS sub-MIPs (most of the LP iterations on dctvae-mnist) tightened the bound but found weaker incumbents
# and proved fewer points (benchmarks/milp.py, 8 points at 10 s: 0 proven against 1; issue 22)
HIGHS_LINF: dict[str, object] = {}


def _milp_linf(
    pb: _Problem, nogoods: list[np.ndarray], time_limit: float, cutoff: float | None = None, gap: float = 0.0
):
    """The full MILP: max gain . z over delta in the pixel bounds and the hull of every coefficient's cells.

    Variables (delta, u, y): u = W delta is each coefficient's move from v0, bounded by its exact
    range (:func:`coefficient_ranges`), so the dense W appears once (W delta - u = 0) and the cell
    rows are sparse in u; the levels are in the incremental encoding (:func:`_incremental`).
    The result's ``x`` is (delta, z) and ``fun`` / ``mip_dual_bound`` are in terms of z.
    ``cutoff``: only assignments with gain . z > cutoff are feasible (an incumbent the answer
    must beat; infeasible = none does).
    """
    N, m = pb.W.shape[1], pb.W.shape[0]
    z0, T, Ord = _incremental(pb)
    Y = T.shape[1]
    W = pb.W.tocsr().copy()
    W.data[np.abs(W.data) <= 1e-12 * np.abs(W.data).max()] = 0.0  # the probe's round-off (HiGHS drops it anyway)
    W.eliminate_zeros()
    eye = sp.identity(m, format="csr")
    LA = pb.pick.multiply(pb.zA[None]).tocsr()
    UB = pb.pick.multiply(pb.zB[None]).tocsr()
    zero = lambda r, c: sp.csr_matrix((r, c))  # noqa: E731
    blocks = [
        (sp.hstack([W, -eye, zero(m, Y)]), 0.0, 0.0),  # u = W delta
        (sp.hstack([zero(m, N), eye, -(LA @ T)]), LA @ z0, np.inf),  # u_i >= sum_j z_ij A_ij
        (sp.hstack([zero(m, N), eye, -(UB @ T)]), -np.inf, UB @ z0),  # u_i <= sum_j z_ij B_ij
    ]
    if Ord.shape[0]:
        blocks.append((sp.hstack([zero(Ord.shape[0], N + m), Ord]), -np.inf, 0.0))  # levels are ordered
    if nogoods:
        A, lo, hi = _nogood_block(nogoods, len(pb.gain))
        blocks.append((sp.hstack([zero(A.shape[0], N + m), A @ T]), lo, hi - A @ z0))
    offset = pb.gain @ z0
    if cutoff is not None:
        blocks.append(
            (sp.hstack([zero(1, N + m), sp.csr_matrix(T.T @ pb.gain)]), _cutoff(pb.gain, cutoff) - offset, np.inf)
        )
    u_lo = np.full(m, np.inf)
    u_hi = np.full(m, -np.inf)
    np.minimum.at(u_lo, pb.zrow, pb.zA)
    np.maximum.at(u_hi, pb.zrow, pb.zB)
    res = _solve(
        np.concatenate([np.zeros(N + m), -(T.T @ pb.gain)]),
        np.r_[np.zeros(N + m), np.ones(Y)],
        np.r_[pb.lb, u_lo, np.zeros(Y)],
        np.r_[pb.ub, u_hi, np.ones(Y)],
        blocks,
        time_limit,
        gap,
        HIGHS_LINF,
    )
    if res.x is not None:
        res.x = np.r_[res.x[:N], z0 + T @ np.round(res.x[N + m :])]
        res.fun = res.fun - offset
    if res.get("mip_dual_bound") is not None:
        res.mip_dual_bound = res.mip_dual_bound - offset
    return res


def _master_l2(
    pb: _Problem,
    cuts: list[tuple[np.ndarray, float]],
    nogoods: list[np.ndarray],
    eps: float,
    time_limit: float,
    cutoff: float | None = None,
):
    """The Benders master of L2: max gain . z over the one-hot choices and the cuts (all linear in z)."""
    Z = len(pb.gain)
    blocks = [(pb.pick, 1.0, 1.0)]
    G = (pb.W @ pb.W.T).toarray()
    if np.abs(G - np.diag(np.diag(G))).max() <= 1e-12 * np.diag(G).max():
        # Bessel: orthogonal rows give ||delta||^2 >= sum_i (w_i . delta)^2 / |w_i|^2, and w_i . delta must
        # at least cross from v0 to the chosen cell
        dist = np.maximum(np.maximum(pb.zA, -pb.zB), 0.0)
        blocks.append((sp.csr_matrix((dist**2 / np.diag(G)[pb.zrow])[None]), -np.inf, eps * eps * (1 + 1e-12)))
    if cuts:
        blocks.append((sp.csr_matrix(np.array([g for g, _ in cuts])), -np.inf, np.array([h for _, h in cuts])))
    if nogoods:
        blocks.append(_nogood_block(nogoods, Z))
    if cutoff is not None:
        blocks.append((sp.csr_matrix(pb.gain[None]), _cutoff(pb.gain, cutoff), np.inf))
    return _solve(-pb.gain, np.ones(Z), np.zeros(Z), np.ones(Z), blocks, time_limit)


def _assignment(pb: _Problem, z: np.ndarray) -> np.ndarray:
    """Indices of the chosen binary of every row."""
    out = np.empty(pb.W.shape[0], dtype=int)
    for r in range(pb.W.shape[0]):
        idx = np.flatnonzero(pb.zrow == r)
        out[r] = idx[np.argmax(z[idx])]
    return out


def _centre(pb: _Problem, sel: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """L-inf: with the levels fixed, the delta that lands deepest inside the chosen cells (an LP)."""
    a, b = pb.bounds(sel)
    fa, fb = pb.zedge[sel, 0], pb.zedge[sel, 1]
    if not (fa.any() or fb.any()):
        return delta
    N = pb.W.shape[1]
    A = sp.vstack(
        [
            sp.hstack([-pb.W[fa], sp.csr_matrix(np.ones((fa.sum(), 1)))]),  # a - W d + t <= 0
            sp.hstack([pb.W[fb], sp.csr_matrix(np.ones((fb.sum(), 1)))]),  # W d + t <= b
        ]
    ).tocsr()
    c = np.zeros(N + 1)
    c[-1] = -1
    res = linprog(
        c, A_ub=A, b_ub=np.concatenate([-a[fa], b[fb]]), bounds=list(zip(pb.lb, pb.ub)) + [(0, 1)], method="highs"
    )
    return res.x[:N] if res.status == 0 else delta


def _min_norm(pb: _Problem, sel: np.ndarray, box_lo: np.ndarray, box_hi: np.ndarray):
    """Dual of min ||delta||^2 / 2 over the box and a <= W delta <= b (an assignment), and its Benders cut.

    For lam, nu >= 0 the dual function q = Q(lam, nu) + lam . a - nu . b, with
    Q = min_box ||d||^2 / 2 - (lam - nu) . W d attained at d = clip(W^T (lam - nu), box), is a
    lower bound on the minimum (weak duality), smooth and concave: maximised by
    L-BFGS-B. Since a and b are linear in the binaries (a = sum_j z_ij A_ij), the same
    multipliers bound every assignment: sum_ij z_ij (lam_i A_ij - nu_i B_ij) <= eps^2 / 2 - Q
    is valid for all realisable z, and cuts off this one when q > eps^2 / 2.
    Returns (q, the near-minimiser d, the cut's coefficients over all binaries, Q).
    """
    a, b = pb.bounds(sel)
    W, WT = pb.W, pb.W.T.tocsr()
    m = len(a)

    def parts(y):
        y = y[:m] - y[m:]
        d = np.clip(WT @ y, box_lo, box_hi)
        Wd = W @ d
        return d, Wd, 0.5 * d @ d - y @ Wd

    def f(y):
        d, Wd, Q = parts(y)
        return -(Q + y[:m] @ a - y[m:] @ b), -np.concatenate([a - Wd, Wd - b])

    res = minimize(
        f,
        np.zeros(2 * m),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0, None)] * (2 * m),
        options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12},
    )
    lam, nu = res.x[:m], res.x[m:]
    d, _, Q = parts(res.x)
    return float(Q + lam @ a - nu @ b), d, lam[pb.zrow] * pb.zA - nu[pb.zrow] * pb.zB, float(Q)


def _realise(codec, x32: Tensor, x64: np.ndarray, delta: np.ndarray, eps: float, norm: str) -> Tensor:
    """A float32 image within the box and the budget (checked in float64) closest to x + delta."""
    d = np.clip(delta, -x64, 1 - x64)
    if norm == "linf":
        d = np.clip(d, -eps, eps)
    elif np.linalg.norm(d) > eps:
        d *= eps / np.linalg.norm(d)
    xf = torch.from_numpy(x64)
    x0 = x32.reshape(-1).cpu()
    for k in range(60):
        xa = torch.from_numpy(np.clip(x64 + d, 0, 1)).float()
        dd = xa.double() - xf
        if norm == "linf":
            bad = dd.abs() > eps
            for _ in range(4):  # round-to-nearest may step past eps: one ulp back towards x
                if not bad.any():
                    break
                xa[bad] = torch.nextafter(xa[bad], x0[bad])
                bad = (xa.double() - xf).abs() > eps
            if not bad.any():
                return xa.view_as(x32)
        elif dd.norm() <= eps:
            return xa.view_as(x32)
        d = d * (1 - 2.0 ** (k - 40))
    return x32.clone()


def optimal_context_attack(
    codec,
    x: Tensor,
    eps: float,
    norm: str = "linf",
    objective: str = "decoded_l2",
    time_limit: float = 60.0,
    interior: float = 1e-5,
    max_rounds: int = 100_000,
    start: Tensor | None = None,
    score: Callable[[Tensor, int], Tensor] | None = None,
    pool: int = 4,
    start_cutoff: bool = False,
) -> ContextAttackResult:
    """The attack that changes the quantised context most within the eps-ball and [0, 1], by MILP.

    ``objective="decoded_l2"``: maximise the L2 change of the decoded context image (the
    DCT-VAE decoder's input); ``"count"``: maximise the number of coefficients that
    change level. ``time_limit``: seconds per image for all solver calls. ``interior``
    (normalised units) is added to the float32 rounding bound to keep every
    coefficient strictly inside its target cell, so the realised float32 image really
    gets the claimed levels (checked by the codec); targets reachable only within that
    margin of an edge are not used. L-inf: exact (``proven_optimal`` when HiGHS proves
    it). L2: exact when the cutting-plane loop closes (``proven_optimal``), otherwise the
    best verified attack (a lower bound on the damage) and ``bound`` (an upper bound).

    ``start`` (B, C, H, W): a perturbation to warm-start from (e.g. a gradient attack's
    best iterate). It is projected into the box and the budget, verified through the codec
    and becomes the incumbent: the answer is never weaker than it, a solver answer no better
    is not even verified, and it proves optimality when it reaches the bound. scipy's HiGHS
    has no MIP-start API; ``start_cutoff=True`` also adds the cutoff row ``objective >
    incumbent`` (the solver then searches only for strictly better assignments; infeasible
    proves the incumbent optimal). Off by default: from a weak start (a PGD on the decoded
    change, reaching a third of the optimum) the row made proofs slower on the reference
    model (benchmarks/milp.py ``--warm``). ``score(x_adv, b)``: the real objective of candidate
    attacked images x_adv (n, C, H, W) of image b, (n,) values, lower is stronger (e.g. the
    k = 1 MS-SSIM of the reconstruction). With it, x_adv is the lowest-scored of every
    verified candidate: the start, each round's solution and, for L-inf, up to ``pool``
    assignments in decreasing objective order (each next one by a no-good cut, within the
    time left; those solves stop at a 5 % relative gap). ``bound`` / ``proven_optimal`` /
    ``value`` always describe the MILP objective.
    Why: the strongest possible context attack, the counterpart of the certificate.
    """
    check_norm(norm)
    eps = check_eps(eps)
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})")
    if not (isinstance(pool, int) and pool >= 1):
        raise ValueError(f"pool must be an int >= 1, got {pool!r}")
    codec, ac, x32, x64, clean = prepare(codec, x)
    if start is not None:
        if tuple(start.shape) != tuple(x32.shape):
            raise ValueError(f"start must have the shape of x {tuple(x32.shape)}, got {tuple(start.shape)}")
        if not torch.isfinite(start).all():
            raise ValueError("start must be finite")
        start = start.detach().double().cpu()
    rng = coefficient_ranges(codec, x32, eps, norm)
    weight = ac.decoded_weights().reshape(-1).numpy()
    gain_w = _gain_table(ac, objective)
    mu = (ac.margin.reshape(-1) + interior).numpy()
    B = x32.shape[0]
    out_x, out_lv, bounds, proven, status, times, rounds, values, scores, counts = ([] for _ in range(10))
    for bi in range(B):
        t0 = time.perf_counter()
        xb = x64[bi].reshape(-1).numpy()
        cl = clean[bi].reshape(-1).numpy()
        rb = _slice(rng, bi)
        sc = None if score is None else (lambda xa, bi=bi: score(xa.to(x.device), bi))
        one = _attack_one(
            codec,
            ac,
            rb,
            x32[bi : bi + 1].cpu(),
            xb,
            cl,
            mu,
            eps,
            norm,
            objective,
            gain_w,
            time_limit,
            max_rounds,
            t0,
            None if start is None else start[bi].reshape(-1).numpy(),
            sc,
            pool,
            start_cutoff,
        )
        xa, lv, bd, ok, msg, nr, val, s, nc = one
        out_x.append(xa)
        out_lv.append(lv)
        bounds.append(bd)
        proven.append(ok)
        status.append(msg)
        times.append(time.perf_counter() - t0)
        rounds.append(nr)
        values.append(val)
        scores.append(s)
        counts.append(nc)
    shape = (B, ac.channels, codec.size, codec.size)
    x_adv = torch.cat(out_x).to(x.device) if B else x32.clone()  # per-image work is on the CPU
    levels = torch.stack(out_lv).view(shape) if B else clean.view(shape)
    steps = (levels - clean.view(shape)).double().flatten(1)
    decoded = (steps.pow(2) * torch.from_numpy(weight)[None]).sum(1).sqrt()
    changed = (steps != 0).sum(1)
    bound = torch.tensor(bounds, dtype=torch.float64)
    value = torch.tensor(values, dtype=torch.float64)
    proven = [ok and eps < r for ok, r in zip(proven, codec.affine_radius(x32, norm).tolist())]  # else not exact
    if objective == "decoded_l2":
        bound, value = bound.clamp(min=0).sqrt(), value.clamp(min=0).sqrt()
    return ContextAttackResult(
        eps,
        norm,
        objective,
        x_adv,
        x_adv.double().cpu() - x32.double().cpu(),
        levels,
        clean.view(shape),
        decoded,
        changed,
        bound,
        torch.tensor(proven, dtype=torch.bool),
        status,
        torch.tensor(times),
        torch.tensor(rounds),
        interior,
        value,
        torch.tensor(scores, dtype=torch.float64),
        torch.tensor(counts),
    )


def _slice(rng, i: int):
    """The ranges of one image, keeping the batch axis."""
    return type(rng)(
        **{k: v[i : i + 1] if isinstance(v, Tensor) and k != "margin" else v for k, v in vars(rng).items()}
    )


def _attack_one(
    codec,
    ac,
    rng,
    x32,
    xb,
    clean,
    mu,
    eps,
    norm,
    objective,
    gain_w,
    time_limit,
    max_rounds,
    t0,
    start=None,
    score=None,
    pool=1,
    start_cutoff=False,
):
    """(x_adv, levels, objective bound, proven optimal, message, programs solved, best value, score, candidates)
    for one image."""

    def value(lv: np.ndarray) -> float:
        d = lv - clean
        return float(((d * d if objective == "decoded_l2" else (d != 0)) * gain_w).sum())

    def verify(delta: np.ndarray):
        xa = _realise(codec, x32, xb, delta, eps, norm)
        lv = codec_level(codec, xa).reshape(-1).numpy()
        return xa, lv, value(lv)

    best = (x32.clone(), clean.copy(), 0.0)
    cands = []  # every verified candidate, for the score
    if start is not None:
        cand = verify(start)
        cands.append(cand)
        best = cand if cand[2] > best[2] else best
    warm = start is not None and start_cutoff  # the solver must beat the incumbent (the cutoff row)

    def finish(bound, ok, msg, nr):
        return _choose(best, cands, score, bound, ok, msg, nr)

    pb = _build(ac, rng, xb, clean, mu, eps, gain_w, objective)
    if pb is None:
        return finish(math.inf, False, "some coefficient has no cell reachable with the interior margin", 0)
    if pb.W.shape[0] == 0:
        return finish(0.0, True, "certified: no coefficient can change level", 0)
    N = pb.W.shape[1]
    cuts, nogoods, found = [], [], []
    exact = True  # every cut so far is valid for the real problem, so the solver's bound is an upper bound
    # a bound before any solve: every coefficient at its best candidate level (valid, ignores their coupling)
    trivial = float(np.maximum.reduceat(pb.gain, np.flatnonzero(np.r_[True, pb.zrow[1:] != pb.zrow[:-1]])).sum())
    upper, solved, msg, nr = trivial, False, "", 0
    while nr < max_rounds:
        left = time_limit - (time.perf_counter() - t0)
        if left <= 0:
            msg, solved = "time limit", False
            break
        nr += 1
        cutoff = best[2] if warm else None
        res = (
            _milp_linf(pb, nogoods, left, cutoff)
            if norm == "linf"
            else _master_l2(pb, cuts, nogoods, eps, left, cutoff)
        )
        msg, solved = res.message, res.status == 0
        if res.x is None:  # infeasible: every assignment left was proven unrealisable (or no better one); else time
            if res.status == 2 and exact:
                upper, solved = best[2], True
            elif exact and math.isfinite(res.get("mip_dual_bound") or math.inf):  # out of time: the bound holds
                upper = min(upper, max(-res.mip_dual_bound, best[2]))
            break
        if exact:
            dual = -res.fun if solved else -(res.get("mip_dual_bound") or -math.inf)
            upper = min(upper, dual if math.isfinite(dual) else math.inf)
        sel = _assignment(pb, res.x[-len(pb.gain) :])
        target = clean.copy()
        target[pb.rows] = pb.zlev[sel]
        if value(target) <= best[2] * (1 + 1e-9):  # the incumbent already reaches this relaxation's optimum
            break
        if norm == "linf":
            cand = verify(_centre(pb, sel, res.x[:N]))
        else:
            q, dmin, g, Q = _min_norm(pb, sel, -xb, 1 - xb)
            if q > 0.5 * eps * eps * (1 + 1e-9):  # proven unrealisable within eps: Benders cut, and a repair
                scale = max(np.abs(g).max(), 1e-300)
                cuts.append((g / scale, (0.5 * eps * eps - Q) / scale + 1e-12 * (1 + abs(Q / scale))))
                heur = _repair(pb, sel, clean, xb, eps, best[2], value, verify)
                if heur is not None:
                    cands.append(heur)
                best = heur if heur is not None and heur[2] > best[2] else best
                continue
            if np.linalg.norm(dmin) > eps * (1 + 1e-12):  # undecided by the dual: exclude it, lose the proof
                exact = False
                nogoods.append(sel)
                continue
            cand = verify(dmin)
        cands.append(cand)
        found.append(sel)
        best = cand if cand[2] > best[2] else best
        if np.array_equal(cand[1], target):
            break  # realises the relaxation's optimum
        exact = False  # float32 disagreed with the target levels: keep the verified truth, drop the proof
        nogoods.append(sel)
    else:
        msg, solved = f"round limit ({max_rounds})", False
    ok = exact and solved and best[2] >= upper - 1e-6 * max(1.0, upper)
    if score is not None and norm == "linf":  # the next assignments in objective order, for the score to choose
        _pool(pb, nogoods + found, cands, verify, pool - len(found), time_limit, t0)
    return finish(max(upper, best[2]), ok, msg, nr)


def _pool(pb: _Problem, nogoods: list, cands: list, verify, n: int, time_limit: float, t0: float) -> None:
    """L-inf: up to ``n`` more verified candidates, each the best assignment not yet seen (5 % gap), in the time left."""
    nogoods = list(nogoods)
    N = pb.W.shape[1]
    for _ in range(max(n, 0)):
        left = time_limit - (time.perf_counter() - t0)
        if left <= 0:
            return
        res = _milp_linf(pb, nogoods, left, gap=0.05)
        if res.x is None:
            return
        sel = _assignment(pb, res.x[-len(pb.gain) :])
        nogoods.append(sel)
        cands.append(verify(_centre(pb, sel, res.x[:N])))


def _choose(best, cands, score, bound, ok, msg, nr):
    """The result tuple: ``best`` (the highest objective), or with ``score`` the lowest-scored candidate."""
    if score is None or not cands:
        return (*_pack(best, bound, ok, msg, nr), best[2], math.nan, 0)
    with torch.no_grad():
        s = torch.as_tensor(score(torch.cat([c[0] for c in cands]))).double().flatten().cpu()
    if s.numel() != len(cands) or not torch.isfinite(s).all():
        raise ValueError(f"score must return {len(cands)} finite values, got {s.tolist()}")
    i = min(range(len(cands)), key=lambda i: (float(s[i]), -cands[i][2]))  # ties: the larger objective
    return (*_pack(cands[i], bound, ok, msg, nr), best[2], float(s[i]), len(cands))


def _repair(pb: _Problem, sel: np.ndarray, clean: np.ndarray, xb: np.ndarray, eps: float, floor: float, value, verify):
    """L2 incumbent: undo the changes of an unrealisable assignment, costliest per gain first, until it fits.

    The cost of a change is its row's term in the dual bound (lam_i a_i - nu_i b_i):
    how much it pushes the minimum norm up. Stops once the remaining assignment cannot
    beat ``floor``. Returns a verified (x_adv, levels, value) or None.
    """
    sel = sel.copy()
    keep = np.flatnonzero(pb.zlev == clean[pb.rows[pb.zrow]])  # the binaries that keep a row at its clean level
    home = {pb.zrow[k]: k for k in keep}
    while True:
        target = clean.copy()
        target[pb.rows] = pb.zlev[sel]
        if value(target) <= floor:
            return None
        q, dmin, g, _ = _min_norm(pb, sel, -xb, 1 - xb)
        if q <= 0.5 * eps * eps and np.linalg.norm(dmin) <= eps * (1 + 1e-12):
            return verify(dmin)
        moved = [r for r in range(len(sel)) if r in home and sel[r] != home[r]]
        if not moved:
            return None
        step = lambda r: abs(pb.zlev[sel[r]] - clean[pb.rows[r]])  # noqa: E731
        r = max(moved, key=lambda r: g[sel[r]] / max(pb.gain[sel[r]], 1e-300) if step(r) else -np.inf)
        sel[r] = home[r]


def _pack(best, bound, ok, msg, nr):
    xa, lv, _ = best
    return xa, torch.from_numpy(np.asarray(lv)).long(), bound, ok, msg, nr
