"""Latent-space attacks on hierarchical VAEs (one attack per file) and the sweep engine.

* :class:`LatentPGD` (L-inf) and :class:`LatentPGDL2` (L2): PGD with random start;
* :class:`LatentSGD`: the DCT-VAE authors' SGD with a plateau schedule;
* :func:`run_attack`: models x k x points x restarts -> a DataFrame of records.

All are ``torchattacks.Attack`` subclasses: ``attack(images)`` returns adversarial
images in [0, 1]. torchattacks' classifier helpers (``save``, ``MultiAttack``,
targeted label modes) do not apply to latent attacks and are not used.
"""

from robustvae.attacks.base import LatentAttack, project, random_start
from robustvae.attacks.engine import make_attack, run_attack
from robustvae.attacks.objectives import OBJECTIVES, LatentObjective
from robustvae.attacks.pgd import LatentPGD
from robustvae.attacks.pgdl2 import LatentPGDL2
from robustvae.attacks.sgd import LatentSGD

__all__ = [
    "LatentAttack", "LatentPGD", "LatentPGDL2", "LatentSGD", "LatentObjective", "OBJECTIVES",
    "make_attack", "project", "random_start", "run_attack",
]
