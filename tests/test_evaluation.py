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


def test_dctvae_reports_its_context_separately_from_the_gaussian_layers(gen):
    torch.manual_seed(0)
    m = build_model(get_preset("dctvae-mnist-tiny").model)
    x = torch.bernoulli(torch.rand(12, 1, 28, 28, generator=gen), generator=gen)
    m.fit_data(x)
    m.eval()
    res = evaluate_model(m, x, iw_samples=8, batch_size=5, quiet=True)
    ctx, *gauss = res["layers"]
    assert ctx["kind"] == "context" and ctx["active_units"] is None and ctx["shape"] == [1, 6, 6]
    assert res["context_nats"] == ctx["kl_nats"] > 0
    assert abs(res["context_nats"] + res["gaussian_kl_nats"] - res["kl_nats"]) < 1e-6
    assert res["active_units"] == sum(row["active_units"] for row in gauss)
    assert res["total_units"] == sum(row["units"] for row in gauss)
    # levels used per coefficient, brute force over the images
    with torch.no_grad():
        y = m.encode(x, 1)[0].mean.flatten(1)
    used = [len(set(y[:, j].tolist())) for j in range(y.shape[1])]
    assert ctx["levels"] == 4 and abs(ctx["levels_used"] - sum(used) / len(used)) < 1e-9
    assert ctx["varying_units"] == sum(u > 1 for u in used)
    assert 0 < res["nll_nats"] < res["nelbo_nats"]


def test_vdvae_results_keep_their_keys(gen):
    res = evaluate_model(_model(), torch.rand(4, 1, 28, 28, generator=gen), iw_samples=2, batch_size=4, quiet=True)
    assert list(res) == ["images", "iw_samples", "nelbo_nats", "elbo_nats", "nll_nats", "nelbo_bpd", "nll_bpd",
                         "kl_nats", "active_units", "total_units", "layers"]
    assert all(list(row) == ["layer", "resolution", "shape", "units", "kl_nats", "active_units"] for row in res["layers"])
