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
    r"""Latent PGD under an L2 budget: 'Towards Deep Learning Models Resistant to Adversarial Attacks' (Madry et al., 2018).

    Distance measure: L2 (the projection rescales delta onto the ball of radius eps);
    x + delta is kept in [0, 1].

    Arguments:
        model (HierarchicalVAE): the model to attack.
        k (int): attack the top k latent layers. (Default: 1)
        eps (float): maximum L2 norm of the perturbation on [0, 1] pixels. (Default: 1.0)
        steps (int): number of steps. (Default: 50)
        step_size (float): length of each normalised-gradient step. (Default: 2.5 * eps / steps)
        objective (str): a name from ``OBJECTIVES``. (Default: 'skl')
        straight_through (bool): compare quantised layers through their quantised values. (Default: False)
        random_start (bool): uniform start in the ball. (Default: True)
        temperature, per_unit: as for :class:`LatentPGD`.

    Shape:
        - images: (N, C, H, W) in [0, 1]; seeds: optional list of N ints; noise: as for :class:`LatentPGD`.
        - output: (N, C, H, W) adversarial images, the best iterate of each.

    Examples::
        >>> attack = LatentPGDL2(model, k=1, eps=1.0, steps=50)
        >>> adv_images = attack(images)
    """

    def __init__(
        self,
        model,
        k: int = 1,
        eps: float = 1.0,
        steps: int = 50,
        step_size: float | None = None,
        objective: str = "skl",
        straight_through: bool = False,
        random_start: bool = True,
        *,
        temperature: float = 0.1,
        per_unit: bool = False,
    ):
        super().__init__(
            "LatentPGDL2",
            model,
            k,
            eps,
            "l2",
            steps,
            objective,
            straight_through,
            random_start,
            temperature=temperature,
            per_unit=per_unit,
        )
        self.step_size = step_size if step_size is not None else 2.5 * eps / steps

    def _ascend(self, delta: Tensor, grad: Tensor, loss: Tensor, step: int, state: dict) -> Tensor:
        return delta + self.step_size * grad / _flat_norm(grad, 2).clamp_min(1e-12)  # this order: golden records
