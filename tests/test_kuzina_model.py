"""The kuzina-ladder family through the model contract, and its true bound checked against independent references."""

from __future__ import annotations

import math

import pytest
import torch

from robustvae.models.contract import HierarchicalVAE
from robustvae.models.distributions import DiagGaussian, PointMass
from robustvae.models.kuzina.context import KuzinaDCTContext
from robustvae.models.kuzina.prior import KuzinaDiffusionPrior
from robustvae.registry import build_model, get_preset

TINY = "kuzina-dctvae-mnist-tiny"


def _model(preset: str = TINY, seed: int = 0, context: str | None = None):
    torch.manual_seed(seed)
    cfg = get_preset(preset).model
    if context is not None:
        import dataclasses

        cfg = dataclasses.replace(cfg, context=context)
    m = build_model(cfg)
    with torch.no_grad():  # a generic network: open the zero-initialised gates and output convolutions
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    m.fit_data(torch.rand(64, 1, 28, 28))
    return m.eval()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("context", ["dct", "none"])
def test_the_contract_holds(context):
    m = _model(context=context)
    assert isinstance(m, HierarchicalVAE) and m.arch == "kuzina-ladder"
    x = _images(3)
    L = m.num_layers
    assert L == 3 if context == "dct" else 2
    qs = m.encode(x)
    assert len(qs) == L and [tuple(q.mean.shape[1:]) for q in qs] == [info.shape for info in m.layers]
    assert isinstance(qs[0], PointMass if context == "dct" else DiagGaussian)
    assert (m.layers[0].kind == "context") == (context == "dct") and m.layers[0].deterministic == (context == "dct")
    for k in range(L + 1):
        prefix = m.encode(x, k)
        assert len(prefix) == k and all(torch.allclose(a.mean, b.mean) for a, b in zip(prefix, qs))
    noise = m.make_noise(3, torch.Generator().manual_seed(0))
    r1, r2 = m.reconstruct(x, 1, noise=noise), m.reconstruct(x, 1, noise=noise)
    assert r1.shape == x.shape and torch.equal(r1, r2) and 0 <= r1.min() and r1.max() <= 1
    drawn = m.reconstruct(x, L, noise=noise, posterior_sample=True)  # the authors' rule: posterior samples
    assert torch.equal(drawn, m.reconstruct(x, L, noise=noise, posterior_sample=True)) and not torch.equal(drawn, r1)
    out = m.elbo(x)
    assert out.kl.shape == (3, L) and torch.isfinite(out.nelbo).all()
    assert m.sample(2, noise=m.make_noise(2)).shape == (2, 1, 28, 28)
    assert m.nll_iwae(x, 3).shape == (3,) and m.nll_authors(x, 2).shape == (3,)


def test_the_dither_is_off_for_attacks_unless_asked_and_always_on_in_the_objective():
    m = _model()
    x = _images(8)
    levels = m.codec.output_values()
    off = m.encode(x)
    assert set(off[0].mean.unique().tolist()) <= set(levels[1:-1].tolist())  # 2^b levels without dither
    torch.manual_seed(0)
    y1 = m.authors_pass(x, "val").context
    assert not torch.equal(y1, m.authors_pass(x, "val").context)  # their objective draws a fresh dither every call
    m.dither, m.eot_draws = True, 1
    one = m.encode(x)
    assert not torch.equal(one[0].mean, off[0].mean) and set(one[0].mean.unique().tolist()) <= set(levels.tolist())
    assert torch.equal(one[1].mean, m.encode(x)[1].mean)  # fixed draws: deterministic, so attacks stay repeatable


def test_eot_averages_each_draws_posterior_and_reconstruction():
    """With n fixed draws, every quantity is the mean over the draws, each computed on its own (reference)."""
    m = _model()
    x = _images(3)
    m.dither, m.eot_draws = True, 4
    qs, ref = m.encode(x), m.encode(x.flip(0))
    noise = m.make_noise(3, torch.Generator().manual_seed(1))
    rec = m.reconstruct(x, 2, noise=noise)
    from robustvae.models.kuzina.eot import dither_draws

    u = dither_draws(4, (1, 7, 7), x.device)
    m.dither = False
    per_draw, per_ref, per_rec = [], [], []
    for d in range(4):
        m.codec.forward = lambda xx, dither=False, _u=u[d]: KuzinaDCTContext.forward(
            m.codec, xx, _u.expand(len(xx), -1, -1, -1)
        )
        (
            per_draw.append(m.encode(x)),
            per_ref.append(m.encode(x.flip(0))),
            per_rec.append(m.reconstruct(x, 2, noise=noise)),
        )
    del m.codec.forward
    for layer in range(3):
        torch.testing.assert_close(qs[layer].mean, torch.stack([p[layer].mean for p in per_draw]).mean(0))
        want = torch.stack([a[layer].compare(b[layer]) for a, b in zip(per_draw, per_ref)]).mean(0)
        torch.testing.assert_close(qs[layer].compare(ref[layer]), want)
    torch.testing.assert_close(rec, torch.stack(per_rec).mean(0))


def test_the_gradient_reaches_the_image_through_the_context():
    m = _model()
    x = _images(2).requires_grad_(True)
    qs = m.encode(x, 2)
    (qs[0].pre_quant.square().sum() + qs[1].mean.square().sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_the_dithers_posterior_matches_monte_carlo_frequencies():
    """log P(q | v) of the quantiser under its uniform dither, against 40,000 dithered draws per value."""
    codec = KuzinaDCTContext(1, 28, 7, 2)
    v = torch.tensor([-1.0, -0.97, -0.6, -0.1, 0.0, 0.3, 0.49, 0.93, 0.999, 1.0]).view(1, 1, 10, 1)
    draws = codec.quantise(v.expand(40000, -1, -1, -1), dither=True).unsqueeze(1)
    for j in range(10):
        vals, counts = draws[:, 0, 0, j, 0].unique(return_counts=True)
        p = codec.log_prob(v[:, :, j : j + 1].expand(1, 1, len(vals), 1), vals.view(1, 1, -1, 1)).exp().flatten()
        torch.testing.assert_close(p, counts.double().div(40000).float(), atol=0.012, rtol=0)
        assert abs(p.sum().item() - 1) < 1e-6


def _tiny_prior(seed: int = 0) -> KuzinaDiffusionPrior:
    torch.manual_seed(seed)
    support = KuzinaDCTContext(1, 4, 1, 2).output_values()
    # large betas keep the importance weights' variance small, so 8,000 trajectories per value settle the sum to 0.01
    prior = KuzinaDiffusionPrior(
        (1, 1, 1),
        2,
        3,
        support,
        schedule="linear",
        beta_start=0.7,
        beta_end=0.9,
        channels=16,
        scales=1,
        res_blocks=1,
        dropout=0.0,
    )
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return prior.eval()


def test_the_true_context_prior_is_normalised():
    """sum over the 6 context values of E_q[p(y_0:T) / q(y_1:T | y0)] is 1 (a Monte Carlo estimate of each P(y0))."""
    prior = _tiny_prior()
    n = 8000
    with torch.no_grad():
        each = [prior.log_weight(torch.full((n, 1, 1, 1), float(v))).exp().mean().item() for v in prior.support]
    assert abs(sum(each) - 1) < 0.03
    assert max(each) > 1.5 * min(each)  # not a uniform prior: the network shapes it


def test_their_discretised_step_is_not_normalised_but_the_true_bounds_is():
    prior = _tiny_prior()
    p = DiagGaussian(torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), math.log(0.05)))
    grid = prior.support.view(-1, 1, 1, 1)
    theirs = prior.discretise(p).log_prob(grid).exp().sum()
    assert theirs > 1.3  # overlapping cells: their p(y0 | y1) sums to more than 1
    ours = torch.stack([prior.normalised_log_prob(p, v.view(1, 1, 1, 1)) for v in prior.support]).exp().sum()
    assert abs(ours.item() - 1) < 1e-5


def test_the_true_bound_tightens_with_more_samples():
    m = _model()
    x = _images(4, seed=3)
    torch.manual_seed(0)
    with torch.no_grad():
        k1 = torch.stack([m.nll_iwae(x, 1) for _ in range(6)]).mean(0)
        k16 = torch.stack([m.nll_iwae(x, 16) for _ in range(6)]).mean(0)
    assert (k16 <= k1 + 0.5).all()


def test_train_mode_scores_one_diffusion_step_times_t_and_eval_mode_all_steps():
    m = _model()
    x = _images(4)
    y = m.codec(x).value
    torch.manual_seed(0)
    all_steps = m.prior.bound(y, all_steps=True)
    with torch.no_grad():
        one = m.prior.bound(y.repeat(200, 1, 1, 1), all_steps=False).view(200, -1).mean(0)
    torch.testing.assert_close(one, all_steps, rtol=0.25, atol=1.0)  # an unbiased one-step estimate of the sum


@pytest.mark.parametrize("context", ["dct", "none"])
def test_iw_noise_drives_exactly_the_draws_the_bound_would_make(context):
    """Given the numbers torch's generator would draw, in its order, the true bound's weights are the same:
    the binarisation (B, C, H, W), then per pass the dither (K B, C, c, c), the trajectory (T, K B, C, c, c)
    and one (K B, *shape) per Gaussian layer, all sample-major."""
    m = _model(context=context)
    x, k, B = _images(3, seed=1), 4, 3
    gaussian = [info.shape for info in m.layers if not info.deterministic]
    with torch.no_grad():
        torch.manual_seed(7)
        drawn = m.log_importance_weights(x, k)
        torch.manual_seed(7)
        noise = [torch.rand(B, 1, 28, 28).unsqueeze(0)]
        if context == "dct":
            s, T = m.layers[0].shape, m.prior.steps
            noise.append(torch.rand(k * B, *s).view(k, B, *s))
            noise.append(torch.randn(T * k * B, *s).view(T, k, B, *s).permute(1, 2, 0, 3, 4, 5))
        noise += [torch.randn(k * B, *s).view(k, B, *s) for s in gaussian]
        given = m.log_importance_weights(x, k, noise=noise)
    assert m.iw_shared_noise == 1 and [t.shape[1:] for t in m.iw_noise(k)] == [t.shape[2:] for t in noise]
    torch.testing.assert_close(given, drawn, rtol=0, atol=0)


def test_the_evaluations_bound_does_not_depend_on_the_memory_budget():
    """Each image's noise comes from its own generator: one pass, or an image's samples split over passes,
    give the same NLL; the authors' estimate is made beside it, and repeats with the same seed."""
    from robustvae.evaluation import bytes_per_row, evaluate_model

    m, x = _model(), _images(4, seed=2)
    runs = [
        evaluate_model(m, x, iw_samples=6, batch_size=b, max_batch_mib=mib, quiet=True, estimator="both")
        for b, mib in ((4, 1000), (2, 1))
    ]
    assert bytes_per_row(m, x[:1]) * 6 > 2**20 / 1.1  # at 1 MiB the 6 samples of an image take several passes
    assert runs[1]["nll_nats"] == pytest.approx(runs[0]["nll_nats"], rel=1e-6)
    assert math.isfinite(runs[0]["nll_authors_nats"]) and runs[0]["estimator"] == "both"
    again = evaluate_model(m, x, iw_samples=6, batch_size=4, max_batch_mib=1000, quiet=True, estimator="both")
    assert again["nll_authors_nats"] == runs[0]["nll_authors_nats"]
