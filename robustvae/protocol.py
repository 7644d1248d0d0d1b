"""The reconstruction rules of the attack protocol: how "the reconstruction with k layers" is formed.

* ``default`` (robustvae's): the top k layers at their posterior means, the layers
  below drawn from the prior at ``temperature`` (scaling the standard deviation), with
  the **same** prior noise for the clean and the attacked image, so only the attack
  makes the two differ; the attack's best iterate is scored. Its no-attack level is
  exactly 1 (the same image under the same noise).
* ``authors`` (the DCT-VAE authors' attack code): the top k layers drawn as posterior
  **samples**, the layers below from the prior at ``temperature`` scaling the
  **variance** (std x sqrt(T): 0.1 gives std x 0.316), with **independent** noise for
  the clean and the attacked pass, and the attack's **last** iterate; they averaged
  over restarts. Its no-attack level is below 1 (two independent draws of the same
  image) and must be read beside every attacked score.

Both decode the likelihood's mean image. Temperature 0.1 comes from the paper's
Appendix G (compression).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NORMS = (
    "linf",
    "l2",
)  # the threat models: perturbation norms of attacks, certification and settings (defined here only)
CONVENTIONS = ("std", "var")


@dataclass(frozen=True)
class ReconRule:
    """How a rule forms the reconstruction with k layers and which iterate of the attack it scores."""

    name: str
    posterior_sample: bool  # top k layers: posterior samples (True) or means (False)
    shared_noise: bool  # the clean and the attacked pass share their noise
    iterate: str  # "best" or "last" iterate of the attack is scored
    convention: str  # default temperature convention: "std" or "var"


RECON_RULES: dict[str, ReconRule] = {
    rule.name: rule
    for rule in (
        ReconRule("default", posterior_sample=False, shared_noise=True, iterate="best", convention="std"),
        ReconRule("authors", posterior_sample=True, shared_noise=False, iterate="last", convention="var"),
    )
}


def std_temperature(temperature: float, convention: str) -> float:
    """The factor on the prior's standard deviation: ``temperature`` itself (std) or its square root (var)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown temperature convention {convention!r} (known: {', '.join(CONVENTIONS)})")
    return temperature if convention == "std" else math.sqrt(temperature)
