"""The registry of defences: the one place that lists them and builds one from its name and settings.

``DEFENCES`` maps the name used on the command line and in records (``--defence hmc``) to a
:class:`DefenceSpec`; :func:`make_defence` builds it. Adding a defence: a
:class:`~robustvae.defences.base.Defence` subclass in a file of its own, one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robustvae.config import from_dict
from robustvae.defences.base import Defence
from robustvae.defences.hmc import HMCConfig, HMCDefence
from robustvae.errors import RobustVAEError


@dataclass(frozen=True)
class DefenceSpec:
    """A registered defence: its settings' dataclass, how to build it, what it is."""

    name: str
    config: type
    build: Callable[[Any], Defence]
    description: str


DEFENCES: dict[str, DefenceSpec] = {
    spec.name: spec
    for spec in (
        DefenceSpec(
            "hmc",
            HMCConfig,
            HMCDefence,
            "HMC on the top-k Gaussian latents towards p(z | x) (Kuzina, Welling & Tomczak, NeurIPS 2022)",
        ),
    )
}


def make_defence(name: str, settings: dict[str, Any] | None = None) -> Defence:
    """The defence ``name`` with ``settings`` (keys of its config dataclass; unknown keys are refused)."""
    try:
        spec = DEFENCES[name]
    except KeyError:
        raise RobustVAEError(f"unknown defence {name!r} (known: {', '.join(DEFENCES)}; none: no defence)") from None
    return spec.build(from_dict(spec.config, dict(settings or {}), prefix=f"{name}."))


def defence_from_options(
    name: str | None,
    *,
    adaptive: bool = False,
    eot: int | None = None,
    hmc_steps: int | None = None,
    hmc_leapfrog: int | None = None,
    hmc_step_size: str | float | None = None,
) -> Defence | None:
    """The defence the command line asks for (``--defence``, ``--adaptive``, ``--eot``, ``--hmc-*``), or None.

    ``eot`` is the number of fixed draws of randomness an attack averages over; with a defence
    it is the adaptive attack's chain draws (default :attr:`HMCConfig.eot`; at least one, and
    only with ``adaptive``), never the kuzina-ladder context dither (the hmc defence does not
    take kuzina-ladder models). Settings of a defence that is not asked for are refused.
    """
    from robustvae.defences.hmc import parse_step_size

    given = {"--hmc-steps": hmc_steps, "--hmc-leapfrog": hmc_leapfrog, "--hmc-step-size": hmc_step_size}
    if name is None or str(name).lower() == "none":
        stray = [flag for flag, value in given.items() if value is not None]
        if stray or adaptive:
            raise RobustVAEError(f"{(stray or ['--adaptive'])[0]} applies to a defence: add --defence hmc")
        return None
    if name != "hmc":
        make_defence(name)  # unknown: the registry's message
    if not adaptive and eot:
        raise RobustVAEError(
            "with a defence, --eot N is the adaptive attack's chain draws: add --adaptive (without "
            "--defence, --eot turns on the kuzina-ladder context dither)"
        )
    if adaptive and eot is not None and eot < 1:
        raise RobustVAEError(
            f"an adaptive attack on the hmc defence averages over --eot N >= 1 chain draws, got {eot}"
            f" (--eot 0 only turns the kuzina-ladder context dither off)"
        )
    settings: dict[str, object] = {"step_size": parse_step_size(hmc_step_size)}
    settings.update({k: v for k, v in (("steps", hmc_steps), ("leapfrog", hmc_leapfrog)) if v is not None})
    if eot is not None and eot >= 1:
        settings["eot"] = eot
    return make_defence(name, settings)
