"""Typed configs: presets follow Table 6, unknown keys and bad values are rejected."""

from __future__ import annotations

import dataclasses
import json

import pytest

from robustvae.config import Config, ModelConfig
from robustvae.errors import ConfigError
from robustvae.registry import PRESETS, get_preset


def test_paper_presets_follow_table_6():
    m = get_preset("vdvae-mnist")
    assert m.model.latents == ((14, 4), (7, 4)) and m.model.z_dim == 1 and m.model.num_layers == 8
    assert (m.model.channels, m.model.hidden, m.model.activation, m.model.likelihood) == (32, 40, "silu", "bernoulli")
    assert (m.train.lr, m.train.lr_min, m.train.weight_decay, m.train.epochs, m.train.batch_size) == (
        1e-3,
        1e-5,
        1e-2,
        600,
        128,
    )
    assert (m.train.grad_clip, m.train.skip_threshold) == (1.0, 100.0)
    assert get_preset("vdvae-omniglot").model == m.model
    c = get_preset("vdvae-cifar10")
    assert c.model.latents == ((32, 10), (16, 10), (8, 5), (4, 3), (1, 1)) and c.model.num_layers == 29
    assert (c.model.channels, c.model.hidden, c.model.z_dim, c.model.weight_norm) == (384, 96, 8, True)
    assert (c.train.lr, c.train.lr_min, c.train.epochs, c.train.batch_size, c.train.grad_clip) == (
        4e-4,
        5e-5,
        8000,
        96,
        0.2,
    )


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_json(name):
    cfg = PRESETS[name]
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg


def test_overrides_are_typed():
    cfg = get_preset("vdvae-mnist").override(
        [
            "model.channels=16",
            "train.lr=3e-4",
            "model.weight_norm=true",
            "data.data_dir=/tmp/x",
            "model.latents=[[14,2],[7,1]]",
            "train.steps=none",
        ]
    )
    assert cfg.model.channels == 16 and cfg.train.lr == 3e-4 and cfg.model.weight_norm is True
    assert cfg.data.data_dir == "/tmp/x" and cfg.model.latents == ((14, 2), (7, 1)) and cfg.train.steps is None


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("model.chanels=3", "unknown config key 'model.chanels'"),
        ("modle.channels=3", "unknown config key 'modle.channels'"),
        ("model.channels=abc", "model.channels expects an integer"),
        ("model.channels=1.5", "model.channels expects an integer"),
        ("train.lr=fast", "train.lr expects a number"),
        ("model.weight_norm=maybe", "expects true or false"),
        ("model.channels", "--set expects key=value"),
        ("model=3", "is a section"),
        ("model.channels=0", "model.channels must be positive"),
        ("model.likelihood=gauss", "model.likelihood must be one of"),
        ("model.latents=[[14,4],[6,4]]", "integer factors"),
        ("train.ema_decay=1.5", "train.ema_decay must be in [0, 1)"),
        ("train.batch_size=-2", "train.batch_size must be positive"),
    ],
)
def test_bad_overrides_name_the_problem(assignment, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        get_preset("vdvae-mnist").override([assignment])


def test_unknown_keys_in_saved_configs_are_rejected():
    d = get_preset("vdvae-mnist").to_dict()
    d["model"]["colour"] = 3
    with pytest.raises(ConfigError, match="unknown config key 'model.colour'"):
        Config.from_dict(d)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig().channels = 3  # type: ignore[misc]


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="vdvae-mnist-tiny"):
        get_preset("vdvae-mnsit")
