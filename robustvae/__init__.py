"""robustvae: adversarial robustness of the latent space of hierarchical VAEs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("robustvae")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

from robustvae.errors import RobustVAEError  # noqa: E402

__all__ = ["RobustVAEError", "__version__"]
