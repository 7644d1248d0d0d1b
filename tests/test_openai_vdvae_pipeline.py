"""An openai-vdvae model through robustvae's pipeline with no special case: import, eval, attack (the default and
the ensemble), compress, at tiny size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import perturbed_model
from PIL import Image

import robustvae
from robustvae.cli import main
from robustvae.config import AttackConfig, CompressConfig
from robustvae.models.openai_vdvae.convert import their_name

TINY = "openai-vdvae-tiny"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A tiny model saved in upstream's format and imported (training is the same code as every family's)."""
    tmp = tmp_path_factory.mktemp("openai")
    m = perturbed_model(TINY)
    torch.save({"module." + their_name(k, m.cfg): v for k, v in m.state_dict().items()}, tmp / "tiny-model.th")
    assert (
        main(
            [
                "zoo",
                "import",
                str(tmp / "tiny-model.th"),
                "--from",
                "openai-vdvae",
                "--preset",
                TINY,
                "--out",
                str(tmp / "run"),
            ]
        )
        == 0
    )
    return tmp / "run"


def test_eval_reports_nll_elbo_and_bits_per_dim(imported):
    assert main(["eval", str(imported), "-k", "3", "--limit", "4", "--batch-size", "4", "-q"]) == 0
    res = json.loads((imported / "eval-test.json").read_text())
    assert res["images"] == 4 and np.isfinite(res["nll_bpd"]) and np.isfinite(res["nelbo_bpd"])
    assert len(res["layers"]) == 4 and res["total_units"] == 2 * (1 + 64 + 256 + 1024)


@pytest.mark.parametrize("optimizer", ["pgd", "auto"])
def test_attacks_run_at_k_1_and_2(imported, tmp_path, optimizer):
    cfg = AttackConfig(
        layers="1,2", points=2, restarts=1, steps=3, optimizer=optimizer, floor_draws=1, noise_draws=1, gallery_points=0
    )
    res = robustvae.attack([imported], cfg, out=tmp_path / "attack", device="cpu")
    attacked = res.records[res.records.kind == "attack"]
    assert sorted(attacked.k.unique()) == [1, 2] and np.isfinite(attacked.msssim).all()
    info = json.loads((tmp_path / "attack" / "run.json").read_text())
    assert info["models"][0]["config"]["model"]["arch"] == "openai-vdvae"


def test_compression_runs_on_it(imported, tmp_path):
    pixels = (np.random.default_rng(0).random((40, 70, 3)) * 255).astype(np.uint8)
    (tmp_path / "img").mkdir()
    Image.fromarray(pixels).save(tmp_path / "img" / "x.png")
    res = robustvae.compress(
        [imported], [tmp_path / "img"], CompressConfig(layers="1,2"), tmp_path / "out", device="cpu"
    )
    assert sorted(res.records.k.unique()) == [1, 2] and np.isfinite(res.records.psnr).all()
