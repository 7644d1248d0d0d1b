"""Latent PGD under an L-inf budget (Madry et al., 2018, applied to the latent objective).

Threat model: ||delta||_inf <= eps, x + delta in [0, 1]. Uniform random start in the
cube (the unsupervised objective has zero gradient at delta = 0), sign-gradient
ascent steps of ``step_size`` (default 2.5 * eps / steps), hard projection after
every step, best iterate kept per image. Defaults follow the protocol (docs/protocol.md):
eps 0.1, 50 steps, objective ``skl``.
"""

from __future__ import annotations

from torch import Tensor

from robustvae.attacks.base import LatentAttack, ascent_direction


class LatentPGD(LatentAttack):
    r"""Latent PGD under an L-inf budget: 'Towards Deep Learning Models Resistant to Adversarial Attacks' (Madry et al., 2018).

    Maximises a latent objective (:mod:`robustvae.attacks.objectives`) of the top ``k``
    layers instead of a classification loss.

    Distance measure: Linf; x + delta is kept in [0, 1].

    Arguments:
        model (HierarchicalVAE): the model to attack (:mod:`robustvae.models.contract`).
        k (int): attack the top k latent layers (layer 1 is the top). (Default: 1)
        eps (float): maximum perturbation on [0, 1] pixels. (Default: 0.1)
        steps (int): number of steps. (Default: 50)
        step_size (float): step size. (Default: 2.5 * eps / steps)
        objective (str): a name from ``OBJECTIVES``. (Default: 'skl')
        straight_through (bool): compare quantised layers through their quantised values. (Default: False)
        random_start (bool): uniform start in the ball (the objective has zero gradient at delta = 0). (Default: True)
        temperature (float): prior temperature below k of a reconstruction objective. (Default: 0.1)
        per_unit (bool): divide each layer's divergence by its units. (Default: False)

    Shape:
        - images: (N, C, H, W) in [0, 1]; ``target`` (targeted objectives only) the same.
        - seeds: optional list of N ints, one random start per image (batch-independent).
        - noise: reconstruction objectives only: the prior noise (``model.make_noise``), one row per image.
        - output: (N, C, H, W) adversarial images, the best iterate of each.

    Examples::
        >>> attack = LatentPGD(model, k=2, eps=0.1, steps=50)
        >>> adv_images = attack(images)
    """

    def __init__(
        self,
        model,
        k: int = 1,
        eps: float = 0.1,
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
            "LatentPGD",
            model,
            k,
            eps,
            "linf",
            steps,
            objective,
            straight_through,
            random_start,
            temperature=temperature,
            per_unit=per_unit,
        )
        self.step_size = step_size if step_size is not None else 2.5 * eps / steps

    def _ascend(self, delta: Tensor, grad: Tensor, loss: Tensor, step: int, state: dict) -> Tensor:
        return delta + self.step_size * ascent_direction(grad, "linf")
