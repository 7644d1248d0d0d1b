"""Latent PGD under an L-inf budget (Madry et al., 2018, applied to the latent objective).

Threat model: ||delta||_inf <= eps, x + delta in [0, 1]. Uniform random start in the
cube (the unsupervised objective has zero gradient at delta = 0), sign-gradient
ascent steps of ``step_size`` (default 2.5 * eps / steps), hard projection after
every step, best iterate kept per image. Defaults follow GUIDE section 5:
eps 0.1, 50 steps, objective ``skl``.
"""

from __future__ import annotations

from torch import Tensor

from robustvae.attacks.base import LatentAttack


class LatentPGD(LatentAttack):
    def __init__(self, model, k: int = 1, eps: float = 0.1, steps: int = 50, step_size: float | None = None,
                 objective: str = "skl", straight_through: bool = False, random_start: bool = True):
        super().__init__("LatentPGD", model, k, eps, "linf", steps, objective, straight_through, random_start)
        self.step_size = step_size if step_size is not None else 2.5 * eps / steps

    def _ascend(self, delta: Tensor, grad: Tensor, loss: Tensor, step: int, state: dict) -> Tensor:
        return delta + self.step_size * grad.sign()
