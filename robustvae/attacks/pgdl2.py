"""Latent PGD under an L2 budget (Madry et al., 2018, applied to the latent objective).

Threat model: ||delta||_2 <= eps (projection rescales delta onto the ball of radius
eps itself, not eps times the norm of a ones tensor), x + delta in [0, 1]. Uniform
random start in the ball, steps along the L2-normalised gradient of length
``step_size`` (default 2.5 * eps / steps), best iterate kept per image.
"""

from __future__ import annotations

from torch import Tensor

from robustvae.attacks.base import LatentAttack, _flat_norm


class LatentPGDL2(LatentAttack):
    def __init__(self, model, k: int = 1, eps: float = 1.0, steps: int = 50, step_size: float | None = None,
                 objective: str = "skl", straight_through: bool = False, random_start: bool = True):
        super().__init__("LatentPGDL2", model, k, eps, "l2", steps, objective, straight_through, random_start)
        self.step_size = step_size if step_size is not None else 2.5 * eps / steps

    def _ascend(self, delta: Tensor, grad: Tensor, loss: Tensor, step: int, state: dict) -> Tensor:
        return delta + self.step_size * grad / _flat_norm(grad, 2).clamp_min(1e-12)
