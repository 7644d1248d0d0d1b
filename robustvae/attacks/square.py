"""Latent Square Attack (Andriushchenko et al., 2020): random search over squares, no gradients, L-inf or L2.

The gradient-free member of the library: it needs only the objective's value, so it
also attacks objectives whose gradient is zero or misleading (a quantised context
without straight-through, 1 - MS-SSIM clipped at zero). Per image, from its own seeded
generator:

* **L-inf**: start from vertical stripes of +-eps (one sign per channel and column);
  each step sets a random square window of side s to one +-eps value per channel
  (redrawn until the window changes), and keeps the proposal if the objective improves.
* **L2**: start from a grid of pseudo-Gaussian bumps with random signs, scaled onto the
  sphere of radius eps; each step moves the mass of a second random window into a
  first one, adds a pseudo-Gaussian bump of random sign there and rescales onto the
  sphere, and keeps the proposal if the objective improves.

The window side follows the reference schedule: a share p of the image, p = ``p_init``
halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10000 steps (rescaled to
``steps``). Windows may touch the last row and column (the reference code's never do,
which freezes them at their starting values). Every proposal is projected into [0, 1].
``steps`` proposals follow the start: steps + 1 forward passes and no backward pass.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from robustvae.attacks.base import LatentAttack, _keep_best, project

_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of 10000 steps: p halves after each


def square_share(p_init: float, step: int, steps: int) -> float:
    """The share of the image a window covers at ``step`` of ``steps`` (the reference schedule, rescaled)."""
    it = int(step / steps * 10000)
    return p_init / 2 ** sum(it > t for t in _SCHEDULE)


def _rectangle_bump(x: int, y: int) -> Tensor:
    """The reference's pseudo-Gaussian on an x-by-y rectangle: nested boxes weighted 1 / (i + 1)^2, unit L2 norm."""
    delta = torch.zeros(x, y, dtype=torch.float64)
    cx, cy = x // 2, y // 2
    for i in range(max(cx + 1, cy + 1)):
        delta[max(cx - i, 0) : min(cx - i + 2 * i + 1, x), max(cy - i, 0) : min(cy - i + 2 * i + 1, y)] += (
            1.0 / (i + 1) ** 2
        )
    return delta / delta.norm()


@lru_cache(maxsize=None)
def square_bump(s: int) -> Tensor:
    """The reference's s-by-s update of the L2 attack: a bump on the top half, minus one on the bottom, unit norm."""
    delta = torch.zeros(s, s, dtype=torch.float64)
    if s // 2:
        delta[: s // 2] = _rectangle_bump(s // 2, s)
    delta[s // 2 :] = -_rectangle_bump(s - s // 2, s)
    return delta / delta.norm()


def _window_index(t: Tensor, rows: Tensor, cols: Tensor, s: int) -> tuple[Tensor, ...]:
    """Advanced index of each image's s-by-s window at (rows[b], cols[b]): t[index] is (B, C, s, s)."""
    B, C = t.shape[:2]
    ar = torch.arange(s, device=t.device)
    return (
        torch.arange(B, device=t.device).view(B, 1, 1, 1),
        torch.arange(C, device=t.device).view(1, C, 1, 1),
        (rows.to(t.device)[:, None] + ar).view(B, 1, s, 1),
        (cols.to(t.device)[:, None] + ar).view(B, 1, 1, s),
    )


def _window_mask(t: Tensor, rows: Tensor, cols: Tensor, s: int) -> Tensor:
    """(B, 1, H, W): 1 inside each image's window."""
    h, w = t.shape[-2:]
    rows, cols = rows.to(t.device)[:, None], cols.to(t.device)[:, None]
    r = (torch.arange(h, device=t.device) >= rows) & (torch.arange(h, device=t.device) < rows + s)
    c = (torch.arange(w, device=t.device) >= cols) & (torch.arange(w, device=t.device) < cols + s)
    return (r[:, :, None] & c[:, None, :]).unsqueeze(1).to(t.dtype)


def _sq_norm(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    return t.pow(2).sum(dims, keepdim=True)


class LatentSquare(LatentAttack):
    r"""Latent Square Attack: 'Square Attack: a query-efficient black-box adversarial attack via random
    search' (Andriushchenko et al., 2020), on a latent or reconstruction objective.

    Distance measure: Linf or L2; x + delta is kept in [0, 1].

    Arguments:
        model (HierarchicalVAE): the model to attack.
        k (int): attack the top k latent layers. (Default: 1)
        eps (float): budget on [0, 1] pixels. (Default: 0.1)
        norm (str): 'linf' or 'l2'. (Default: 'linf')
        steps (int): number of proposals after the start (forward passes: steps + 1). (Default: 50)
        p_init (float): share of the image the first windows cover. (Default: 0.8)
        objective, straight_through, temperature, per_unit: as for :class:`LatentPGD`.

    Shape: as for :class:`LatentPGD` (images, seeds and, for reconstruction objectives, noise in;
    the best point of each image out). ``seeds`` drive each image's whole search; without them
    each image's seed is drawn from torch's global generator.

    Examples::
        >>> attack = LatentSquare(model, k=1, eps=0.1, norm="linf", steps=1000, objective="recon")
        >>> adv_images = attack(images, seeds=list(range(len(images))), noise=model.make_noise(len(images)))
    """

    takes_start = False  # its own start: stripes (L-inf) or bumps (L2)

    def __init__(
        self,
        model,
        k: int = 1,
        eps: float = 0.1,
        norm: str = "linf",
        steps: int = 50,
        p_init: float = 0.8,
        objective: str = "skl",
        straight_through: bool = False,
        *,
        temperature: float = 0.1,
        per_unit: bool = False,
    ):
        super().__init__(
            "LatentSquare",
            model,
            k,
            eps,
            norm,
            steps,
            objective,
            straight_through,
            False,
            temperature=temperature,
            per_unit=per_unit,
        )
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.p_init = p_init

    def _optimise(self, images: Tensor, ref, seeds: list[int] | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n = images.shape[0]
        if seeds is None:
            seeds = torch.randint(0, 2**62, (n,)).tolist()
        if len(seeds) != n:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for {n} images")
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        delta = (self._start_linf if self.norm == "linf" else self._start_l2)(images, gens)
        best_loss = torch.full((n,), -math.inf, device=images.device, dtype=torch.float64)
        best_delta = delta
        nonfinite = torch.zeros(n, dtype=torch.bool, device=images.device)
        history = []
        for step in range(self.steps + 1):
            if step:
                propose = self._propose_linf if self.norm == "linf" else self._propose_l2
                delta = propose(images, best_delta, square_share(self.p_init, step - 1, self.steps), gens)
            loss = self._evaluate(images, delta, ref, False).detach()
            nonfinite |= ~torch.isfinite(loss)
            best_loss, best_delta, _ = _keep_best(loss, delta, best_loss, best_delta)
            self._snapshot(step, best_delta)
            history.append(loss)
        return best_loss, best_delta, nonfinite, torch.stack(history)

    def _draw(self, gens: list[torch.Generator], fn) -> Tensor:
        """One draw per image from its own generator, stacked (on the CPU)."""
        return torch.stack([fn(g) for g in gens])

    def _signs(self, gens: list[torch.Generator], shape: tuple[int, ...]) -> Tensor:
        return self._draw(gens, lambda g: torch.randint(0, 2, shape, generator=g) * 2.0 - 1.0)

    # -- L-inf
    def _start_linf(self, images: Tensor, gens: list[torch.Generator]) -> Tensor:
        c, _, w = images.shape[1:]
        stripes = self._signs(gens, (c, 1, w)).to(images.device, images.dtype) * self.eps
        return project(stripes.expand_as(images), images, self.eps, "linf")

    def _propose_linf(self, images: Tensor, best: Tensor, share: float, gens: list[torch.Generator]) -> Tensor:
        c, h, w = images.shape[1:]
        s = min(max(int(round(math.sqrt(share * h * w))), 1), h, w)
        rows = self._draw(gens, lambda g: torch.randint(0, h - s + 1, (), generator=g))
        cols = self._draw(gens, lambda g: torch.randint(0, w - s + 1, (), generator=g))
        index = _window_index(images, rows, cols, s)
        x_win, best_win = images[index], (images + best)[index]
        values = torch.zeros(images.shape[0], c, 1, 1, dtype=images.dtype)
        redraw = list(range(len(gens)))
        while redraw:  # per image, until its window changes (each image's draws depend on its own state only)
            for b in redraw:
                values[b] = (torch.randint(0, 2, (c, 1, 1), generator=gens[b]) * 2.0 - 1.0) * self.eps
            v = values.to(images.device)
            same = ((x_win + v).clamp(0, 1) - best_win).abs().lt(1e-7).flatten(1).all(1).tolist()
            redraw = [b for b in redraw if same[b]]
        delta = best.clone()
        delta[index] = v.expand(-1, -1, s, s)
        return project(delta, images, self.eps, "linf")

    # -- L2
    def _bumps(self, gens: list[torch.Generator], s: int, like: Tensor) -> Tensor:
        """(B, 1, s, s) the reference's bump, transposed for the images whose coin says so."""
        flip = self._draw(gens, lambda g: torch.rand((), generator=g) > 0.5).to(like.device)
        bump = square_bump(s).to(like.device, like.dtype)
        return torch.where(flip.view(-1, 1, 1, 1), bump.T, bump)

    def _start_l2(self, images: Tensor, gens: list[torch.Generator]) -> Tensor:
        c, h, w = images.shape[1:]
        s = max(h // 5, 1)
        start = (h - s * 5) // 2 if h >= 5 else 0
        delta = torch.zeros_like(images)
        for i in range(h // s):
            for j in range(w // s):
                r0, c0 = start + i * s, start + j * s
                if r0 + s > h or c0 + s > w:
                    continue
                bump = self._bumps(gens, s, images)
                delta[:, :, r0 : r0 + s, c0 : c0 + s] += bump * self._signs(gens, (c, 1, 1)).to(
                    images.device, images.dtype
                )
        delta = delta / _sq_norm(delta, (1, 2, 3)).sqrt().clamp_min(1e-12) * self.eps
        return project(delta, images, self.eps, "l2")

    def _propose_l2(self, images: Tensor, best: Tensor, share: float, gens: list[torch.Generator]) -> Tensor:
        c, h, w = images.shape[1:]
        s = max(int(round(math.sqrt(share * h * w))), 3)
        s = min(s + 1 if s % 2 == 0 else s, h, w)
        rows, cols, rows2, cols2 = (
            self._draw(gens, lambda g, n=n: torch.randint(0, n - s + 1, (), generator=g)) for n in (h, w, h, w)
        )
        m1, m2 = _window_mask(images, rows, cols, s), _window_mask(images, rows2, cols2, s)
        norm_window = _sq_norm(best * m1, (2, 3)).sqrt()
        norm_image = _sq_norm(best, (1, 2, 3)).sqrt()
        norm_windows = _sq_norm(best * torch.maximum(m1, m2), (2, 3)).sqrt()
        index = _window_index(images, rows, cols, s)
        new = self._bumps(gens, s, images) * self._signs(gens, (c, 1, 1)).to(images.device, images.dtype)
        new = new + best[index] / (1e-10 + norm_window)
        budget = ((self.eps**2 - norm_image**2).clamp_min(0) / c + norm_windows**2).sqrt()
        new = new / _sq_norm(new, (2, 3)).sqrt().clamp_min(1e-12) * budget
        delta = best * (1 - m2)
        delta[index] = new
        delta = delta / _sq_norm(delta, (1, 2, 3)).sqrt().clamp_min(1e-12) * self.eps
        return project(delta, images, self.eps, "l2")
