"""Checkpoints and the zoo: safe loading and clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from robustvae import zoo
from robustvae.errors import CheckpointError
from robustvae.registry import build_model, get_preset


@pytest.fixture
def ckpt_path(tmp_path):
    cfg = get_preset("vdvae-mnist-tiny")
    torch.manual_seed(0)
    path = tmp_path / "run" / "best.pt"
    zoo.atomic_save(zoo.make_checkpoint(cfg, build_model(cfg.model)), path)
    return path


def test_load_from_file_and_run_directory(ckpt_path):
    a = zoo.load(ckpt_path)
    b = zoo.load(ckpt_path.parent)
    assert a.config == get_preset("vdvae-mnist-tiny") and not a.model.training
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


class _Evil:
    def __reduce__(self):
        return (open, ("/tmp/robustvae-pwned", "w"))


def test_a_checkpoint_with_pickled_code_is_refused_and_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": zoo.FORMAT, "payload": _Evil()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    import os

    if os.path.exists("/tmp/robustvae-pwned"):
        os.unlink("/tmp/robustvae-pwned")
    with pytest.raises(CheckpointError, match="safe loading refuses"):
        zoo.load(path)
    assert not os.path.exists("/tmp/robustvae-pwned")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.update(format_version=99), "newer than this robustvae reads"),
        (lambda c: c.update(arch="dctvae-from-the-future"), "unknown here"),
        (lambda c: c.pop("format"), "not a robustvae checkpoint"),
        (lambda c: c["config"]["model"].update(channels=16), "does not fit the architecture"),
        (lambda c: c["config"]["model"].update(colour=1), "invalid config"),
        (lambda c: c["model"].pop(next(iter(c["model"]))), "does not fit the architecture"),
    ],
)
def test_checkpoints_of_other_architectures_or_formats_give_one_clear_line(ckpt_path, tmp_path, mutate, message):
    c = torch.load(ckpt_path, weights_only=True)
    mutate(c)
    bad = tmp_path / "bad.pt"
    torch.save(c, bad)
    with pytest.raises(CheckpointError, match=message) as e:
        zoo.load(bad)
    assert "\n" not in str(e.value)


def test_missing_truncated_and_non_checkpoint_files(ckpt_path, tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing checkpoint"):
        zoo.load(tmp_path / "nope.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt_path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        zoo.load(cut)
    with pytest.raises(CheckpointError, match="is a preset, not a trained checkpoint"):
        zoo.load("vdvae-mnist")
    with pytest.raises(CheckpointError, match="holds no best.pt"):
        zoo.load(tmp_path)
