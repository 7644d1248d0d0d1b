"""The reconstruction rules (default and the authors'), the paired no-attack level, and the checks built on them."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import robustvae
from conftest import tiny_config
from robustvae.attacks import LatentPGD
from robustvae.config import AttackConfig
from robustvae.protocol import RECON_RULES, std_temperature
from robustvae.registry import build_model, get_preset
from robustvae.reporting import aggregate as agg
from robustvae.reporting import load_runs

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DCT-VAE trained briefly on offline MNIST: its top layer (the context) carries the image's outline.

    (A VDVAE this small collapses its top layers, so no attack can damage k = 1, 2 more
    than prior noise does: the measurable-damage check rightly fails there.)
    """
    out = tmp_path_factory.mktemp("protocol") / "run"
    cfg = tiny_config(
        "dctvae-mnist-tiny",
        data="mnist-offline",
        steps=200,
        batch_size=32,
        lr=3e-3,
        checkpoint_every=1000,
        val_batches=2,
    )
    robustvae.train(cfg, out, device="cpu")
    return out


def test_temperature_conventions():
    assert std_temperature(0.1, "std") == 0.1
    assert std_temperature(0.1, "var") == pytest.approx(math.sqrt(0.1))  # the authors' 0.1: std x 0.316
    assert AttackConfig(recon="authors").convention == "var" and AttackConfig().convention == "std"
    assert AttackConfig(recon="authors", temperature_convention="std").convention == "std"
    with pytest.raises(robustvae.RobustVAEError, match="unknown recon rule"):
        AttackConfig(recon="theirs")
    assert set(RECON_RULES) == {"default", "authors"}


@pytest.mark.parametrize("preset", ["vdvae-mnist-tiny", "dctvae-mnist-tiny"])
def test_posterior_samples_with_zero_noise_are_the_posterior_means(preset):
    torch.manual_seed(0)
    model = build_model(get_preset(preset).model).eval()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    zeros = [torch.zeros_like(t) for t in model.make_noise(3, torch.Generator().manual_seed(2))]
    noise = model.make_noise(3, torch.Generator().manual_seed(3))
    k = model.num_layers
    with torch.no_grad():
        assert torch.equal(
            model.reconstruct(x, k, 0.1, zeros, posterior_sample=True), model.reconstruct(x, k, 0.1, zeros)
        )
        a = model.reconstruct(x, k, 0.1, noise, posterior_sample=True)
        b = model.reconstruct(x, k, 0.1, noise)
    assert not torch.equal(a, b)  # the samples do move the image


def test_last_iterate_is_kept_beside_the_best():
    torch.manual_seed(0)
    model = build_model(get_preset("vdvae-mnist-tiny").model).eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    atk = LatentPGD(model, k=2, eps=0.1, steps=3)
    adv = atk(x, seeds=[0, 1, 2, 3])
    assert torch.equal(adv, x + atk.best_delta)
    assert atk.last_delta.abs().max() <= 0.1 + 1e-6 and ((x + atk.last_delta) >= 0).all()
    # the last iterate is the one whose loss was recorded last
    ref = atk.objective.reference(x)
    torch.testing.assert_close(atk.objective(x + atk.last_delta, ref), atk.loss_history[-1])


def _run(trained, tmp_path, name: str, **cfg) -> pd.DataFrame:
    base = dict(
        optimizer="pgd", layers="1,2", points=8, restarts=2, steps=20, floor_draws=3, noise_draws=1, gallery_points=0
    )
    return robustvae.attack([trained], AttackConfig(**{**base, **cfg}), tmp_path / name, device="cpu").records


def test_disabled_attack_equals_its_no_attack_level_under_both_rules(trained, tmp_path):
    """eps = 0: the attacked score is the no-attack score, row by row (same rule, same noise, delta = 0)."""
    for rule in ("default", "authors"):
        df = _run(trained, tmp_path, rule, eps=0.0, recon=rule, restarts=2)
        att = df[df.kind == "attack"].set_index(["k", "point", "restart"]).msssim
        base = df[df.kind == "no_attack"].set_index(["k", "point", "restart"]).msssim
        assert len(att) == len(base) == 2 * 8 * 2
        assert (att - base.reindex(att.index)).abs().max() == 0.0
        assert (df[df.kind == "attack"].delta_linf == 0).all()
        if rule == "default":
            assert base.min() > 0.9999  # the same image under the same noise
        else:
            assert base.mean() < 0.999  # two independent draws differ even without an attack
        assert set(df.recon) == {rule} and set(df.temperature_convention) == {RECON_RULES[rule].convention}


def test_checks_pass_for_a_real_attack_and_fail_for_a_disabled_one(trained, tmp_path):
    names = {"attack below the no-attack level", "attack did measurable damage"}
    results = {}
    for name, eps in (("real", 0.1), ("disabled", 0.0)):
        _run(trained, tmp_path, name, eps=eps)
        runs = load_runs([tmp_path / name])
        checks = agg.checks(runs, agg.summarise(runs.records))
        results[name] = checks[checks.check.isin(names)]
    assert len(results["real"]) == len(results["disabled"]) == 4  # two checks x k = 1, 2
    assert results["real"].passed.all(), results["real"].detail.tolist()
    assert not results["disabled"].passed.any()


def test_rules_are_separate_panels_in_one_report(trained, tmp_path):
    for rule in ("default", "authors"):
        _run(trained, tmp_path, rule, recon=rule, points=4, steps=5)
    res = robustvae.report([tmp_path / "default", tmp_path / "authors"], tmp_path / "report")
    table = res.table
    assert set(table.recon) == {"default", "authors"} and len(table) == 4
    authors = table[table.recon == "authors"]
    assert (authors.no_attack < 1).all()
    assert (authors.drop_mean - (authors.no_attack - authors["mean"])).abs().max() < 1e-9
    assert len(res.summary["atlas"]) > 0 and "marginal" in res.summary["atlas"][0]
