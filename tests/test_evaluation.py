"""Evaluation: active units against a brute-force variance, the reported numbers' consistency, and the
batched importance sampling (its noise, its passes, its memory budget, Ctrl-C)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustvae.errors import Interrupted, RobustVAEError
from robustvae.evaluation import (
    active_units,
    bytes_per_row,
    evaluate_model,
    image_generator,
    plan_chunks,
    posterior_mean_variance,
)
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
    assert list(res) == [
        "images",
        "iw_samples",
        "nelbo_nats",
        "elbo_nats",
        "nll_nats",
        "nelbo_bpd",
        "nll_bpd",
        "kl_nats",
        "active_units",
        "total_units",
        "layers",
    ]
    assert all(
        list(row) == ["layer", "resolution", "shape", "units", "kl_nats", "active_units"] for row in res["layers"]
    )


def _dct_model(x):
    torch.manual_seed(0)
    m = build_model(get_preset("dctvae-mnist-tiny").model)
    m.fit_data(x)
    return m.eval()


@pytest.mark.parametrize("arch", ["vdvae", "dctvae"])
def test_noise_drives_exactly_the_draws_the_model_would_make(arch, gen):
    """Given the numbers torch's generator would draw, in its order, the weights are the same."""
    x = torch.bernoulli(torch.rand(3, 1, 28, 28, generator=gen), generator=gen)
    m = _model() if arch == "vdvae" else _dct_model(x)
    k, B = 4, x.shape[0]
    gaussian = [info.shape for info in m.layers if not info.deterministic]
    with torch.no_grad():
        torch.manual_seed(7)
        drawn = m.log_importance_weights(x, k)
        torch.manual_seed(7)
        noise = [torch.randn(k * B, *s).view(k, B, *s) for s in gaussian]
        if arch == "dctvae":  # the context bound draws after the ladder: (T * B, C, c, c) in t-major order
            noise.insert(0, torch.randn(m.prior.steps * B, *m.prior.shape).view(m.prior.steps, B, *m.prior.shape))
        given_noise = m.log_importance_weights(x, k, noise=noise)
    torch.testing.assert_close(given_noise, drawn, rtol=0, atol=0)


@given(n=st.integers(1, 9), k=st.integers(1, 40), rows=st.integers(1, 100))
@settings(max_examples=60, deadline=None)
def test_the_passes_cover_every_image_and_sample_once_within_the_budget(n, k, rows):
    chunks = plan_chunks(n, k, rows)
    seen = sorted((i, j) for c in chunks for i in c.images for j in c.samples)
    assert seen == [(i, j) for i in range(n) for j in range(k)]
    assert all(c.rows <= max(rows, 1) or (len(c.images) == 1 and len(c.samples) == 1) for c in chunks)
    # as even as possible: no pass below half the largest unless it is the only way to cover the rest
    sizes = [c.rows for c in chunks]
    assert len(chunks) == 1 or min(sizes) * 2 >= max(sizes) - max(len(c.samples) for c in chunks)


@pytest.mark.parametrize("arch", ["vdvae", "dctvae"])
def test_nll_does_not_depend_on_the_memory_budget_or_the_batch_size(arch, gen):
    """Image i's samples come from its own generator, so the passes' shape changes nothing but rounding."""
    x = torch.bernoulli(torch.rand(5, 1, 28, 28, generator=gen), generator=gen)
    m = _model() if arch == "vdvae" else _dct_model(x)
    runs = [
        evaluate_model(m, x, iw_samples=12, batch_size=b, max_batch_mib=mib, quiet=True)
        for b, mib in ((5, 1000), (5, 1), (2, 2))
    ]  # one pass; passes splitting an image's samples; mixed
    assert bytes_per_row(m, x[:1]) * 12 > 2**20 / 1.1  # at 1 MiB an image's 12 samples take several passes
    for r in runs[1:]:
        assert r["nll_nats"] == pytest.approx(runs[0]["nll_nats"], rel=1e-6)
    # the ELBO and the layers' KLs draw one sample per image batch by batch: the same for the same --batch-size
    assert runs[1]["nelbo_nats"] == runs[0]["nelbo_nats"] and runs[1]["layers"] == runs[0]["layers"]
    # another seed draws other samples; the same seed the same
    other = evaluate_model(m, x, iw_samples=12, batch_size=5, seed=1, quiet=True)
    assert other["nll_nats"] != runs[0]["nll_nats"]
    assert (
        image_generator(0, 3).initial_seed()
        == image_generator(0, 3).initial_seed()
        != image_generator(1, 3).initial_seed()
    )


def test_bytes_per_row_grows_with_the_model_and_is_positive():
    small = bytes_per_row(_model(), torch.zeros(1, 1, 28, 28))
    torch.manual_seed(0)
    big = bytes_per_row(build_model(get_preset("vdvae-mnist").model).eval(), torch.zeros(1, 1, 28, 28))
    assert 0 < small < big < 2 * 2**20  # vdvae-mnist: about 0.55 MB per importance sample


def test_bad_budget_is_an_error_and_ctrl_c_stops_cleanly(gen, monkeypatch):
    m = _model()
    x = torch.bernoulli(torch.rand(4, 1, 28, 28, generator=gen), generator=gen)
    with pytest.raises(RobustVAEError, match="--max-batch-mib must be a positive integer"):
        evaluate_model(m, x, iw_samples=4, max_batch_mib=0, quiet=True)
    calls = []
    real = m.log_importance_weights

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:  # the memory probe makes two calls; stop in the second pass
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(m, "log_importance_weights", interrupted)
    with pytest.raises(
        Interrupted, match=r"eval interrupted by Ctrl-C after 8 of 16 importance samples; nothing written"
    ):
        evaluate_model(m, x, iw_samples=4, batch_size=4, max_batch_mib=1, quiet=True)
