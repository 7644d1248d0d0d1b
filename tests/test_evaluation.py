"""Evaluation: active units against a brute-force variance, and the reported numbers' consistency."""

from __future__ import annotations

import torch

from robustvae.evaluation import active_units, evaluate_model, posterior_mean_variance
from robustvae.registry import build_model, get_preset


def _model():
    torch.manual_seed(0)
    m = build_model(get_preset("vdvae-mnist-tiny").model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def test_posterior_mean_variance_and_active_units_match_brute_force(gen):
    m = _model()
    x = torch.bernoulli(torch.rand(37, 1, 28, 28, generator=gen), generator=gen)
    got = posterior_mean_variance(m, x, batch_size=8, device=torch.device("cpu"))
    with torch.no_grad():
        ref = [torch.var(q.mean.flatten(1).double(), dim=0, unbiased=False).float() for q in m.encode(x)]
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    # active units: brute-force count over every unit
    for thr in (0.0, 0.01, 0.1):
        brute = [sum(1 for v in r.tolist() if v > thr) for r in ref]
        assert active_units(got, thr) == brute


def test_evaluate_model_is_consistent(gen):
    m = _model()
    x = torch.bernoulli(torch.rand(12, 1, 28, 28, generator=gen), generator=gen)
    res = evaluate_model(m, x, iw_samples=50, batch_size=6, quiet=True)
    assert res["images"] == 12 and len(res["layers"]) == m.num_layers
    assert abs(sum(layer["kl_nats"] for layer in res["layers"]) - res["kl_nats"]) < 1e-6
    assert 0 < res["nll_nats"] < res["nelbo_nats"]
    assert abs(res["nll_bpd"] - res["nll_nats"] / (784 * 0.6931471805599453)) < 1e-9
    assert res["total_units"] == sum(info.dims for info in m.layers)
    again = evaluate_model(m, x, iw_samples=50, batch_size=6, quiet=True)
    assert again["nll_nats"] == res["nll_nats"]  # seeded: repeatable
