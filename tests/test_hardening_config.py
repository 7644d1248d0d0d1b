"""Hardening: non-finite and out-of-range settings are refused naming the field; EMA checkpoints load.

The number check is a property over every numeric field of every config dataclass
(found by introspection, none listed by hand), so a field added later is covered too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest
import torch

from robustvae.config import (
    AttackConfig,
    CertifyConfig,
    CompressConfig,
    Config,
    DataConfig,
    ModelConfig,
    TrainConfig,
    from_dict,
)
from robustvae.errors import ConfigError

CONFIGS = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "attack": AttackConfig,
    "compress": CompressConfig,
    "certify": CertifyConfig,
}


def _numeric_fields():
    for section, cls in CONFIGS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            args = typing.get_args(tp) or (tp,)
            if float in args or int in args:
                yield section, cls, f.name, float in args, typing.get_origin(tp) is tuple


NUMERIC = list(_numeric_fields())


def test_the_property_covers_many_float_fields():
    floats = [name for _, _, name, is_float, _ in NUMERIC if is_float]
    assert len(floats) >= 20 and {"lr", "lr_min", "eps", "temperature", "ema_decay"} <= set(floats)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("section,cls,name,is_float,is_tuple", NUMERIC, ids=[f"{s}.{n}" for s, _, n, _, _ in NUMERIC])
def test_every_numeric_field_refuses_non_finite_values_naming_it(section, cls, name, is_float, is_tuple, bad):
    # built directly (the way experiments build them) ...
    with pytest.raises(ConfigError, match=rf"\b{name}\b"):
        cls(**{name: (bad,) if is_tuple else bad})
    # ... and coerced from text (the way --set and suites give them)
    if is_float:
        text = f"[{json.dumps(bad)}]" if is_tuple else str(bad)
        with pytest.raises(ConfigError, match=rf"\b{name}\b.*finite"):
            from_dict(cls, {name: text})


@pytest.mark.parametrize(
    "text",
    [
        "train.lr=nan",
        "train.lr=inf",
        "train.lr_min=nan",
        "train.weight_decay=nan",
        "train.ema_decay=nan",
        "model.diffusion_beta_end=inf",
        "train.seed=-1",
        "train.lr=-1",
        "train.ema_decay=1",
        "data.split_seed=-3",
    ],
)
def test_set_overrides_refuse_non_finite_and_out_of_range_values(text):
    key = text.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Config().override([text])


@pytest.mark.parametrize("name", ["seed", "split_seed"])
def test_seeds_must_not_be_negative(name):
    cls = DataConfig if name == "split_seed" else AttackConfig
    with pytest.raises(ConfigError, match=name):
        cls(**{name: -1})
    assert getattr(cls(**{name: 0}), name) == 0


def test_valid_edge_values_are_accepted():
    assert AttackConfig(eps=0.0, temperature=0.0).eps == 0.0
    assert TrainConfig(ema_decay=0.0, lr_min=0.0).lr_min == 0.0
    assert CompressConfig(temperature=0.0).temperature == 0.0


# --------------------------------------------------------------------------- EMA checkpoints

FAMILIES = ["vdvae-mnist-tiny", "dctvae-mnist-tiny", "kuzina-dctvae-mnist-tiny"]


@pytest.mark.parametrize("preset", FAMILIES)
def test_ema_checkpoints_load_ema_by_default_and_raw_on_request(preset, tmp_path):
    from conftest import tiny_config

    from robustvae import api, zoo

    cfg = tiny_config(preset, ema_decay=0.5, steps=2, batch_size=8)
    res = api.train(cfg, tmp_path / "run", device="cpu")
    ckpt = torch.load(res.out / "best.pt", weights_only=True)
    # the independent reference: the tensors the trainer stored, under the AveragedModel prefix and without it
    ema_ref = {k[len("module.") :]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    raw_ref = ckpt["model"]
    default, ema, raw = (zoo.load(res.out, weights=w) for w in ("auto", "ema", "raw"))
    for loaded, ref in ((default, ema_ref), (ema, ema_ref), (raw, raw_ref)):
        state = loaded.model.state_dict()
        assert state.keys() == ref.keys()
        assert all(torch.equal(state[k], ref[k]) for k in ref)
    differs = [k for k in raw_ref if raw_ref[k].is_floating_point() and not torch.equal(raw_ref[k], ema_ref[k])]
    assert differs, "EMA and raw weights should differ after 2 steps with decay 0.5"


@pytest.mark.slow  # the repro end to end; the loading itself is tested above for every family
def test_ema_checkpoints_run_through_attack_and_eval_on_the_command_line(tmp_path, capsys):
    from robustvae.cli import main

    run = tmp_path / "v"
    assert (
        main(
            [
                "train",
                "--preset",
                "vdvae-mnist-tiny",
                "--data",
                "synthetic",
                "-q",
                "--batch-size",
                "8",
                "--steps",
                "2",
                "--set",
                "train.ema_decay=0.5",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    assert (
        main(
            ["attack", str(run), "--points", "1", "--restarts", "1", "--steps", "1", "-q", "--out", str(tmp_path / "a")]
        )
        == 0
    )
    assert main(["eval", str(run), "--weights", "raw", "-k", "2", "--limit", "4", "-q"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--weights", "nonsense", "-k", "2", "--limit", "4", "-q"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
