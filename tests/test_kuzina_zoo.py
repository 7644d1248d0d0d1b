"""robustvae zoo import / fetch of the authors' checkpoints, on locally built files (no network)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import robustvae
from robustvae.cli import main
from robustvae.errors import CheckpointError, RobustVAEError
from robustvae.registry import build_model, get_preset
from robustvae.zoo import sha256_file
from robustvae.registry import PUBLISHED
from robustvae.zoo.kuzina import fetch, import_checkpoint
from kuzina_fixtures import their_state_dict

TINY = "kuzina-dctvae-mnist-tiny"


def _model(seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(get_preset(TINY).model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        m.codec.scale.uniform_(1, 500)
    return m


def _save(path, model, ema=None, **extra):
    torch.save(
        {
            "model_state_dict": their_state_dict(model),
            "ema_model_state_dict": their_state_dict(ema) if ema else None,
            "epoch": 599,
            **extra,
        },
        path,
    )
    return path


def test_import_converts_their_weights_and_records_where_they_came_from(tmp_path):
    model = _model()
    src = _save(tmp_path / "mnist.pth", model, best_loss=np.float64(76.6))  # numpy scalars are plain data
    dest = import_checkpoint(src, TINY, tmp_path / "out")
    lm = robustvae.load(tmp_path / "out")
    for k, v in model.state_dict().items():
        assert torch.equal(lm.model.state_dict()[k], v), k
    prov = torch.load(dest, weights_only=True)["provenance"]
    assert prov == json.loads((tmp_path / "out" / "imported.json").read_text())
    assert prov["source"] == "kuzina" and prov["sha256"] == sha256_file(src) and prov["ema"] is False


def test_ema_weights_are_imported_and_used_by_default(tmp_path):
    model, ema = _model(0), _model(1)
    import_checkpoint(_save(tmp_path / "m.pth", model, ema), TINY, tmp_path / "out")
    loaded = robustvae.load(tmp_path / "out").model.state_dict()
    raw = robustvae.load(tmp_path / "out", weights="raw").model.state_dict()
    key = "decoder.post_process.0.weight"
    assert torch.equal(loaded[key], ema.state_dict()[key]) and torch.equal(raw[key], model.state_dict()[key])


class _Boom:
    """Unpickling this would run code: safe loading must refuse it before that."""

    def __reduce__(self):
        return (open, ("/tmp/robustvae-kuzina-should-not-exist", "w"))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p, m: p.write_bytes(_save(p, m).read_bytes()[:5000]), "truncated"),
        (
            lambda p, m: torch.save({"state_dict": {}, "epoch": 1}, p),
            "has no 'model_state_dict' (found: epoch, state_dict)",
        ),
        (lambda p, m: p.write_bytes(pickle.dumps({"model_state_dict": _Boom()})), "refuses"),
        (
            lambda p, m: torch.save(
                {"model_state_dict": {k: v for k, v in their_state_dict(m).items() if "post_process" not in k}}, p
            ),
            "2 missing, 0 unknown, 0 mis-shaped tensors; first: decoder.post_process.0.weight",
        ),
    ],
)
def test_a_wrong_or_truncated_file_is_one_line_naming_what_is_missing(tmp_path, capsys, make, message):
    src = tmp_path / "bad.pth"
    make(src, _model())
    code = main(["zoo", "import", str(src), "--from", "kuzina", "--preset", TINY, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out" / "best.pt").exists()
    import os

    assert not os.path.exists("/tmp/robustvae-kuzina-should-not-exist")


def test_bad_requests_are_refused(tmp_path):
    src = _save(tmp_path / "m.pth", _model())
    with pytest.raises(RobustVAEError, match="not one of the authors' architectures"):
        import_checkpoint(src, "dctvae-mnist-tiny", tmp_path / "a")
    with pytest.raises(RobustVAEError, match="unknown checkpoint source 'vdvae'"):
        import_checkpoint(src, TINY, tmp_path / "a", source="vdvae")
    import_checkpoint(src, TINY, tmp_path / "b")
    with pytest.raises(RobustVAEError, match="not empty; pass --force"):
        import_checkpoint(src, TINY, tmp_path / "b")
    import_checkpoint(src, TINY, tmp_path / "b", force=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        import_checkpoint(tmp_path / "missing.pth", TINY, tmp_path / "c")


def test_the_cli_imports_and_the_model_evaluates(tmp_path, capsys):
    src = _save(tmp_path / "m.pth", _model())
    out = tmp_path / "out"
    assert main(["zoo", "import", str(src), "--from", "kuzina", "--preset", TINY, "--out", str(out)]) == 0
    assert "imported" in capsys.readouterr().out
    res = robustvae.evaluate(out, data="synthetic", iw_samples=2, limit=8, batch_size=8)
    assert np.isfinite(res.nll_nats) and res.record["checkpoint_sha256"] == sha256_file(out / "best.pt")


def test_fetch_downloads_then_imports_and_names_gdown_when_missing(tmp_path, monkeypatch):
    src = _save(tmp_path / "m.pth", _model())

    def fake_download(drive_id, dest):
        assert drive_id == PUBLISHED["kuzina-dctvae-mnist"].drive_id
        dest.write_bytes(src.read_bytes())

    with pytest.raises(CheckpointError, match="pick the preset"):  # the tiny weights are not the published architecture
        fetch("kuzina-dctvae-mnist", tmp_path / "out", download=fake_download)
    monkeypatch.setitem(
        PUBLISHED,
        "tiny",
        PUBLISHED["kuzina-dctvae-mnist"].__class__(
            "tiny", TINY, "kuzina", PUBLISHED["kuzina-dctvae-mnist"].drive_id, 76.62, "nats"
        ),
    )
    dest = fetch("tiny", tmp_path / "out", download=fake_download)
    prov = torch.load(dest, weights_only=True)["provenance"]
    assert prov["sha256"] == sha256_file(src) and prov["url"].startswith("https://drive.google.com/file/d/1RZWo7")
    monkeypatch.setitem(__import__("sys").modules, "gdown", None)
    with pytest.raises(RobustVAEError, match="pip install"):
        fetch("kuzina-dctvae-mnist", tmp_path / "other")
    with pytest.raises(RobustVAEError, match="unknown published checkpoint"):
        fetch("nope", tmp_path / "other")


def test_every_published_checkpoint_names_a_kuzina_preset_and_the_nll_they_report():
    theirs = [p for p in PUBLISHED.values() if p.source == "kuzina"]
    assert {p.reported_nll for p in theirs} == {76.62, 86.11, 3.26, 1.97}
    for p in theirs:
        assert get_preset(p.preset).model.arch == "kuzina-ladder" and "drive.google.com" in p.url


def test_their_recorded_weight_set_imports_into_the_published_architecture(tmp_path):
    from kuzina_fixtures import perturbed

    sd, io = perturbed("mnist_dct_ladder")
    torch.save({"model_state_dict": sd, "ema_model_state_dict": None}, tmp_path / "theirs.pth")
    import_checkpoint(tmp_path / "theirs.pth", "kuzina-dctvae-mnist", tmp_path / "out")
    model = robustvae.load(tmp_path / "out").model
    torch.testing.assert_close(model.codec.scale, io["fit/scale"])  # their fitted scale travels in the file
    torch.testing.assert_close(model.prior.net(io["unet/y_t"], io["unet/t"]), io["unet/out"], rtol=1e-5, atol=1e-5)
