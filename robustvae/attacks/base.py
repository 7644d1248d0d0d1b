"""Shared machinery of the latent attacks: threat models, random starts, the optimisation loop.

Every attack is a ``torchattacks.Attack`` (device handling, eval mode during the
attack, the familiar ``attack(images)`` call). Its classifier-only helpers (``save``,
``MultiAttack``, targeted label modes) do not apply to latent attacks and are not used.

Each image in a batch is optimised independently: its own random start (from its own
seed when ``seeds`` are given), its own step sizes, and its own best iterate, so a
batch of points x restarts gives the same results as running them one by one.
"""

from __future__ import annotations

import math

import torch
from torchattacks.attack import Attack
from torch import Tensor

from robustvae.attacks.objectives import LatentObjective

NORMS = ("linf", "l2")


def _flat_norm(t: Tensor, p: float) -> Tensor:
    return t.flatten(1).norm(p=p, dim=1).view(-1, *([1] * (t.dim() - 1)))


def random_start(images: Tensor, eps: float, norm: str, seeds: list[int] | None = None) -> Tensor:
    """A uniform random point of the eps-ball around each image, kept inside [0, 1].

    L-inf: uniform in the cube. L2: uniform in the ball (Gaussian direction, radius eps * U^(1/n)).
    With ``seeds`` each image's start comes from its own CPU generator, so it does not
    depend on the batch it sits in.
    """
    n = images[0].numel()

    def draw(shape, gen):
        if norm == "linf":
            return (torch.rand(shape, generator=gen) * 2 - 1) * eps
        direction = torch.randn(shape, generator=gen)
        direction = direction / _flat_norm(direction, 2)
        radius = eps * torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=gen) ** (1.0 / n)
        return direction * radius

    if seeds is None:
        d = draw(tuple(images.shape), None)
    else:
        if len(seeds) != images.shape[0]:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for {images.shape[0]} images")
        d = torch.cat([draw((1, *images.shape[1:]), torch.Generator().manual_seed(s)) for s in seeds])
    d = d.to(images.device, images.dtype)
    return (images + d).clamp(0, 1) - images


def project(delta: Tensor, images: Tensor, eps: float, norm: str) -> Tensor:
    """Hard projection onto the ball of radius eps (never a penalty), then into [0, 1]."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        scale = (eps / _flat_norm(delta, 2).clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * scale
    return (images + delta).clamp(0, 1) - images


class LatentAttack(Attack):
    """Base class: maximise a latent objective of the top ``k`` layers within an eps-ball.

    Subclasses implement ``_init_state`` and ``_ascend`` (one update of delta from its gradient).
    After a call, ``best_loss`` (per image), ``nonfinite`` (per image: a non-finite loss or
    gradient was met), ``loss_history`` (steps x images), ``best_delta`` and ``last_delta``
    (the best and the last iterate) describe the run.
    """

    def __init__(self, name: str, model, k: int, eps: float, norm: str, steps: int, objective: str = "skl",
                 straight_through: bool = False, random_start: bool = True):
        super().__init__(name, model)
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r} (known: {', '.join(NORMS)})")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0 (0: no perturbation), got {eps}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        L = model.num_layers
        if not 1 <= k <= L:
            raise ValueError(f"k must be in 1..{L} (the model has L={L} latent layers), got {k}")
        self.k, self.eps, self.norm, self.steps = k, eps, norm, steps
        self.random_start = random_start
        self.objective = LatentObjective(model, k, objective, straight_through)
        self.supported_mode = ["default"]

    def __call__(self, images: Tensor, labels=None, *, target: Tensor | None = None,
                 seeds: list[int] | None = None) -> Tensor:
        """Run :meth:`forward` with the model in eval mode (restored afterwards).

        Overrides ``torchattacks.Attack.__call__``, whose signature and normalisation
        handling changed across releases: latent attacks need neither labels nor
        normalisation, and this keeps them independent of the installed release.
        """
        was_training = self.model.training
        self.model.eval()
        try:
            return self.forward(images, labels, target=target, seeds=seeds)
        finally:
            self.model.train(was_training)

    # -- subclass hooks
    def _init_state(self, n: int, device: torch.device) -> dict:
        return {}

    def _ascend(self, delta: Tensor, grad: Tensor, loss: Tensor, step: int, state: dict) -> Tensor:
        raise NotImplementedError

    # -- the loop
    def forward(self, images: Tensor, labels=None, *, target: Tensor | None = None, seeds: list[int] | None = None) -> Tensor:
        """Adversarial images (the best iterate of each) for ``images`` in [0, 1].

        ``target``: images whose posteriors the ``supervised`` objective pulls towards.
        ``labels`` is accepted for torchattacks' call style and ignored (the attack is unsupervised).
        """
        images = images.detach().to(self.device)
        if images.min() < 0 or images.max() > 1:
            raise ValueError("images must lie in [0, 1]")
        if self.objective.spec.needs_target != (target is not None):
            raise ValueError("a targeted objective (supervised) needs target images, and only it takes them")
        ref = self.objective.reference((target if target is not None else images).to(self.device))
        n = images.shape[0]
        if self.random_start:
            delta = random_start(images, self.eps, self.norm, seeds)
        else:
            delta = torch.zeros_like(images)
        best_loss = torch.full((n,), -math.inf, device=images.device, dtype=torch.float64)
        best_delta = delta.detach()  # replaced, never written in place
        nonfinite = torch.zeros(n, dtype=torch.bool, device=images.device)
        state = self._init_state(n, images.device)
        history = []
        for step in range(self.steps + 1):
            last = step == self.steps  # the last iterate is scored, not moved
            with torch.set_grad_enabled(not last):
                delta.requires_grad_(not last)
                loss = self.objective(images + delta, ref)
            finite = torch.isfinite(loss)
            grad = None
            if not last:  # non-finite losses drop out through where(), not boolean indexing: no host sync per step
                grad = torch.autograd.grad(torch.where(finite, loss, 0).sum(), delta, allow_unused=True)[0]
            if grad is None:
                grad = torch.zeros_like(delta)
            delta = delta.detach()
            loss = loss.detach()
            gfinite = torch.isfinite(grad.flatten(1)).all(1)
            nonfinite |= ~finite | ~gfinite
            grad = torch.where(gfinite.view(-1, *([1] * (grad.dim() - 1))), grad, torch.zeros_like(grad))
            score = torch.where(finite, loss.double(), torch.full_like(best_loss, -math.inf))
            better = score > best_loss
            best_loss = torch.where(better, score, best_loss)
            best_delta = torch.where(better.view(-1, *([1] * (delta.dim() - 1))), delta, best_delta)
            history.append(loss)
            if last:
                break
            delta = project(self._ascend(delta, grad, loss, step, state), images, self.eps, self.norm)
        self.best_loss = best_loss
        self.nonfinite = nonfinite
        self.loss_history = torch.stack(history)
        self.best_delta = best_delta
        self.last_delta = delta.detach()  # the last iterate (what the DCT-VAE authors' rule scores)
        return (images + best_delta).detach()
