"""Latent-space attacks on hierarchical VAEs: the attack library (one attack per file), objectives, registries.

* :class:`LatentPGD` (L-inf) and :class:`LatentPGDL2` (L2): PGD with random start;
* :class:`LatentSGD`: the DCT-VAE authors' SGD with a plateau schedule;
* :class:`LatentAPGD`: APGD (Croce & Hein, 2020), step size adapted per image, L-inf or L2;
* :class:`LatentSquare`: Square Attack (Andriushchenko et al., 2020), gradient-free, L-inf or L2;
* :data:`ATTACKS` / :func:`make_attack`, :data:`ENSEMBLES` (``auto``) and :data:`OBJECTIVES`: the registries.

All are ``torchattacks.Attack`` subclasses: ``attack(images)`` returns adversarial
images in [0, 1]. torchattacks' classifier helpers (``save``, ``MultiAttack``,
targeted label modes) do not apply to latent attacks and are not used. Sweeps of
attacks over models, k, points and restarts are an experiment:
:func:`robustvae.attack` (:mod:`robustvae.experiments.attack`). This package imports
neither the data loaders, checkpoint I/O, pandas nor robustvae's distributed helpers.
"""

from robustvae.attacks.apgd import LatentAPGD
from robustvae.attacks.base import LatentAttack, project, random_start
from robustvae.attacks.objectives import OBJECTIVES, LatentObjective, ObjectiveSpec
from robustvae.attacks.pgd import LatentPGD
from robustvae.attacks.pgdl2 import LatentPGDL2
from robustvae.attacks.registry import ATTACKS, ENSEMBLES, AttackSpec, ensemble_plan, ensemble_version, make_attack
from robustvae.attacks.sgd import LatentSGD
from robustvae.attacks.square import LatentSquare

__all__ = [
    "ATTACKS",
    "AttackSpec",
    "ENSEMBLES",
    "ensemble_plan",
    "ensemble_version",
    "LatentAPGD",
    "LatentAttack",
    "LatentPGD",
    "LatentPGDL2",
    "LatentSGD",
    "LatentSquare",
    "LatentObjective",
    "OBJECTIVES",
    "ObjectiveSpec",
    "make_attack",
    "project",
    "random_start",
]
