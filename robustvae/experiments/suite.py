"""Attack suites: declarative TOML files (``attacks/*.toml``) holding models and attack settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from robustvae.config import AttackConfig, from_dict
from robustvae.errors import ConfigError, RobustVAEError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 has no tomllib; tomli is the same parser (a dependency there)
    import tomli as tomllib


def read_suite(path: str | os.PathLike) -> tuple[list[str], dict]:
    """An ``attacks/*.toml`` suite: its ``models`` list and its AttackConfig fields (not yet validated)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise RobustVAEError(f"cannot read suite {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise RobustVAEError(f"suite {path} is not UTF-8 text; pass an attacks/*.toml file") from None
    except tomllib.TOMLDecodeError as e:
        raise RobustVAEError(f"suite {path} is not valid TOML: {e}") from None
    models = data.pop("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise RobustVAEError(
            f"suite {path}: models must be a list of checkpoint files, run directories or module.path:factory names"
        )
    try:  # the suite's own settings, before the command line's options are laid over them
        from_dict(AttackConfig, data)
    except ConfigError as e:
        raise RobustVAEError(f"suite {path}: {e}") from None
    return models, data


def attack_config(suite: str | os.PathLike | None = None, **options) -> tuple[list[str], AttackConfig]:
    """The suite's models and its settings overridden by ``options`` (None values ignored), validated. Where neither
    names the attack: AttackConfig's default, the ensemble ``auto``."""
    models, settings = read_suite(suite) if suite is not None else ([], {})
    settings.update({k: v for k, v in options.items() if v is not None})
    return models, from_dict(AttackConfig, settings)
