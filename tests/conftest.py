"""Shared fixtures: small configs and seeded generators. No test touches the network."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from robustvae.registry import get_preset


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


@pytest.fixture
def gen():
    """A fresh, seeded-by-time-independent CPU generator per test (fresh random inputs)."""
    g = torch.Generator()
    g.seed()
    return g
