"""Models: hierarchical VAEs and the distributions they are made of."""

from robustvae.models.check import ContractError, check_contract, contract_problems
from robustvae.models.dctvae import DCTVAE
from robustvae.models.distributions import (
    Bernoulli,
    DiagGaussian,
    DiscretizedGaussian,
    DiscretizedLogisticMixture,
    PointMass,
)
from robustvae.models.vdvae import VDVAE, ELBOResult, LayerInfo

__all__ = [
    "check_contract",
    "contract_problems",
    "ContractError",
    "VDVAE",
    "DCTVAE",
    "ELBOResult",
    "LayerInfo",
    "DiagGaussian",
    "PointMass",
    "DiscretizedGaussian",
    "Bernoulli",
    "DiscretizedLogisticMixture",
]
