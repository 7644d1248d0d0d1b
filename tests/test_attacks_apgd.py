"""Latent APGD: closed-form optima, the reference schedule, per-image state, the budget, and APGD against PGD."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustvae.attacks import LatentAPGD, LatentPGD, LatentPGDL2, make_attack
from robustvae.attacks.apgd import apgd_checkpoints
from robustvae.config import AttackConfig
from robustvae.protocol import NORMS
from robustvae.models.distributions import DiagGaussian
from test_objectives import digits, per_image_noise, tiny
from tolerance import EPS32, SAFETY, RoundingTolerance, float32_jitter


class RankOne(nn.Module):
    """One latent layer, q(z | x) = N(u (w . x), sigma^2 I): the symmetric KL between x + d and x is
    c (w . d)^2 with c = ||u||^2 / sigma^2, so its maximiser over a box is a vertex in closed form."""

    num_layers = 1

    def __init__(self, shape: tuple[int, ...], seed: int = 0, sigma: float = 0.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(torch.Size(shape).numel(), generator=g), requires_grad=False)
        self.register_buffer("u", torch.randn(1, 3, 2, 2, generator=g))
        self.logvar = 2 * torch.log(torch.tensor(sigma))

    @property
    def c(self) -> float:
        return float((self.u**2).sum() / self.logvar.exp())

    def encode(self, x, k=None):
        mean = (x.flatten(1) @ self.w)[:, None, None, None] * self.u
        return [DiagGaussian(mean, self.logvar.expand_as(mean))]


class Masked(nn.Module):
    """One latent layer, q(z | x) = N(mask * x, I): the symmetric KL is ||mask * d||^2, maximised over the
    L2 ball (inside [0, 1]) by any d of norm eps inside the mask, at eps^2; ``mask`` all ones: ||d||^2."""

    num_layers = 1

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)
        self.unused = nn.Parameter(torch.zeros(1))  # torchattacks reads the device from the parameters

    def encode(self, x, k=None):
        mean = x * self.mask
        return [DiagGaussian(mean, torch.zeros_like(mean))]


def interior(n: int, shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    """Images in [0.3, 0.7]: an eps <= 0.3 step in any direction stays inside [0, 1]."""
    return 0.3 + 0.4 * torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


# The weight noise that makes an untrained model's reconstruction depend on its input, for the batch tests: at 0.5
# its activations reach 1e7 and float32 knows the objective at one point only to 5e-4 relative (batch and one image
# differed by that on the same point under ATEN_CPU_CAPABILITY=default: output logits of 6e6 differed by 1.4e2, and a
# pixel near the middle of the sigmoid moved by 0.08); at 0.2 activations stay below 10 and the reconstruction still
# moves by 0.09 under L-inf noise of 0.1.
RECON_SCRAMBLE = 0.2


def assert_batch_equals_single(make, x: torch.Tensor, seeds: list[int], noise: list[torch.Tensor] | None = None):
    """A batch gives each image what it gets alone with the same seed (and noise row).

    Batched convolutions sum in another order: one image alone is another float32 rounding of
    the same computation. Its objectives (every evaluation's best so far) agree with the batch's
    within the rounding tolerance that a second batch run under ``float32_jitter`` measures
    (tests/tolerance.py). Where two iterates tie to rounding, the kept
    best may differ: each image equals the batch's, to the rounding of a pixel, on at least 90 % of its pixels.
    The computation must be well conditioned for this to mean anything (see ``RECON_SCRAMBLE``).
    """
    attack = make()
    adv = attack(x, seeds=seeds, noise=noise)
    with float32_jitter(1):
        jittered = make()
        jittered(x, seeds=seeds, noise=noise)
    tol = RoundingTolerance({"loss": attack.progress.tolist()}, [{"loss": jittered.progress.tolist()}])
    for i in range(x.shape[0]):
        alone = make()
        one = alone(
            x[i : i + 1], seeds=seeds[i : i + 1], noise=None if noise is None else [t[i : i + 1] for t in noise]
        )
        tol.assert_close(
            {"loss": alone.progress[:, 0].tolist()}, {"loss": attack.progress[:, i].tolist()}, f"image {i}"
        )
        tol.assert_close(
            {"loss": alone.best_loss.tolist()}, {"loss": attack.best_loss[i : i + 1].tolist()}, f"image {i}"
        )
        same = ((one - adv[i : i + 1]).abs() <= SAFETY * EPS32).float().mean()  # pixels in [0, 1]
        assert same > 0.9, (i, float(same))


def assert_progress_is_the_best_so_far(attack, steps: int, n: int):
    """``progress``: evaluations x images, the running maximum of ``loss_history``, ending at ``best_loss``."""
    assert attack.progress.shape == attack.loss_history.shape == (steps + 1, n)
    assert (attack.progress[1:] >= attack.progress[:-1]).all()
    torch.testing.assert_close(attack.progress, torch.cummax(attack.loss_history.double(), 0).values)
    torch.testing.assert_close(attack.progress[-1], attack.best_loss)


# --------------------------------------------------------------------------- closed-form optima


def test_apgd_reaches_the_linf_optimum_eps_sign_w():
    m, x = RankOne((1, 6, 6)), interior(4, (1, 6, 6))
    attack = LatentAPGD(m, 1, eps=0.1, norm="linf", steps=10)
    adv = attack(x, seeds=[0, 1, 2, 3])
    d = (adv - x).flatten(1)
    optimum = m.c * (0.1 * m.w.abs().sum()) ** 2  # f(+-eps sign w): both signs are maxima
    torch.testing.assert_close(
        attack.best_loss, torch.full((4,), float(optimum), dtype=torch.float64), rtol=1e-5, atol=0
    )
    side = torch.sign(d @ m.w)[:, None]
    torch.testing.assert_close(d, side * 0.1 * m.w.sign(), rtol=0, atol=1e-6)  # (x + d) - x: float rounding only


def test_apgd_reaches_the_optimum_clipped_to_the_box():
    """Supervised towards a target beyond reach: the unique optimum is clip(x + eps sign w) - x."""
    shape = (1, 6, 6)
    m = RankOne(shape, seed=3)
    x = interior(4, shape, seed=4)
    x.view(4, -1)[:, ::3] = 0.0  # a third of the pixels on each edge of the box
    x.view(4, -1)[:, 1::3] = 1.0
    target = (m.w > 0).float().view(1, *shape).expand(4, -1, -1, -1)
    best = (x + 0.1 * m.w.sign().view(1, *shape)).clamp(0, 1) - x
    gap = (target - x - best).flatten(1) @ m.w
    assert (gap > 0).all()  # the target lies beyond the ball: the optimum is on its boundary
    attack = LatentAPGD(m, 1, eps=0.1, steps=10, objective="supervised")
    adv = attack(x, target=target, seeds=[0, 1, 2, 3])
    torch.testing.assert_close(adv - x, best, rtol=0, atol=1e-6)
    torch.testing.assert_close(attack.best_loss, (-m.c * gap**2).double(), rtol=1e-5, atol=1e-6)


def test_apgd_reaches_the_l2_optimum_eps_w_over_its_norm():
    m, x = RankOne((1, 6, 6), seed=5), interior(4, (1, 6, 6))
    assert 0.5 * m.w.abs().max() / m.w.norm() < 0.3  # eps w / ||w|| stays inside [0, 1] from [0.3, 0.7]
    attack = LatentAPGD(m, 1, eps=0.5, norm="l2", steps=50)
    adv = attack(x, seeds=[0, 1, 2, 3])
    optimum = m.c * (0.5 * m.w.norm()) ** 2
    torch.testing.assert_close(
        attack.best_loss, torch.full((4,), float(optimum), dtype=torch.float64), rtol=1e-5, atol=0
    )
    cos = torch.nn.functional.cosine_similarity((adv - x).flatten(1), m.w[None]).abs()
    assert (cos > 1 - 1e-5).all(), cos


# --------------------------------------------------------------------------- the update rule


@pytest.mark.parametrize("steps", [1, 3, 10, 50, 100, 1000])
def test_checkpoints_follow_the_reference_schedule(steps):
    """The reference code's counters, run literally: a check when ``counter3`` reaches k, after iteration i."""
    n_iter_2, n_iter_min, size_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    k, counter3, checks = n_iter_2, 0, []
    for i in range(steps):
        counter3 += 1
        if counter3 == k:
            checks.append(i + 1)  # iteration i evaluated the (i + 1)-th iterate
            k = max(k - size_decr, n_iter_min)
            counter3 = 0
    assert apgd_checkpoints(steps) == [c for c in checks if c < steps]  # a check after the last step moves nothing


def test_the_step_size_halves_at_every_checkpoint_when_nothing_improves():
    m = Masked(torch.zeros(1, 1, 6, 6))  # the objective is 0 everywhere: no step ever improves it
    attack = LatentAPGD(m, 1, eps=0.1, steps=50)
    attack(interior(2, (1, 6, 6)), seeds=[0, 1])
    halvings = len(apgd_checkpoints(50))
    torch.testing.assert_close(attack.step_sizes, torch.full((2,), 0.2 / 2**halvings))


def test_progress_passes_and_the_best_iterate():
    m, x = tiny("dctvae-mnist-tiny"), digits(3)
    attack = LatentAPGD(m, 2, eps=0.1, steps=12, objective="boundary")
    adv = attack(x, seeds=[0, 1, 2])
    assert_progress_is_the_best_so_far(attack, 12, 3)
    assert attack.passes == {"forward": 13, "backward": 12}
    obj = attack.objective
    torch.testing.assert_close(obj(adv, obj.reference(x)).double(), attack.best_loss, rtol=1e-5, atol=1e-5)


@pytest.mark.numerical
@pytest.mark.parametrize("norm, objective", [("linf", "recon"), ("l2", "boundary")])
def test_a_batch_gives_the_results_of_one_image_at_a_time(norm, objective):
    # scrambled weights make an untrained reconstruction depend on its input (and its KLs huge: latent objectives
    # unscrambled); by 0.2, not 0.5, whose activations reach 1e7 (see RECON_SCRAMBLE)
    m, x = tiny("dctvae-mnist-tiny", scramble=RECON_SCRAMBLE if objective == "recon" else 0.0), digits(4)
    seeds = [10, 11, 12, 13]
    noise = per_image_noise(m, seeds)
    eps = 0.1 if norm == "linf" else 1.0
    assert_batch_equals_single(
        lambda: LatentAPGD(m, 2, eps=eps, norm=norm, steps=6, objective=objective), x, seeds, noise
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**16),
    optimizer=st.sampled_from(["apgd", "square"]),
    norm=st.sampled_from(NORMS),
    eps=st.floats(0.01, 3.0),
    objective=st.sampled_from(["skl", "boundary", "recon", "kl_forward"]),
    straight_through=st.booleans(),
    k=st.sampled_from([1, 2]),
)
def test_the_budget_is_never_exceeded(seed, optimizer, norm, eps, objective, straight_through, k):
    if norm == "linf":
        eps = eps / 3.0 * 0.99  # L-inf eps must stay below 1 (every image is reachable at 1): map [0.01, 3] into it
    m = tiny("dctvae-mnist-tiny", scramble=0.5)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, 28, 28, generator=g)
    x[0] = (x[0] > 0.5).float()  # binary pixels sit on the box edges
    cfg = AttackConfig(
        eps=eps, norm=norm, steps=3, objective=objective, optimizer=optimizer, straight_through=straight_through
    )
    seeds = [seed, seed + 1, seed + 2]
    adv = make_attack(m, k, cfg)(x, seeds=seeds, noise=per_image_noise(m, seeds))
    size = (adv - x).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
    assert adv.min() >= 0 and adv.max() <= 1 and (size <= eps * (1 + 1e-5) + 1e-7).all(), (
        size,
        eps,
    )  # float32 rounding


# --------------------------------------------------------------------------- APGD against PGD


def _best_of_both(norm: str, eps: float, steps: int, objective: str, n: int = 60):
    m, x = tiny("dctvae-mnist-tiny"), digits(n)
    seeds = list(range(n))
    pgd = (LatentPGD if norm == "linf" else LatentPGDL2)(m, 1, eps, steps, objective=objective)
    apgd = LatentAPGD(m, 1, eps, norm=norm, steps=steps, objective=objective)
    pgd(x, seeds=seeds)
    apgd(x, seeds=seeds)
    return pgd.best_loss, apgd.best_loss


def test_apgd_is_never_weaker_than_pgd_on_the_l2_context_boundary():
    """60 digits, k = 1 (the context), L2 eps 1, 50 steps, the same seeded starts: APGD is ahead on every point.

    Measured at this commit on 100 points x 5 restarts: ahead on all 500 (by at least 0.019 cells).
    """
    pgd, apgd = _best_of_both("l2", 1.0, 50, "boundary")
    assert (apgd >= pgd).all(), (apgd - pgd).min()


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason=(
        "measured, not a bug: on this piecewise-linear objective APGD's large first steps settle near another "
        "vertex than PGD's small ones; at 50 steps APGD is below PGD on 27 of 60 points by at most 0.058 cells "
        "(mean -4.642 against -4.649: ahead on average), and on 45 % of 500 restarts. No setting of APGD's own fixes "
        "it (measured on these 60 points): initial step eps 15 below, eps/2 7, "
        "2.5 eps/50 20, no momentum 36, 100 steps 9; in the ensemble the per-point worst case over members covers it"
    ),
)
def test_apgd_is_never_weaker_than_pgd_on_the_linf_context_boundary():
    pgd, apgd = _best_of_both("linf", 0.1, 50, "boundary")
    assert (apgd >= pgd).all()


def test_apgd_stays_within_a_tenth_of_a_cell_of_pgd_on_the_linf_context_boundary():
    """What holds per point in L-inf: APGD's shortfall (where it has one) is below 0.1 cells, the boundary cap."""
    pgd, apgd = _best_of_both("linf", 0.1, 50, "boundary")
    assert (apgd >= pgd - 0.1).all(), (apgd - pgd).min()
    assert apgd.mean() >= pgd.mean()
