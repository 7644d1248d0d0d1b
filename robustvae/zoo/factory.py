"""A user's own model, named ``module.path:factory`` wherever a model is named (command line and API).

robustvae imports ``module.path`` (the current directory first on ``sys.path``, as
``python -m`` would have it, then the rest of ``sys.path``, e.g. ``PYTHONPATH``), calls
``factory()`` with no arguments and uses what it returns once
:func:`robustvae.models.check_contract` finds it complete. Importing a module runs its
code: name only modules you trust, exactly as you would import them yourself. (Checkpoint
files, by contrast, are only ever read with ``weights_only=True``.)

Such a model has no config of its own, hence no dataset: commands that need images
take ``--data NAME`` or ``--images PATH``. Its provenance is the factory path and
:func:`state_dict_sha256`, a hash of its weights (not of any file).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import sys
import torch
from torch import nn

from robustvae.errors import RobustVAEError

FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def is_factory(spec: object) -> bool:
    """Whether ``spec`` reads ``module.path:factory`` (and is no existing file or folder)."""
    return isinstance(spec, str) and FACTORY.fullmatch(spec) is not None and not os.path.exists(spec)


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over the model's state dict: each entry's name, dtype, shape and bytes (CPU, C order), in key order.

    Equal weights give equal hashes on any device; it is not the hash of a file.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _import(module_name: str, spec: str):
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise RobustVAEError(
                f"cannot import {module_name!r} for the model {spec}: no such module in the current directory or on "
                f"sys.path; run from the folder that holds it or add that folder to PYTHONPATH"
            ) from None
        raise RobustVAEError(
            f"importing {module_name} for the model {spec} failed: {e}; install what it needs"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's module failed to import: one line naming it
        raise RobustVAEError(
            f"importing {module_name} for the model {spec} raised {type(e).__name__}: {' '.join(str(e).split())[:200]}"
        ) from None
    finally:
        if added and sys.path and sys.path[0] == cwd:
            sys.path.pop(0)


def build(spec: str, device: str | torch.device = "cpu") -> nn.Module:
    """Import ``module.path``, call ``factory()``, check the contract; the model on ``device`` in eval mode."""
    from robustvae.models.check import check_contract

    module_name, attr = spec.split(":")
    factory = getattr(_import(module_name, spec), attr, None)
    if not callable(factory):
        raise RobustVAEError(
            f"{module_name} has no callable {attr!r}; name a function that builds the model (module.path:factory)"
        )
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001 - the user's factory failed: one line naming it
        raise RobustVAEError(f"{spec}() raised {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    if isinstance(model, nn.Module):
        model = model.to(device).eval()
    return check_contract(model, f"the model {spec} returns")
