"""Checkpoints and the zoo: safe loading, clear errors, sha256-verified downloads (from local files)."""

from __future__ import annotations

import pickle

import pytest
import torch

from robustvae import zoo
from robustvae.errors import CheckpointError
from robustvae.registry import ZOO, ZooEntry, build_model, get_preset, register_zoo_entry


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
    with pytest.raises(CheckpointError, match="neither a zoo checkpoint"):
        zoo.load(tmp_path / "nope.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt_path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        zoo.load(cut)
    with pytest.raises(CheckpointError, match="is a preset, not a trained checkpoint"):
        zoo.load("vdvae-mnist")
    with pytest.raises(CheckpointError, match="holds no best.pt"):
        zoo.load(tmp_path)


def test_zoo_download_is_cached_and_sha256_verified(ckpt_path, monkeypatch):
    digest = zoo.sha256_file(ckpt_path)
    entry = ZooEntry("test-entry", "vdvae-mnist-tiny", ckpt_path.as_uri(), digest, "local file")
    monkeypatch.setitem(ZOO, entry.name, entry)
    m = zoo.load("test-entry")
    cached = zoo.cache_dir() / f"test-entry-{digest[:12]}.pt"
    assert cached.is_file() and m.sha256 == digest
    assert any(r["name"] == "test-entry" and "cached" in r["kind"] for r in zoo.list_entries())
    # a corrupted cache entry is detected and removed
    cached.write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="failed its sha256 check"):
        zoo.load("test-entry")
    assert not cached.exists()


def test_zoo_entry_with_a_wrong_hash_is_rejected(ckpt_path, monkeypatch):
    entry = ZooEntry("bad-hash", "vdvae-mnist-tiny", ckpt_path.as_uri(), "0" * 64)
    monkeypatch.setitem(ZOO, entry.name, entry)
    with pytest.raises(CheckpointError, match="failed its sha256 check"):
        zoo.load("bad-hash")


def test_unreachable_zoo_url_gives_a_clear_error(monkeypatch, tmp_path):
    entry = ZooEntry("gone", "vdvae-mnist-tiny", (tmp_path / "missing.pt").as_uri(), "a" * 64)
    monkeypatch.setitem(ZOO, entry.name, entry)
    with pytest.raises(CheckpointError, match="could not download zoo checkpoint 'gone'"):
        zoo.load("gone")


def test_register_zoo_entry_validates(monkeypatch):
    monkeypatch.setattr("robustvae.registry.ZOO", dict(ZOO))
    from robustvae.errors import ConfigError

    with pytest.raises(ConfigError, match="64 hex"):
        register_zoo_entry(ZooEntry("x", "vdvae-mnist-tiny", "https://example.org/x.pt", "abc"))
    with pytest.raises(ConfigError, match="unknown preset"):
        register_zoo_entry(ZooEntry("x", "nope", "https://example.org/x.pt", "a" * 64))
