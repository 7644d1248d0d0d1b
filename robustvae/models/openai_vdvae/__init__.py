"""openai/vdvae (Child 2021, "Very Deep VAEs"), reproduced from its code's behaviour; see docs/openai-vdvae.md.

:class:`OpenAIVDVAE` (``arch="openai-vdvae"``) is robustvae's VDVAE ladder with upstream's
encoder, widths, parametrisation and likelihood; :mod:`.convert` maps upstream's state dicts
onto it strictly.
"""

from robustvae.models.openai_vdvae.model import UPSTREAM_COMMIT, OpenAIVDVAE

__all__ = ["UPSTREAM_COMMIT", "OpenAIVDVAE"]
