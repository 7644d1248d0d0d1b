"""A kuzina-ladder model through robustvae's pipeline, with no special case: train, eval (both estimators),
attack and compress, at tiny size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import robustvae
from robustvae.cli import main
from robustvae.config import AttackConfig, CompressConfig
from robustvae.errors import RobustVAEError
from robustvae.registry import build_model, get_preset

TINY = "kuzina-dctvae-mnist-tiny"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kuzina") / "run"
    code = main(
        [
            "train",
            "--preset",
            TINY,
            "--data",
            "synthetic",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--quiet",
            "--set",
            "train.val_batches=1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_eval_reports_the_true_bound_by_default_and_both_estimators_on_request(run, capsys):
    assert main(["eval", str(run), "-k", "2", "--limit", "8", "--batch-size", "8", "-q"]) == 0
    default = json.loads((run / "eval-test.json").read_text())
    assert "estimator" not in default and "nll_authors_nats" not in default
    assert main(["eval", str(run), "-k", "2", "--limit", "8", "--batch-size", "8", "-q", "--estimator", "both"]) == 0
    out = capsys.readouterr().out
    both = json.loads((run / "eval-test.json").read_text())
    assert both["estimator"] == "both" and np.isfinite(both["nll_authors_nats"]) and "authors' estimate" in out
    assert both["images"] == default["images"] == 8
    res = robustvae.evaluate(run, iw_samples=2, limit=8, batch_size=8, estimator="authors")
    assert res.record["estimator"] == "authors" and np.isfinite(res.nll_nats)


def test_a_family_without_the_authors_estimator_says_so(capsys):
    torch.manual_seed(0)
    model = build_model(get_preset("vdvae-mnist-tiny").model)
    with pytest.raises(RobustVAEError, match="--estimator authors is not offered by vdvae models"):
        robustvae.evaluate(model, data="synthetic", iw_samples=2, limit=4, estimator="authors")
    with pytest.raises(RobustVAEError, match="--estimator must be one of iwae, authors, both"):
        robustvae.evaluate(model, data="synthetic", iw_samples=2, limit=4, estimator="bound")


def test_attacks_run_on_it_with_the_dither_off_and_say_so(run, tmp_path):
    cfg = AttackConfig(
        optimizer="pgd", layers="1,2", points=2, restarts=1, steps=2, floor_draws=1, noise_draws=1, gallery_points=0
    )
    res = robustvae.attack([run], cfg, out=tmp_path / "attack", device="cpu")
    attacked = res.records[res.records.kind == "attack"] if "kind" in res.records else res.records
    assert sorted(attacked.k.unique()) == [1, 2] and np.isfinite(attacked.msssim).all()
    info = json.loads((tmp_path / "attack" / "run.json").read_text())
    assert info["models"][0]["config"]["model"]["context_dither"] is False
    assert info["models"][0]["layer_diagnostics"][0]["kind"] == "context"


def test_compression_runs_on_it(run, tmp_path):
    pixels = (np.random.default_rng(0).random((40, 60)) * 255).astype(np.uint8)
    (tmp_path / "img").mkdir()
    Image.fromarray(pixels).save(tmp_path / "img" / "x.png")
    res = robustvae.compress([run], [tmp_path / "img"], CompressConfig(layers="1,2"), tmp_path / "out", device="cpu")
    assert sorted(res.records.k.unique()) == [1, 2] and np.isfinite(res.records.psnr).all()
    assert (res.records.context_bits_raw == 6 * 49 * np.log2(6)).all()  # 6 patches of 49 coefficients on 6 levels


def test_attacks_can_average_over_dither_draws_and_say_so(run, tmp_path):
    from robustvae.zoo.kuzina import with_dither

    lm = with_dither(robustvae.load(run), draws=2)
    cfg = AttackConfig(
        optimizer="pgd", layers="2", points=2, restarts=1, steps=2, floor_draws=0, noise_draws=0, gallery_points=0
    )
    res = robustvae.attack([lm], cfg, out=tmp_path / "attack", device="cpu")
    assert np.isfinite(res.records.msssim).all()
    model_cfg = json.loads((tmp_path / "attack" / "run.json").read_text())["models"][0]["config"]["model"]
    assert model_cfg["context_dither"] is True and model_cfg["context_eot_draws"] == 2
    with pytest.raises(RobustVAEError, match="dithered context"):
        with_dither(robustvae.load(run).__class__.in_memory(build_model(get_preset("vdvae-mnist-tiny").model)))


def test_the_attack_commands_eot_option_turns_the_dither_on_and_run_json_says_so(run, tmp_path, capsys):
    base = ["attack", str(run), "--layers", "2", "--points", "2", "--restarts", "1", "--steps", "2"]
    assert main([*base, "--out", str(tmp_path / "off")]) == 0
    assert main([*base, "--eot", "2", "--out", str(tmp_path / "on")]) == 0
    off, on = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("off", "on"))
    assert list(off["context_dither"].values()) == ["off"]
    assert list(on["context_dither"].values()) == ["on, averaged over 2 fixed draws (EOT)"]
    assert on["models"][0]["config"]["model"]["context_eot_draws"] == 2
    capsys.readouterr()
    other = tmp_path / "vd.pt"
    from robustvae import zoo

    cfg = get_preset("vdvae-mnist-tiny")
    zoo.atomic_save(zoo.make_checkpoint(cfg, build_model(cfg.model)), other)
    assert main(["attack", str(other), "--eot", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "dithered context" in capsys.readouterr().err and not (tmp_path / "bad").exists()
