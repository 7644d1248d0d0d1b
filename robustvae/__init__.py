"""robustvae: adversarial robustness of the latent space of hierarchical VAEs.

The Python API (each call returns a typed result; see :mod:`robustvae.api`)::

    import robustvae
    run = robustvae.train("vdvae-mnist-tiny", out="runs/vdvae-mnist-tiny")
    model = robustvae.load("runs/vdvae-mnist-tiny")
    result = robustvae.evaluate(model, iw_samples=100, limit=100)
    sweep = robustvae.attack([model], robustvae.AttackConfig(layers="1,2", points=10), out="runs/attack")
    robustvae.report(["runs/attack"], out="reports/mine")

The names are imported on first use, so ``import robustvae`` stays light.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("robustvae")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

from robustvae.errors import RobustVAEError  # noqa: E402

_LAZY = {
    **{
        name: "robustvae.api"
        for name in (
            "load",
            "train",
            "train_config",
            "evaluate",
            "attack",
            "report",
            "compress",
            "sample",
            "TrainResult",
            "EvalResult",
            "AttackResult",
            "ReportResult",
            "CompressResult",
            "certify_models",
            "CertifyResult",
            "load_images",
        )
    },
    **{name: "robustvae.config" for name in ("Config", "AttackConfig", "CompressConfig", "CertifyConfig")},
    "LoadedModel": "robustvae.zoo",
}

__all__ = ["RobustVAEError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'robustvae' has no attribute {name!r}")
