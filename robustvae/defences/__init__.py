"""Test-time defences and how they are attacked: the interface, the HMC defence, the registry.

* :class:`Defence`: what a defence wraps, its cost per image, whether it is stochastic, and
  the defended model (a model-contract wrapper) it makes of a model;
* :class:`HMCDefence` (:mod:`robustvae.defences.hmc`): the MCMC defence of Kuzina, Welling &
  Tomczak (NeurIPS 2022), HMC over the top-k Gaussian latents;
* :func:`run_chain` (:mod:`robustvae.defences.chain`): batched HMC with per-chain step-size
  adaptation and an optional gradient through the chain;
* :data:`DEFENCES` / :func:`make_defence`: the registry.

Evaluating a defence is an attack sweep with ``defence=...`` (:func:`robustvae.attack`;
``robustvae attack --defence hmc [--adaptive]``); docs/defences.md describes the protocol.
"""

from robustvae.defences.base import Defence
from robustvae.defences.chain import ChainNoise, ChainResult, run_chain
from robustvae.defences.hmc import AttackView, DefendedModel, HMCConfig, HMCDefence, parse_step_size
from robustvae.defences.registry import DEFENCES, DefenceSpec, defence_from_options, make_defence

__all__ = [
    "AttackView",
    "ChainNoise",
    "ChainResult",
    "DEFENCES",
    "Defence",
    "DefenceSpec",
    "DefendedModel",
    "HMCConfig",
    "HMCDefence",
    "defence_from_options",
    "make_defence",
    "parse_step_size",
    "run_chain",
]
