"""Models: hierarchical VAEs and the distributions they are made of."""

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
