"""Latent APGD (Croce & Hein, 2020): PGD whose step size adapts per image, with momentum, L-inf or L2.

The update rule of Auto-PGD, applied to a latent objective and run per image:

* the step size starts at ``step_size`` (default 2 eps) and is halved at a checkpoint
  when progress stalled since the previous one: the objective went up in at most
  ``rho`` (0.75) of those steps, or (from the second checkpoint on) the step size was not
  halved at the previous checkpoint and the best objective has not improved since; an
  image whose step size is halved restarts from its best point (with the gradient there);
* checkpoints follow the reference code: the first after max(int(0.22 N), 1) steps,
  then every k steps with k shrinking by max(int(0.03 N), 1) down to max(int(0.06 N), 1);
* each step: z = P(x + eta * s(grad)), x' = P(x + a (z - x) + (1 - a)(x - x_prev)) with
  s the sign (L-inf) or the L2-normalised gradient, momentum a = ``momentum`` (0.75) after
  the first step (a = 1 on the first), P the projection onto the ball within [0, 1].

Every quantity (step size, best point, checkpoint decision) is per image, updated with
``torch.where``: a batch gives the results of its images one at a time. As for the other
attacks the start is the uniform random start of the ball from each image's seed (the
reference starts on the ball's surface), and the best iterate is returned.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustvae.attacks.base import LatentAttack, _score, ascent_direction, project


def apgd_checkpoints(steps: int) -> list[int]:
    """Steps after which APGD checks its progress (the reference code's schedule), all below ``steps``."""
    first, least, shrink = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    points, at, k = [], first, first
    while at < steps:
        points.append(at)
        k = max(k - shrink, least)
        at += k
    return points


class LatentAPGD(LatentAttack):
    r"""Latent APGD: 'Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks' (Croce & Hein, 2020), the APGD update rule on a latent objective.

    Distance measure: Linf or L2 (hard projection after every step); x + delta in [0, 1].

    Arguments:
        model, k, eps, norm: as for :class:`LatentSGD` (defaults: k 1, eps 0.1, norm 'linf').
        steps (int): number of steps (gradient evaluations); one more forward pass scores the last iterate. (Default: 50)
        step_size (float): initial step size, per image. (Default: 2 * eps)
        momentum (float): weight of the new step against the previous one (0.75 in the paper). (Default: 0.75)
        rho (float): a checkpoint halves the step size when the objective rose in at most this
            share of the steps since the previous checkpoint. (Default: 0.75)
        objective, straight_through, random_start, temperature, per_unit: as for :class:`LatentPGD`.

    Shape: as for :class:`LatentPGD` (images, seeds and, for reconstruction objectives, noise in;
    the best iterate of each image out). After a call ``step_sizes`` holds each image's final step size.

    Examples::
        >>> attack = LatentAPGD(model, k=1, eps=0.1, norm="linf", steps=50)
        >>> adv_images = attack(images, seeds=list(range(len(images))))
    """

    def __init__(
        self,
        model,
        k: int = 1,
        eps: float = 0.1,
        norm: str = "linf",
        steps: int = 50,
        step_size: float | None = None,
        momentum: float = 0.75,
        rho: float = 0.75,
        objective: str = "skl",
        straight_through: bool = False,
        random_start: bool = True,
        *,
        temperature: float = 0.1,
        per_unit: bool = False,
    ):
        super().__init__(
            "LatentAPGD",
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
        self.step_size = step_size if step_size is not None else 2.0 * eps
        self.momentum, self.rho = momentum, rho
        self.checkpoints = apgd_checkpoints(steps)

    def _init_state(self, images: Tensor) -> dict:
        n = images.shape[0]
        return {
            "images": images,
            "eta": torch.full((n,), self.step_size, device=images.device, dtype=images.dtype),
            "scores": [],
            "since": 0,
            "reduced": torch.ones(n, dtype=torch.bool, device=images.device),
            "best_at_check": None,
            "grad_best": None,
            "prev": None,
        }

    def _ascend(self, delta: Tensor, grad: Tensor, loss: Tensor, step: int, state: dict) -> Tensor:
        images, best_loss, better = state["images"], state["best_loss"], state["better"]
        view = (-1, *([1] * (delta.dim() - 1)))
        state["grad_best"] = (
            grad if state["grad_best"] is None else torch.where(better.view(view), grad, state["grad_best"])
        )
        if state["best_at_check"] is None:
            state["best_at_check"] = best_loss  # the start
        state["scores"].append(_score(loss))
        if step in self.checkpoints:
            since, scores = state["since"], state["scores"]
            rises = sum((scores[i] > scores[i - 1]).to(torch.int64) for i in range(since + 1, step + 1))
            stalled = rises <= self.rho * (step - since)
            no_gain = ~state["reduced"] & (best_loss <= state["best_at_check"])
            halve = stalled | no_gain
            state.update(reduced=halve, best_at_check=best_loss, since=step)
            state["eta"] = torch.where(halve, state["eta"] / 2, state["eta"])
            delta = torch.where(halve.view(view), state["best_delta"], delta)
            grad = torch.where(halve.view(view), state["grad_best"], grad)
        a = 1.0 if step == 0 else self.momentum
        prev = delta if state["prev"] is None else state["prev"]
        state["prev"] = delta
        self.step_sizes = state["eta"]
        z = project(delta + state["eta"].view(view) * ascent_direction(grad, self.norm), images, self.eps, self.norm)
        return project(delta + a * (z - delta) + (1 - a) * (delta - prev), images, self.eps, self.norm)
