"""Shared machinery of the latent attacks: threat models, random starts, the optimisation loop.

Every attack is a ``torchattacks.Attack`` (device handling, eval mode during the
attack, the familiar ``attack(images)`` call). Its classifier-only helpers (``save``,
``MultiAttack``, targeted label modes) do not apply to latent attacks and are not used.

Each image in a batch is optimised independently: its own random start (from its own
seed when ``seeds`` are given), its own step sizes, and its own best iterate, so a
batch of points x restarts gives the same results as running them one by one.

A reconstruction objective (``recon``) also needs the protocol's prior noise, one row
per image: ``attack(images, seeds=..., noise=model.make_noise(...))``; its temperature
is a constructor argument. After a call, every attack describes its run with
``best_loss``, ``best_delta``, ``nonfinite``, ``loss_history`` (evaluations x images),
``progress`` (the best-so-far objective after each evaluation, evaluations x images:
damage against iterations without running again) and ``passes`` (forward and backward
passes through the model, each over the whole batch). Two records of the run serve as
evidence of its strength: ``snapshots`` maps each step of ``curve_steps`` (an attribute,
empty by default; set it before the call) that is <= ``steps`` to the best iterate after
that many steps, so the scored damage against iterations is measured once, not re-run;
``start_grad_norm`` is each image's gradient norm at its start (None for a gradient-free
attack), where a vanishing gradient shows gradient masking.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torchattacks.attack import Attack
from torch import Tensor

from robustvae.attacks.objectives import LatentObjective
from robustvae.protocol import NORMS

CURVE_STEPS = (10, 25, 50, 100, 200)  # checkpoints of damage against iterations (those <= steps are kept)


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


def ascent_direction(grad: Tensor, norm: str) -> Tensor:
    """The steepest-ascent direction of unit size in the norm: sign (L-inf) or the L2-normalised gradient."""
    return grad.sign() if norm == "linf" else grad / _flat_norm(grad, 2).clamp_min(1e-12)


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

    Gradient attacks implement ``_init_state`` and ``_ascend`` (one update of delta from
    its gradient) and inherit the loop; an attack with a loop of its own (gradient-free)
    overrides ``_optimise``. After a call, ``best_loss`` (per image), ``nonfinite`` (per
    image: a non-finite loss or gradient was met), ``loss_history`` and ``progress``
    (evaluations x images), ``best_delta``, ``last_delta`` (the last iterate, which the
    DCT-VAE authors' rule scores; the best one for a search that only keeps improvements)
    and ``passes`` describe the run. ``temperature`` and ``per_unit`` go to the objective
    (:class:`LatentObjective`). ``takes_start``: the attack starts from ``start`` when one is set (False for one
    that makes its own start).
    """

    takes_start: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        model,
        k: int,
        eps: float,
        norm: str,
        steps: int,
        objective: str = "skl",
        straight_through: bool = False,
        random_start: bool = True,
        *,
        temperature: float = 0.1,
        per_unit: bool = False,
    ):
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
        self.start: Tensor | None = None  # a given start per image (a delta), used instead of the random one
        self.curve_steps: tuple[int, ...] = ()
        self.objective = LatentObjective(
            model, k, objective, straight_through, temperature=temperature, per_unit=per_unit
        )
        self.supported_mode = ["default"]

    def __call__(
        self,
        images: Tensor,
        labels=None,
        *,
        target: Tensor | None = None,
        seeds: list[int] | None = None,
        noise: list[Tensor] | None = None,
    ) -> Tensor:
        """Run :meth:`forward` with the model in eval mode (restored afterwards).

        Overrides ``torchattacks.Attack.__call__``, whose signature and normalisation
        handling changed across releases: latent attacks need neither labels nor
        normalisation, and this keeps them independent of the installed release.
        """
        was_training = self.model.training
        self.model.eval()
        try:
            return self.forward(images, labels, target=target, seeds=seeds, noise=noise)
        finally:
            self.model.train(was_training)

    # -- subclass hooks
    def _init_state(self, images: Tensor) -> dict:
        """Per-image state of the update rule for the clean ``images`` (the loop adds ``best_loss``,
        ``best_delta`` and ``better``, the images whose best improved, before every ``_ascend``)."""
        return {}

    def _ascend(self, delta: Tensor, grad: Tensor, loss: Tensor, step: int, state: dict) -> Tensor:
        raise NotImplementedError

    # -- the loop
    def forward(
        self,
        images: Tensor,
        labels=None,
        *,
        target: Tensor | None = None,
        seeds: list[int] | None = None,
        noise: list[Tensor] | None = None,
    ) -> Tensor:
        """Adversarial images (the best iterate of each) for ``images`` in [0, 1].

        ``target``: one image per image, whose posteriors (or reconstruction) a targeted objective pulls towards.
        ``noise``: the prior noise of a reconstruction objective (``model.make_noise``, one
        row per image; the same noise scores the clean reconstruction); other objectives ignore it.
        ``labels`` is accepted for torchattacks' call style and ignored (the attack is unsupervised).
        """
        images = images.detach().to(self.device)
        if images.min() < 0 or images.max() > 1:
            raise ValueError("images must lie in [0, 1]")
        spec = self.objective.spec
        if spec.needs_target != (target is not None):
            raise ValueError(
                "a targeted objective (target, target_recon, supervised) needs target images, and only it takes them"
            )
        if target is not None and target.shape != images.shape:
            raise ValueError(f"need one target per image: targets {tuple(target.shape)}, images {tuple(images.shape)}")
        if spec.needs_noise and noise is None:
            raise ValueError(
                f"the {spec.name} objective needs the protocol's prior noise (noise=model.make_noise(...), "
                "one row per image), the same that scores the clean reconstruction"
            )
        if spec.needs_noise and any(t.shape[0] != images.shape[0] for t in noise):
            raise ValueError(
                f"need one row of noise per image: {[t.shape[0] for t in noise]} rows for {images.shape[0]} images"
            )
        ref = self.objective.reference(
            (target if target is not None else images).to(self.device), noise if spec.needs_noise else None
        )
        self.passes = {"forward": 0, "backward": 0}
        self._last_delta = None
        self.snapshots: dict[int, Tensor] = {}
        self.start_grad_norm: Tensor | None = None
        best_loss, best_delta, nonfinite, history = self._optimise(images, ref, seeds)
        self.last_delta = best_delta if self._last_delta is None else self._last_delta
        self.best_loss = best_loss
        self.nonfinite = nonfinite
        self.loss_history = history
        self.progress = _best_so_far(history)
        self.best_delta = best_delta
        return (images + best_delta).detach()

    def _snapshot(self, step: int, best_delta: Tensor) -> None:
        """Keep the best iterate after ``step`` steps when ``step`` is one of ``curve_steps``."""
        if step in self.curve_steps:
            self.snapshots[step] = best_delta.detach()

    def _evaluate(self, images: Tensor, delta: Tensor, ref, grad: bool) -> Tensor:
        """The objective at ``images + delta`` (with the graph to delta when ``grad``); counts the pass."""
        self.passes["forward"] += 1
        with torch.set_grad_enabled(grad):
            delta.requires_grad_(grad)
            return self.objective(images + delta, ref)

    def _optimise(self, images: Tensor, ref, seeds: list[int] | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The gradient loop: (best_loss, best_delta, nonfinite, loss_history) of a run from the random start."""
        n = images.shape[0]
        if self.start is not None:
            delta = project(self.start.detach().to(images), images, self.eps, self.norm)
        elif self.random_start:
            delta = random_start(images, self.eps, self.norm, seeds)
        else:
            delta = torch.zeros_like(images)
        best_loss = torch.full((n,), -math.inf, device=images.device, dtype=torch.float64)
        best_delta = delta.detach()  # replaced, never written in place
        nonfinite = torch.zeros(n, dtype=torch.bool, device=images.device)
        state = self._init_state(images)
        history = []
        for step in range(self.steps + 1):
            last = step == self.steps  # the last iterate is scored, not moved
            loss = self._evaluate(images, delta, ref, not last)
            finite = torch.isfinite(loss)
            grad = None
            if not last:  # non-finite losses drop out through where(), not boolean indexing: no host sync per step
                grad = torch.autograd.grad(torch.where(finite, loss, 0).sum(), delta, allow_unused=True)[0]
                self.passes["backward"] += 1
            if grad is None:
                grad = torch.zeros_like(delta)
            delta = delta.detach()
            loss = loss.detach()
            gfinite = torch.isfinite(grad.flatten(1)).all(1)
            nonfinite |= ~finite | ~gfinite
            grad = torch.where(gfinite.view(-1, *([1] * (grad.dim() - 1))), grad, torch.zeros_like(grad))
            if step == 0 and not last:
                self.start_grad_norm = grad.flatten(1).double().norm(dim=1)
            best_loss, best_delta, better = _keep_best(loss, delta, best_loss, best_delta)
            self._snapshot(step, best_delta)
            history.append(loss)
            if last:
                break
            state.update(best_loss=best_loss, best_delta=best_delta, better=better)
            delta = project(self._ascend(delta, grad, loss, step, state), images, self.eps, self.norm)
        self._last_delta = delta.detach()  # the last iterate (what the DCT-VAE authors' rule scores)
        return best_loss, best_delta, nonfinite, torch.stack(history)


def _score(loss: Tensor) -> Tensor:
    """The loss in float64 with non-finite values at -inf (they never count as progress)."""
    return torch.where(torch.isfinite(loss), loss.double(), torch.full_like(loss, -math.inf, dtype=torch.float64))


def _keep_best(loss: Tensor, delta: Tensor, best_loss: Tensor, best_delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(best_loss, best_delta, better) after scoring ``delta``: per image, kept where ``loss`` beats the best."""
    score = _score(loss)
    better = score > best_loss
    best_loss = torch.where(better, score, best_loss)
    best_delta = torch.where(better.view(-1, *([1] * (delta.dim() - 1))), delta, best_delta)
    return best_loss, best_delta, better


def _best_so_far(history: Tensor) -> Tensor:
    """(evaluations, images) running maximum of the finite losses (float64; -inf before the first finite one)."""
    return torch.cummax(_score(history), 0).values
