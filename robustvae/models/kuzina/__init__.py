"""Kuzina & Tomczak's own architectures (their DCT-VAE and ladder VAE), reproduced from their specification.

See :mod:`robustvae.models.kuzina.model` and docs/kuzina.md.
"""

from robustvae.models.kuzina.model import Draws, KuzinaLadderVAE

__all__ = ["KuzinaLadderVAE", "Draws"]
