"""What a defence is: a test-time change of how a model reconstructs, wrapped around the model.

A :class:`Defence` turns a model into a *defended model* that satisfies the model contract
(:mod:`robustvae.models.contract`): its ``reconstruct`` (and ``encode`` for the top k
layers) run the defence, everything else is the model's own. So the attack engine needs
no special case to evaluate it:

* **non-adaptive**: attack the undefended model as usual, then score the clean and the
  attacked input through the defended model's reconstruction;
* **adaptive**: attack the defended model itself (:meth:`Defence.attack_view`: the
  defended model with gradients through the defence and, for a stochastic defence, an
  expectation over fixed draws of its randomness that the scored draw is not one of).

A defence states what it wraps, whether it is stochastic, and what one defended
reconstruction costs per image in model passes (:meth:`Defence.passes_per_image`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import nn


class Defence(ABC):
    """A test-time defence: settings, cost, and the defended model it makes of a model."""

    name: ClassVar[str]
    stochastic: ClassVar[bool]  # its output depends on random draws (fixed per image by the protocol's noise)
    wraps: ClassVar[str]  # what it changes, in words

    @abstractmethod
    def settings(self) -> dict[str, float]:
        """Every setting, as numbers (records and run.json carry them)."""

    @abstractmethod
    def wrap(self, model: nn.Module, temperature: float) -> nn.Module:
        """The defended model: ``model`` with its reconstruction (and top-k encoding) defended; ``temperature``
        is the prior temperature (std convention) of the layers below k, as the reconstruction rule says."""

    @abstractmethod
    def attack_view(
        self, model: nn.Module, temperature: float, noise: list | None = None, eot_seeds: list[list[int]] | None = None
    ) -> nn.Module:
        """What an adaptive attack differentiates: the defended model averaged over fixed draws of its randomness
        (``eot_seeds``: one list of per-row seeds per draw) under the rows' prior ``noise`` (the model's part)."""

    @abstractmethod
    def passes_per_image(self, model: nn.Module, k: int) -> int:
        """Model passes (forward, each with a backward where the defence takes a gradient) of one defended
        reconstruction of one image with the top ``k`` layers from the posterior."""

    def label(self, adaptive: bool) -> str:
        """The suffix that names the defended model in records and reports (``+hmc``, ``+hmc/adaptive``)."""
        return f"+{self.name}" + ("/adaptive" if adaptive else "")
