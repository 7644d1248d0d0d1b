"""robustvae zoo import / fetch of openai/vdvae's state-dict files, on locally made files (no network)."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import pytest
import torch
from conftest import perturbed_model

import robustvae
from robustvae.api import fetch_checkpoint, import_checkpoint
from robustvae.cli import main
from robustvae.errors import CheckpointError, RobustVAEError
from robustvae.models.openai_vdvae.convert import check_state_dict, rename, their_name
from robustvae.registry import OPENAI_HPS, PUBLISHED, build_model, get_preset
from robustvae.zoo import sha256_file

TINY = "openai-vdvae-tiny"


def _model(seed: int = 0):
    return perturbed_model(TINY, seed)


def _theirs(model, prefix: str = "") -> dict[str, torch.Tensor]:
    """``model``'s weights under upstream's names (``module.``-prefixed when saved from data-parallel training)."""
    return {prefix + their_name(k, model.cfg): v.clone() for k, v in model.state_dict().items()}


def _save(path, model, prefix: str = ""):
    torch.save(_theirs(model, prefix), path)
    return path


def test_names_map_one_to_one_both_ways():
    m = _model()
    ours = list(m.state_dict())
    theirs = [their_name(k, m.cfg) for k in ours]
    assert len(set(theirs)) == len(ours) and [rename(k, m.cfg) for k in theirs] == ours
    assert "decoder.dec_blocks.0.enc.c1.weight" in theirs and "decoder.bias_xs.1" in theirs  # biases at 1 and 8 only
    assert "decoder.bias_xs.2" not in theirs and {"decoder.gain", "decoder.bias"} <= set(theirs)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_import_keeps_every_weight_and_records_where_it_came_from(tmp_path, prefix):
    model = _model()
    src = _save(tmp_path / "tiny-model-ema.th", model, prefix)
    dest = import_checkpoint(src, "openai-vdvae", tmp_path / "out", preset=TINY)
    lm = robustvae.load(tmp_path / "out")
    assert lm.model.arch == "openai-vdvae"
    for k, v in model.state_dict().items():
        assert torch.equal(lm.model.state_dict()[k], v), k
    prov = torch.load(dest, weights_only=True)["provenance"]
    assert prov == json.loads((tmp_path / "out" / "imported.json").read_text())
    assert prov["source"] == "openai-vdvae" and prov["sha256"] == sha256_file(src) and prov["preset"] == TINY
    assert prov["upstream_commit"].startswith("ea35b49") and prov["file"] == "tiny-model-ema.th"
    x = torch.rand(2, 3, 32, 32)
    noise = model.make_noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(lm.model.reconstruct(x, 2, noise=noise), model.eval().reconstruct(x, 2, noise=noise))


class _Boom:
    """Unpickling this would run code: safe loading must refuse it before that."""

    def __reduce__(self):
        return (open, ("/tmp/robustvae-openai-should-not-exist", "w"))


def _drop(sd, key):
    return {k: v for k, v in sd.items() if k != key}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p, sd: p.write_bytes(pickle.dumps(sd)[:3000]), "truncated"),
        (lambda p, sd: p.write_bytes(pickle.dumps({"x": _Boom()})), "refuses"),
        (lambda p, sd: torch.save([1, 2], p), "holds a list, not a state dict"),
        (lambda p, sd: torch.save(_drop(sd, "decoder.gain"), p), "missing key decoder.gain"),
        (lambda p, sd: torch.save({**sd, "decoder.bias_xs.9": torch.zeros(1)}, p), "unexpected key decoder.bias_xs.9"),
        (
            lambda p, sd: torch.save({**sd, "decoder.out_net.out_conv.bias": torch.zeros(7)}, p),
            "decoder.out_net.out_conv.bias has shape (7,), this --hps needs (30,)",
        ),
        (
            lambda p, sd: torch.save({**sd, "encoder.in_conv.weight": torch.zeros(8, 3, 3, 3, dtype=torch.long)}, p),
            "encoder.in_conv.weight is not a floating-point tensor",
        ),
        (
            lambda p, sd: torch.save({"module." + k if "enc_blocks" in k else k: v for k, v in sd.items()}, p),
            "some keys start with 'module.' and some do not",
        ),
        (lambda p, sd: torch.save({"state": 1, "step": 2}, p), "state is not a floating-point tensor"),
    ],
)
def test_a_wrong_file_is_one_line_naming_the_key_and_writes_nothing(tmp_path, capsys, make, message):
    src = tmp_path / "bad.th"
    make(src, _theirs(_model()))
    out = tmp_path / "out"
    code = main(["zoo", "import", str(src), "--from", "openai-vdvae", "--preset", TINY, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: ") and message in err, err
    assert not out.exists()
    assert not os.path.exists("/tmp/robustvae-openai-should-not-exist")


def test_the_wrong_hps_is_named_before_any_weight_is_allocated(tmp_path, monkeypatch):
    """A cifar10 key list against --hps imagenet32: the shape check runs on the meta device, building nothing real."""
    from robustvae.models.openai_vdvae import model as model_module

    built = []
    real_init = model_module.OpenAIVDVAE.__init__

    def spy(self, cfg):
        built.append(torch.empty(0).device.type)  # the default device while the model is being built
        real_init(self, cfg)

    monkeypatch.setattr(model_module.OpenAIVDVAE, "__init__", spy)
    with torch.device("meta"):
        cifar = OPENAI_HPS["cifar10"]
        state = {their_name(k, cifar): v for k, v in build_model(cifar).state_dict().items()}
    built.clear()
    with pytest.raises(CheckpointError, match="cifar10.th: missing key .* pick its --hps"):
        check_state_dict(state, OPENAI_HPS["imagenet32"], "cifar10.th")
    assert built == ["meta"]


def test_bad_requests_are_refused(tmp_path, capsys):
    src = _save(tmp_path / "m.th", _model())
    with pytest.raises(RobustVAEError, match="not an openai-vdvae architecture"):
        import_checkpoint(src, "openai-vdvae", tmp_path / "a", preset="vdvae-mnist-tiny")
    with pytest.raises(RobustVAEError, match="unknown --hps 'cifar'"):
        import_checkpoint(src, "openai-vdvae", tmp_path / "a", hps="cifar")
    with pytest.raises(RobustVAEError, match="one of them"):
        import_checkpoint(src, "openai-vdvae", tmp_path / "a", hps="cifar10", preset=TINY)
    with pytest.raises(RobustVAEError, match="takes --preset"):
        import_checkpoint(src, "kuzina", tmp_path / "a", hps="cifar10")
    with pytest.raises(RobustVAEError, match="unknown checkpoint source 'vdvae'"):
        import_checkpoint(src, "vdvae", tmp_path / "a", preset=TINY)
    import_checkpoint(src, "openai-vdvae", tmp_path / "b", preset=TINY)
    with pytest.raises(RobustVAEError, match="not empty; pass --force"):
        import_checkpoint(src, "openai-vdvae", tmp_path / "b", preset=TINY)
    (tmp_path / "elsewhere.json").write_text("keep")
    (tmp_path / "b" / "imported.json").unlink()
    (tmp_path / "b" / "imported.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(RobustVAEError, match="is a symbolic link"):
        import_checkpoint(src, "openai-vdvae", tmp_path / "b", preset=TINY, force=True)
    assert (tmp_path / "elsewhere.json").read_text() == "keep"  # the link was refused, not followed
    with pytest.raises(CheckpointError, match="does not exist"):
        import_checkpoint(tmp_path / "missing.th", "openai-vdvae", tmp_path / "c", preset=TINY)
    assert main(["zoo", "import", str(src), "--from", "openai-vdvae", "--out", str(tmp_path / "d")]) == 2
    assert "needs --hps" in capsys.readouterr().err


def test_fetch_downloads_through_torch_hub_and_imports(tmp_path, monkeypatch):
    """The real download path (torch.hub) on a file:// URL; a recorded sha256 is checked."""
    src = _save(tmp_path / "tiny-model-ema.th", _model())
    entry = PUBLISHED["openai-vdvae-cifar10-seed0"].__class__(
        "tiny", TINY, "openai-vdvae", "", 2.87, "bits/dim", src.as_uri()
    )
    monkeypatch.setitem(PUBLISHED, "tiny", entry)
    dest = fetch_checkpoint("tiny", tmp_path / "out")
    prov = torch.load(dest, weights_only=True)["provenance"]
    assert prov["sha256"] == sha256_file(src) and prov["url"] == src.as_uri()
    monkeypatch.setitem(PUBLISHED, "tiny", dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(CheckpointError, match="failed its sha256 check"):
        fetch_checkpoint("tiny", tmp_path / "other")
    assert not (tmp_path / "other").exists()
    monkeypatch.setitem(
        PUBLISHED,
        "gone",
        entry.__class__("gone", TINY, "openai-vdvae", "", 2.87, "bits/dim", (tmp_path / "gone.th").as_uri()),
    )
    with pytest.raises(RobustVAEError, match="could not download"):
        fetch_checkpoint("gone", tmp_path / "other")


def test_published_entries_are_upstreams_readme_links_and_paper_nlls():
    ours = {n: p for n, p in PUBLISHED.items() if p.source == "openai-vdvae"}
    assert sorted(ours) == sorted(
        [f"openai-vdvae-cifar10-seed{s}" for s in range(4)]
        + [f"openai-vdvae-{h}" for h in ("imagenet32", "imagenet64", "ffhq256", "ffhq1024")]
    )
    nll = {n: p.reported_nll for n, p in ours.items()}
    assert nll["openai-vdvae-imagenet32"] == 3.80 and nll["openai-vdvae-imagenet64"] == 3.52
    assert nll["openai-vdvae-ffhq256"] == 0.61 and nll["openai-vdvae-ffhq1024"] == 2.42
    assert round(sum(nll[f"openai-vdvae-cifar10-seed{s}"] for s in range(4)) / 4, 2) == 2.87
    for p in ours.values():
        assert p.url.startswith("https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/vdvae-assets")
        assert p.url.endswith("-model-ema.th") and get_preset(p.preset).model.arch == "openai-vdvae"
