"""How an attack sweep evaluates a defence (the attack engine calls these; nothing here runs a sweep).

* the **reference** is the undefended model's clean reconstruction, the model's real output;
* every other pass (attacked, no-attack, floor, noise, unrelated) goes through the defended
  reconstruction, with the protocol's prior noise and, per image, one chain seed drawn from
  the same per-point seed (so the clean and the attacked pass of the default rule share
  their chain draw as they share their prior noise);
* the **no-attack** row is then MS-SSIM(defended clean, undefended clean): the defence's own
  fidelity cost, and the paired drop (no-attack minus attacked) is the attack's share;
* **non-adaptive**: the attack runs on the undefended model (the very attack of an
  undefended run with the same seeds); **adaptive**: it runs on the defended model's
  :meth:`~robustvae.defences.base.Defence.attack_view`, differentiating through the chain,
  averaged over ``eot`` fixed chain draws per row, seeded apart from the scored draw (the
  attacker knows the defence, not the defender's random numbers), and it builds on the
  non-adaptive attack (the same attack on the undefended model, whose passes it pays for): a
  gradient attack starts from its perturbation, and each row keeps the better of the two by
  the attacker's own estimate of the score, so it refines what transfers instead of starting over.

Curves of a defended sweep are named ``<model>+<defence>`` (non-adaptive) and
``<model>+<defence>/adaptive``, so every report shows them beside the undefended curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from robustvae.defences.base import Defence
from robustvae.seeding import derive_seed


@dataclass(frozen=True)
class DefenceRun:
    """A sweep's defence and whether its attack adapts to it."""

    defence: Defence
    adaptive: bool = False

    def label(self, model_label: str) -> str:
        """The curve's name: the model's label with the defence's suffix."""
        return model_label + self.defence.label(self.adaptive)

    def scorer(self, model: nn.Module, temperature: float) -> nn.Module:
        """The defended model whose reconstruction scores every pass but the clean reference."""
        return self.defence.wrap(model, temperature)

    def attack_model(
        self, model: nn.Module, temperature: float, noise: list[Tensor], rows: list[tuple[int, int]], k: int, seed: int
    ) -> nn.Module:
        """What the attack differentiates: the model itself (non-adaptive) or the defended model averaged over fixed
        chain draws, one seed per (point, restart) row and draw (adaptive); ``noise``: the rows' model noise."""
        if not self.adaptive:
            return model
        draws = int(self.defence.settings().get("eot", 1))
        seeds = [[derive_seed(seed, "eot", k, p, r, d) for p, r in rows] for d in range(draws)]
        return self.defence.attack_view(model, temperature, noise=noise, eot_seeds=seeds)

    def attack_cost(self, attack, attacked: nn.Module, seconds: float, rows: int) -> dict[str, float]:
        """Per row (one restart of one point): the attack's wall seconds and model forward passes (each with its
        backward where the attack took a gradient): through the defence's chains when adaptive, else one pass per
        evaluation of the objective plus the clean reference."""
        passes = attacked.forward_passes if self.adaptive else attack.passes["forward"] + 1
        return {"seconds": seconds / max(rows, 1), "passes": float(passes)}

    def record_fields(self) -> dict[str, Any]:
        """What every row of the sweep carries about the defence."""
        return {"defence": self.defence.name, "adaptive": self.adaptive, "defence_settings": self.defence.settings()}

    def info(self, models: list[tuple[str, nn.Module]], ks: dict[str, list[int]]) -> dict[str, Any]:
        """run.json's record: the defence, its settings, what it wraps, and its passes per image per model and k."""
        return {
            **self.record_fields(),
            "adaptive_start": "transfer" if self.adaptive else None,
            "stochastic": self.defence.stochastic,
            "wraps": self.defence.wraps,
            "passes_per_image": {
                f"{label}|k={k}": self.defence.passes_per_image(m, k) for label, m in models for k in ks[label]
            },
        }
