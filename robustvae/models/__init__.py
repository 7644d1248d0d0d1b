"""Models: hierarchical VAEs and the distributions they are made of."""

from robustvae.models.distributions import Bernoulli, DiagGaussian, DiscretizedLogisticMixture
from robustvae.models.vdvae import VDVAE, ELBOResult, LayerInfo

__all__ = ["VDVAE", "ELBOResult", "LayerInfo", "DiagGaussian", "Bernoulli", "DiscretizedLogisticMixture"]
