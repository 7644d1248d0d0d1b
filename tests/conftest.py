"""Shared fixtures: small configs and seeded generators. No test touches the network.

No test draws a fresh seed: the global generators and ``gen`` are seeded from the test's node id and
hypothesis derandomised, so a rerun draws the same numbers and a failure reproduces.
"""

from __future__ import annotations

import dataclasses
import os
import random
import zlib

import numpy as np
import pytest
import torch
from hypothesis import settings

# Under pytest-xdist (pyproject's addopts: -n 2), each worker gets its share of the cores, so two workers do not
# oversubscribe a 2-core machine; a single process keeps torch's default.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

# hypothesis draws its examples from a fixed seed too (the examples of a failure are printed with it)
settings.register_profile("robustvae", derandomize=True)
settings.load_profile("robustvae")

from robustvae.registry import get_preset  # noqa: E402 - after the hypothesis profile, which must load first


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Keep every test away from the user's caches and make runs small and quiet."""
    monkeypatch.setenv("ROBUSTVAE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    yield


def tiny_config(preset: str = "vdvae-mnist-tiny", data: str = "synthetic", **train):
    """A tiny preset on generated data with fast training settings."""
    cfg = get_preset(preset)
    base = dict(batch_size=16, warmup_steps=2, log_every=2, checkpoint_every=4)
    base.update(train)
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, name=data), train=dataclasses.replace(cfg.train, **base)
    )


def perturbed_model(preset: str, seed: int = 0, scale: float = 0.05):
    """A preset's model, eval mode, with N(0, scale^2) added to every tensor so that its zero-initialised layers
    (the prior nets' last convolutions, biases) matter."""
    import torch

    from robustvae.registry import build_model

    torch.manual_seed(seed)
    model = build_model(get_preset(preset).model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def node_seed(request: pytest.FixtureRequest) -> int:
    """A seed derived from the test's node id (file, name, parameters): fixed, and different for every test."""
    return zlib.crc32(request.node.nodeid.encode())


@pytest.fixture(autouse=True)
def _seeded(request):
    """Every test starts from the same random state, whatever ran before it: torch's, numpy's and random's
    global generators are seeded from the test's node id (a test that needs other numbers seeds its own)."""
    seed = node_seed(request)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    yield


@pytest.fixture
def gen(request):
    """A CPU generator for a test's random inputs, seeded from its node id: the same inputs on every run."""
    return torch.Generator().manual_seed(node_seed(request) ^ 0x5EED)
