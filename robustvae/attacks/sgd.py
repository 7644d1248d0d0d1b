"""The DCT-VAE authors' optimiser: plain SGD on delta with a reduce-on-plateau schedule.

Kuzina & Tomczak's attack code (not their Appendix H, which gives no optimiser
settings) optimised the perturbation with SGD, learning rate 1.0, 50 steps and a
reduce-on-plateau schedule with patience 20 and factor 0.5. Here that runs per image
inside a batch: each image has its own learning rate, reduced by ``factor`` when its
objective has not improved by a relative ``threshold`` for ``patience`` steps (torch's
ReduceLROnPlateau semantics, mode max). torch's scheduler keeps one learning rate per optimiser, which
would couple the images of a batch, hence this small vectorised version. The budget
(L-inf or L2) is a hard projection after every step, as for PGD.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustvae.attacks.base import LatentAttack


class LatentSGD(LatentAttack):
    r"""The DCT-VAE authors' latent attack: SGD on delta with a reduce-on-plateau schedule.

    Kuzina & Tomczak, 'Discouraging posterior collapse in hierarchical VAEs using
    context' (2023): learning rate 1.0, 50 steps and the plateau schedule (patience 20,
    factor 0.5) come from their public attack code.

    Distance measure: Linf or L2 (hard projection after every step); x + delta in [0, 1].

    Arguments:
        model (HierarchicalVAE): the model to attack.
        k (int): attack the top k latent layers. (Default: 1)
        eps (float): budget on [0, 1] pixels. (Default: 0.1)
        norm (str): 'linf' or 'l2'. (Default: 'linf')
        steps (int): number of steps. (Default: 50)
        lr (float): initial learning rate, per image. (Default: 1.0)
        factor, patience, threshold: the plateau schedule, per image (mode max). (Default: 0.5, 20, 1e-4)
        objective, straight_through, random_start, temperature, per_unit: as for :class:`LatentPGD`.

    Shape: as for :class:`LatentPGD` (images and seeds in, the best iterate of each image out).

    Examples::
        >>> attack = LatentSGD(model, k=1, eps=0.1, norm="linf", steps=50)
        >>> adv_images = attack(images)
    """

    def __init__(
        self,
        model,
        k: int = 1,
        eps: float = 0.1,
        norm: str = "linf",
        steps: int = 50,
        lr: float = 1.0,
        factor: float = 0.5,
        patience: int = 20,
        threshold: float = 1e-4,
        objective: str = "skl",
        straight_through: bool = False,
        random_start: bool = True,
        *,
        temperature: float = 0.1,
        per_unit: bool = False,
    ):
        super().__init__(
            "LatentSGD",
            model,
            k,
            eps,
            norm,
            steps,
            objective,
            straight_through,
            random_start,
            temperature=temperature,
            per_unit=per_unit,
        )
        self.lr, self.factor, self.patience, self.threshold = lr, factor, patience, threshold

    def _init_state(self, images: Tensor) -> dict:
        n, device = images.shape[0], images.device
        return {
            "lr": torch.full((n,), self.lr, device=device),
            "best": torch.full((n,), -float("inf"), device=device),
            "bad": torch.zeros(n, dtype=torch.long, device=device),
        }

    def _ascend(self, delta: Tensor, grad: Tensor, loss: Tensor, step: int, state: dict) -> Tensor:
        best = state["best"]
        improved = loss > best + self.threshold * best.abs().where(torch.isfinite(best), torch.zeros_like(best))
        state["best"] = torch.where(improved, loss, best)
        state["bad"] = torch.where(improved, torch.zeros_like(state["bad"]), state["bad"] + 1)
        reduce = state["bad"] > self.patience
        state["lr"] = torch.where(reduce, state["lr"] * self.factor, state["lr"])
        state["bad"] = torch.where(reduce, torch.zeros_like(state["bad"]), state["bad"])
        return delta + state["lr"].view(-1, *([1] * (delta.dim() - 1))) * grad
