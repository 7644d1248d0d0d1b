"""``--max-batch-mib`` bounds an attack even when one point's restarts exceed it: the unit runs its images in
passes (``Unit.rows``), and the passes give the results of one batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import perturbed_model

import robustvae
from robustvae.config import AttackConfig
from robustvae.experiments import attack as sweep
from robustvae.experiments.models import load_models


@pytest.mark.parametrize("optimizer", ["pgd", "auto"])
def test_restarts_beyond_the_budget_run_in_passes_with_the_batchs_results(monkeypatch, optimizer):
    model = perturbed_model("openai-vdvae-tiny")
    cfg = AttackConfig(
        layers="1,3",
        points=2,
        restarts=3,
        steps=4,
        optimizer=optimizer,
        floor_draws=0,
        noise_draws=0,
        unrelated_draws=0,
        gallery_points=0,
        max_batch_mib=64,
    )
    whole = robustvae.attack([model], cfg, data="synthetic-rgb", device="cpu").records
    real = sweep.bytes_per_sample
    per = {}

    def huge(model, k, cfg, device):  # as if one attacked image needed 40 MiB: a 64 MiB budget holds 1 per pass
        per[k] = real(model, k, cfg, device)
        return 40 * 2**20

    monkeypatch.setattr(sweep, "bytes_per_sample", huge)
    units = sweep.plan_units(load_models([model], torch.device("cpu"), "synthetic-rgb"), cfg, torch.device("cpu"))
    assert [(u.start, u.stop, u.rows) for u in units] == [(0, 1, 1), (1, 2, 1)] * 2  # 1 point, its 3 restarts 1 by 1
    passes = robustvae.attack([model], cfg, data="synthetic-rgb", device="cpu").records
    key = ["k", "point", "restart", "kind"] + (["member"] if optimizer == "auto" else [])
    a, b = (r[r.kind == "attack"].sort_values(key).reset_index(drop=True) for r in (whole, passes))
    assert len(a) == len(b) == 2 * 2 * 3 * (1 if optimizer == "pgd" else a.member.nunique())
    assert np.isfinite(b.msssim).all() and b.unit.str.endswith(("points=0-0", "points=1-1")).all()
    if optimizer == "pgd":  # the skl objective: each image's path is its own, whatever the batch
        for col in ("msssim", "final_loss", "delta_linf"):
            np.testing.assert_allclose(b[col].to_numpy(), a[col].to_numpy(), rtol=1e-4, atol=1e-6, err_msg=col)
    # (the ensemble's reconstruction member works at this random tiny model's MS-SSIM rounding floor, ~1e-5, where
    # the batch's summation order alone moves its path: only its rows and their finiteness are compared)
    assert all(v < 40 * 2**20 for v in per.values())  # the estimate really was replaced
