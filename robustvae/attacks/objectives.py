"""Attack objectives: how far the attacked posteriors (or the reconstruction) of the top k layers move.

An objective is maximised. Three families, all in :data:`OBJECTIVES` (the one place
that lists them):

* **latent** (``skl``, ``kl_forward``, ``kl_reverse``, ``means``): the
  sum over the attacked layers of the comparison each layer's posterior defines
  (:meth:`DiagGaussian.compare` / :meth:`PointMass.compare`): a divergence between
  q(z_l | x + d, ...) and q(z_l | x, ...) summed over the layer's units for Gaussian
  layers, and the squared L2 distance of the coefficients before quantisation (or,
  ``straight_through``, of the quantised values with the coefficients' gradient) for a
  deterministic context layer. ``skl`` (the symmetric KL) is the default.
* **targeted** (``target``, ``target_recon``, ``target_recon_l2``; ``supervised``, the earlier form): the
  reference is another image t (a target) and the objective is minus a distance to it.
  ``target`` pulls the top k posteriors of x + d towards t's: minus the symmetric KL of
  each Gaussian layer, and for a context layer minus the squared distance of the
  coefficients before quantisation to t's *quantised levels* (the values the context
  must take to decode as t's; :func:`target_levels_distance`). ``target_recon`` pulls
  the protocol's reconstruction of x + d towards t's, under the same prior noise:
  minus (1 - MS-SSIM); ``target_recon_l2``: minus the squared L2 distance (MS-SSIM is
  clipped at 0, where its gradient vanishes: far from the target only L2 points to it).
  ``supervised`` is kept so that runs made with it reproduce: minus
  the symmetric KL to t's posteriors, the context compared coefficient to coefficient,
  and t the next attacked point (possibly of the same label). ``target_choice`` says how
  a sweep picks t (:mod:`robustvae.experiments.attack`).
* **context boundary** (``boundary``): a quantised context layer scores, per
  coefficient, its margin past the nearer edge of the clean coefficient's quantiser
  cell, in cells (negative inside the cell), capped at ``boundary_cap`` past the edge,
  summed (:func:`boundary_margin`). Capping stops one coefficient from soaking up the
  budget once its level has changed, so the attack spreads over many coefficients:
  the squared-L2 surrogate instead moves a few coefficients far. With
  ``straight_through`` the value is the number of coefficients whose level changed
  (what is measured) and the gradient is the margin's. Gaussian layers use ``skl``.
* **reconstruction** (``recon``, ``recon_l2``): attack what is scored. The damage
  between the reconstruction of x + d and that of x under the protocol's rule,
  ``model.reconstruct(., k, temperature, noise)`` (posterior means of the top k layers,
  the prior at ``temperature`` below, the same prior ``noise`` for both), measured as
  1 - MS-SSIM (:func:`robustvae.metrics.ms_ssim`, kuzina variant) or as the squared L2
  distance of the decoder means. Quantisers pass their gradient straight through
  during the attacked reconstruction (the value is the quantised one; see
  :func:`straight_through_quantisers`), otherwise a context layer would give no gradient.

How an objective gets the protocol's noise and temperature: ``temperature`` is a
constructor argument of :class:`LatentObjective` (and of every attack, passed on);
the per-image noise is given at call time, ``attack(images, seeds=..., noise=...)``,
and travels inside the reference (:meth:`LatentObjective.reference`), one row per
image, so a batch gives the results of its images one at a time.

``per_unit=True`` divides each layer's comparison by its number of units
(:attr:`LayerInfo.dims`) so that layers of different widths are commensurate when summed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from robustvae.metrics import ms_ssim

BOUNDARY_CAP = 0.1  # cells past the quantiser edge beyond which a coefficient earns nothing more
# How a sweep picks the target of a targeted objective: "other-label", a test image of another label drawn per point
# from the seed; "next-point", the next attacked point (the earlier ``supervised`` rule, kept so its runs reproduce).
TARGET_CHOICES = ("other-label", "next-point")


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: what it compares per layer (or which reconstruction damage), and in which direction."""

    name: str
    divergence: str  # passed to each Gaussian (and, unless ``context`` says otherwise, context) posterior's ``compare``
    description: str
    sign: float = 1.0  # -1: minimise the divergence (towards a target)
    needs_target: bool = False
    context: str | None = None  # "boundary": context layers score their quantiser margin instead of ``compare``;
    # "levels": their coefficients' squared distance to the reference's quantised levels
    reconstruction: str | None = None  # "msssim" / "l2": the damage to the protocol's reconstruction instead
    target_choice: str | None = None  # targeted objectives: how a sweep picks each point's target (TARGET_CHOICES)

    @property
    def needs_noise(self) -> bool:
        """Whether the objective runs the protocol's reconstruction, and so needs its prior noise."""
        return self.reconstruction is not None


OBJECTIVES: dict[str, ObjectiveSpec] = {
    spec.name: spec
    for spec in (
        ObjectiveSpec("skl", "skl", "symmetric KL between attacked and clean posteriors (default)"),
        ObjectiveSpec("kl_forward", "kl_forward", "KL(clean || attacked)"),
        ObjectiveSpec("kl_reverse", "kl_reverse", "KL(attacked || clean)"),
        ObjectiveSpec("means", "means", "squared L2 distance between posterior means"),
        ObjectiveSpec(
            "supervised",
            "skl",
            "earlier targeted form: pull the posteriors towards the next attacked "
            "point's (minus the symmetric KL; context: coefficient to coefficient)",
            sign=-1.0,
            needs_target=True,
            target_choice="next-point",
        ),
        ObjectiveSpec(
            "target",
            "skl",
            "targeted: pull the top-k posteriors towards another-label target's (minus the "
            "symmetric KL; context: minus the distance to the target's levels)",
            sign=-1.0,
            needs_target=True,
            context="levels",
            target_choice="other-label",
        ),
        ObjectiveSpec(
            "target_recon",
            "skl",
            "targeted: pull the reconstruction towards the target's under the same prior noise (minus (1 - MS-SSIM))",
            sign=-1.0,
            needs_target=True,
            reconstruction="msssim",
            target_choice="other-label",
        ),
        ObjectiveSpec(
            "target_recon_l2",
            "skl",
            "targeted: pull the reconstruction towards the target's under the same "
            "prior noise (minus the squared L2 distance)",
            sign=-1.0,
            needs_target=True,
            reconstruction="l2",
            target_choice="other-label",
        ),
        ObjectiveSpec(
            "boundary",
            "skl",
            "context layers: margin past the nearer quantiser edge, capped (Gaussian: skl)",
            context="boundary",
        ),
        ObjectiveSpec(
            "recon",
            "skl",
            "1 - MS-SSIM between attacked and clean reconstructions (the protocol's rule)",
            reconstruction="msssim",
        ),
        ObjectiveSpec(
            "recon_l2", "skl", "squared L2 distance between attacked and clean reconstructions", reconstruction="l2"
        ),
    )
}


def get_objective(name: str) -> ObjectiveSpec:
    """The registered objective ``name``; a ValueError listing the known ones otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r} (known: {', '.join(OBJECTIVES)})") from None


def target_levels_distance(q, reference, straight_through: bool = False) -> Tensor:
    """Per-image squared distance of a context layer's coefficients before quantisation (``q.pre_quant``; with
    ``straight_through`` its quantised values with their gradient) to the reference's quantised levels
    (``reference.mean``): 0 exactly when every coefficient sits on the target's level, and the context then
    decodes as the target's."""
    return (q.value(straight_through) - reference.mean).pow(2).flatten(1).sum(1)


def boundary_margin(q, reference, levels: int, cap: float = BOUNDARY_CAP, straight_through: bool = False) -> Tensor:
    """Per-image quantiser-boundary objective of a context layer's posterior ``q`` against the clean ``reference``.

    Per coefficient u (``q.pre_quant``) whose clean value sits in the cell of level v
    (``reference.mean``; the cell is [v - 1/n, v + 1/n], n = levels - 1, the extreme
    cells open towards +-infinity): the margin max(u - upper edge, lower edge - u) in
    cells (width 2/n), negative inside the clean cell and positive past either edge,
    capped at ``cap``; summed over the coefficients. With ``straight_through`` the value
    is the number of coefficients whose level changed and the gradient the margin's.
    """
    n = levels - 1
    half, width = 1.0 / n, 2.0 / n
    v, u = reference.mean, q.pre_quant
    inf = torch.full_like(v, float("inf"))
    upper = torch.where(v >= 1, inf, v + half)
    lower = torch.where(v <= -1, -inf, v - half)
    margin = (torch.maximum(u - upper, lower - u) / width).clamp(max=cap)
    if straight_through:
        changed = (q.mean != reference.mean).to(margin.dtype)
        margin = margin + (changed - margin).detach()
    return margin.flatten(1).sum(1)


@contextmanager
def straight_through_quantisers(model) -> Iterator[None]:
    """Quantisers inside ``model`` pass their gradient straight through while the block runs.

    Acts on every submodule with a boolean ``straight_through`` attribute (DCT-VAE's
    :class:`~robustvae.models.context.ContextCodec`); its quantised values are unchanged
    (to rounding), only their gradient is the identity instead of 0. Restored afterwards.
    """
    modules = [
        m for m in getattr(model, "modules", lambda: [])() if isinstance(getattr(m, "straight_through", None), bool)
    ]
    before = [m.straight_through for m in modules]
    for m in modules:
        m.straight_through = True
    try:
        yield
    finally:
        for m, b in zip(modules, before):
            m.straight_through = b


@dataclass
class ReconReference:
    """The clean side of a reconstruction objective: the clean reconstruction and the prior noise behind it."""

    clean: Tensor
    noise: list[Tensor]


class LatentObjective:
    """Objective over the top ``k`` layers of ``model``; ``__call__`` returns a (B,) tensor to maximise.

    ``temperature``: the prior temperature below k of a reconstruction objective.
    ``per_unit``: divide each layer's comparison by its units. ``boundary_cap``: the cap
    of the ``boundary`` objective, in quantiser cells.
    """

    def __init__(
        self,
        model,
        k: int,
        kind: str = "skl",
        straight_through: bool = False,
        *,
        temperature: float = 0.1,
        per_unit: bool = False,
        boundary_cap: float = BOUNDARY_CAP,
    ):
        self.spec = get_objective(kind)
        self.model, self.k, self.kind, self.straight_through = model, k, kind, straight_through
        self.temperature, self.per_unit, self.boundary_cap = temperature, per_unit, boundary_cap

    def reference(self, images: Tensor, noise: list[Tensor] | None = None) -> list | ReconReference:
        """The clean side, detached: posteriors of the clean (or, targeted, the target) images, or for a
        reconstruction objective the clean reconstruction under ``noise`` (one row per image; fresh
        noise from ``model.make_noise`` when None, which is outside the protocol: attacks insist on it)."""
        with torch.no_grad():
            if self.spec.needs_noise:
                if noise is None:
                    noise = self.model.make_noise(images.shape[0])
                noise = [t.to(images.device) for t in noise]
                return ReconReference(self.model.reconstruct(images, self.k, self.temperature, noise).detach(), noise)
            return [q.detach() for q in self.model.encode(images, self.k)]

    def per_layer(self, images: Tensor, reference: list | ReconReference) -> Tensor:
        """(B, k) comparisons between the posteriors of ``images`` and ``reference`` (per unit if asked);
        (B, 1), the damage, for a reconstruction objective."""
        if self.spec.needs_noise:
            return self._reconstruction_damage(images, reference)[:, None]
        qs = self.model.encode(images, self.k)
        cols = torch.stack([self._compare(i, q, r) for i, (q, r) in enumerate(zip(qs, reference))], 1)
        if self.per_unit:
            cols = cols / torch.tensor(
                [info.dims for info in self.model.layers[: self.k]], dtype=cols.dtype, device=cols.device
            )
        return cols

    def _compare(self, i: int, q, r) -> Tensor:
        info = self.model.layers[i] if self.spec.context else None
        if info is not None and info.deterministic and self.spec.context == "boundary":
            return boundary_margin(q, r, info.levels, self.boundary_cap, self.straight_through)
        if info is not None and info.deterministic and self.spec.context == "levels":
            return target_levels_distance(q, r, self.straight_through)
        return q.compare(r, self.spec.divergence, self.straight_through)

    def _reconstruction_damage(self, images: Tensor, reference: ReconReference) -> Tensor:
        with straight_through_quantisers(self.model):
            rec = self.model.reconstruct(images, self.k, self.temperature, reference.noise)
        if self.spec.reconstruction == "msssim":
            return 1 - ms_ssim(rec, reference.clean)
        return (rec - reference.clean).pow(2).flatten(1).sum(1)

    def __call__(self, images: Tensor, reference: list | ReconReference) -> Tensor:
        return self.spec.sign * self.per_layer(images, reference).sum(1)

    @torch.no_grad()
    def levels_changed(self, images: Tensor, adversarial: Tensor) -> Tensor:
        """(B,) number of context-layer units among the top k whose quantised level differs between the two."""
        count = torch.zeros(images.shape[0], device=images.device)
        for info, q, r in zip(
            self.model.layers, self.model.encode(adversarial, self.k), self.model.encode(images, self.k)
        ):
            if info.deterministic:
                count += (q.mean != r.mean).flatten(1).sum(1)
        return count
