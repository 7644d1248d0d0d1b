"""VDVAE, DCT-VAE and openai-vdvae: structure, the public API the attack engine relies on, and the likelihood bounds."""

from __future__ import annotations

import math

import pytest
import torch

from robustvae import zoo
from robustvae.config import ModelConfig
from robustvae.models.distributions import PointMass
from robustvae.registry import build_model, get_preset

TINY = ["vdvae-mnist-tiny", "vdvae-cifar10-tiny", "dctvae-mnist-tiny", "openai-vdvae-tiny"]


def _model(preset: str, seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(get_preset(preset).model)
    # leave the zero-initialised prior: perturb every weight so tests see a generic network
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        if hasattr(m, "fit_data"):  # DCT-VAE: a context scale from data, not the default 1
            m.fit_data(torch.rand(64, m.cfg.image_channels, m.cfg.image_size, m.cfg.image_size))
    return m.eval()


def _params(q) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensors that define a posterior: (mean, logvar), or (value, pre_quant) for a point mass."""
    return (q.mean, q.pre_quant) if isinstance(q, PointMass) else (q.mean, q.logvar)


def _images(model, n: int, gen: torch.Generator) -> torch.Tensor:
    c, s = model.cfg.image_channels, model.cfg.image_size
    x = torch.rand(n, c, s, s, generator=gen)
    return torch.bernoulli(x, generator=gen) if model.cfg.likelihood == "bernoulli" else x


def test_paper_layer_shapes():
    mnist = build_model(get_preset("vdvae-mnist").model)
    assert mnist.num_layers == 8
    assert mnist.layer_shapes == [(1, 7, 7)] * 4 + [(1, 14, 14)] * 4
    cifar = build_model(get_preset("vdvae-cifar10").model)
    assert cifar.num_layers == 29
    assert [s[1] for s in cifar.layer_shapes] == [1] + [4] * 3 + [8] * 5 + [16] * 10 + [32] * 10
    assert all(s[0] == 8 for s in cifar.layer_shapes)
    assert [info.index for info in cifar.layers] == list(range(1, 30))


def test_prior_starts_at_standard_normal(gen):
    torch.manual_seed(0)
    m = build_model(get_preset("vdvae-mnist-tiny").model)
    td = m._top_down(3, None, n_posterior=0)
    for p in td.priors:
        assert torch.all(p.mean == 0) and torch.all(p.logvar == 0)


@pytest.mark.parametrize("preset", TINY)
def test_build_forward_backward_save_load_reconstruct(preset, tmp_path, gen):
    m = _model(preset)
    m.train()
    x = _images(m, 4, gen)
    r = m.elbo(x)
    L = m.num_layers
    assert r.kl.shape == (4, L) and r.recon.shape == (4,) and r.nelbo.shape == (4,)
    torch.testing.assert_close(r.nelbo, r.recon + r.kl.sum(1))
    torch.testing.assert_close(r.bpd, r.nelbo / (m.num_pixels * math.log(2)))
    assert torch.all(r.kl >= 0) and torch.all(r.recon > 0)
    r.nelbo.mean().backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    m.eval()
    cfg = get_preset(preset)
    path = tmp_path / "m.pt"
    zoo.atomic_save(zoo.make_checkpoint(cfg, m), path)
    loaded = zoo.load(path)
    noise = m.make_noise(4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = m.reconstruct(x, k=1, noise=noise)
        b = loaded.model.reconstruct(x, k=1, noise=noise)
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert loaded.sha256 == zoo.sha256_file(path) and not loaded.model.training
    assert loaded.config == cfg and loaded.path == str(path)


@pytest.mark.parametrize("preset", TINY)
def test_reconstruct_with_shared_noise_is_deterministic(preset, gen):
    m = _model(preset)
    x = _images(m, 3, gen)
    L = m.num_layers
    n1 = m.make_noise(3, torch.Generator().manual_seed(5))
    n2 = m.make_noise(3, torch.Generator().manual_seed(6))
    with torch.no_grad():
        for k in range(L):
            assert torch.equal(m.reconstruct(x, k, noise=n1), m.reconstruct(x, k, noise=n1))
            assert not torch.equal(m.reconstruct(x, k, noise=n1), m.reconstruct(x, k, noise=n2))
        # with every layer from the posterior mean the noise plays no part
        assert torch.equal(m.reconstruct(x, L, noise=n1), m.reconstruct(x, L, noise=n2))
        # k = 0 is an unconditional sample
        torch.testing.assert_close(m.reconstruct(x, 0, temperature=0.7, noise=n1), m.sample(3, 0.7, noise=n1))


@pytest.mark.parametrize("preset", ["vdvae-mnist-tiny", "dctvae-mnist-tiny"])
def test_reconstruct_is_differentiable_in_x(preset, gen):
    m = _model(preset)
    x = torch.rand(2, 1, 28, 28, generator=gen, requires_grad=True)
    noise = m.make_noise(2, torch.Generator().manual_seed(0))
    m.reconstruct(x, k=2, noise=noise).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("preset", TINY)
def test_encode_is_top_first_prefix_consistent_and_per_image(preset, gen):
    m = _model(preset)
    x = _images(m, 3, gen)
    with torch.no_grad():
        qs = m.encode(x)
        assert [tuple(q.mean.shape[1:]) for q in qs] == m.layer_shapes
        for k in range(1, m.num_layers + 1):
            for a, b in zip(m.encode(x, k), qs[:k]):
                for ta, tb in zip(_params(a), _params(b)):
                    torch.testing.assert_close(ta, tb)
        alone = m.encode(x[1:2])
        for a, b in zip(alone, qs):
            torch.testing.assert_close(a.mean, b.mean[1:2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["vdvae-mnist-tiny", "dctvae-mnist-tiny"])
def test_encode_stopping_early_equals_the_full_top_down_pass(preset, gen):
    """encode(x, k) skips the k-th prior net and everything below; a full pass gives the same posteriors."""
    m = _model(preset)
    x = _images(m, 3, gen)
    ctx = m.codec.decode(m.codec(x).value) if hasattr(m, "codec") else None
    L = len(m._ladder)
    with torch.no_grad():
        full = m._top_down(3, m._encoder(x), n_posterior=L, context=ctx).posteriors
        for k in range(1, L + 1):
            early = m._encode_ladder(x, k, False, None, ctx)
            assert len(early) == k
            for a, b in zip(early, full[:k]):
                torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
                torch.testing.assert_close(a.logvar, b.logvar, rtol=0, atol=0)


def _weights_in(m, fmt) -> bool:
    return all(p.is_contiguous(memory_format=fmt) for p in m.parameters() if p.dim() == 4)


@pytest.mark.parametrize("preset", TINY)
def test_channels_last_layout_gives_the_same_results(preset, gen):
    """The default channels-last weights are a layout choice only: ELBO, posteriors and the gradient in x agree."""
    m = _model(preset)
    assert m.channels_last and _weights_in(m, torch.channels_last)
    x = _images(m, 3, gen)
    noise = m.make_noise(3, torch.Generator().manual_seed(0))

    def run():
        xr = x.clone().requires_grad_(True)
        torch.manual_seed(0)
        elbo = m.elbo(xr).nelbo
        rec = m.reconstruct(xr, 2, 0.1, noise)
        (grad,) = torch.autograd.grad(elbo.sum() + rec.sum() + m.encode(xr, 2)[-1].mean.sum(), xr)
        return elbo, rec, grad

    got = run()
    m.use_channels_last(False)
    assert not m.channels_last and _weights_in(m, torch.contiguous_format)
    for a, b in zip(got, run()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bad_k_and_bad_shapes_raise(gen):
    m = _model("vdvae-mnist-tiny")
    x = torch.rand(1, 1, 28, 28)
    with pytest.raises(ValueError, match="L=4"):
        m.reconstruct(x, k=5)
    with pytest.raises(ValueError, match="expected images of shape"):
        m.encode(torch.rand(1, 3, 28, 28))


@pytest.mark.parametrize("preset", ["vdvae-mnist-tiny", "dctvae-mnist-tiny", "openai-vdvae-tiny"])
def test_iwae_k1_matches_the_analytic_elbo_in_expectation(preset, gen):
    """E_q[log p(x,z) - log q(z|x)] is the ELBO: the sampled path against the analytic KLs."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = _model(preset)
    x = _images(m, 2, gen)
    with torch.no_grad():
        # 20 independent calls of K = 50: DCT-VAE shares one draw of its context bound within a call
        calls = torch.stack([-m.log_importance_weights(x, 50, chunk=50).double().mean(0) for _ in range(20)])
        nelbo = torch.stack([m.elbo(x).nelbo.double() for _ in range(100)])
    mc, an = calls.mean(0), nelbo.mean(0)
    se = (calls.var(0) / 20 + nelbo.var(0) / 100).sqrt()
    assert torch.all((mc - an).abs() < 5 * se + 1e-3), (mc, an, se)


def _nll_from_seed(m, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Per-image NLL_K with image i's noise from ``iw_noise`` seeded by seed + i, as the evaluation draws it:
    the draws that do not depend on K (DCT-VAE's context bound, drawn first) are the same for every K."""
    per_image = [m.iw_noise(k, torch.Generator().manual_seed(seed + i)) for i in range(x.shape[0])]
    noise = [torch.stack(layer, 1) for layer in zip(*per_image)]
    return -(torch.logsumexp(m.log_importance_weights(x, k, noise=noise).double(), 0) - math.log(k))


def _below(a: torch.Tensor, b: torch.Tensor, z: float = 4.0, paired: bool = False) -> bool:
    """The mean of repeats ``a`` lies below that of ``b`` within ``z`` standard errors of their difference
    (``paired``: repeat r of ``a`` and of ``b`` share their noise, so the difference is taken repeat by repeat)."""
    if paired:
        d = a - b
        return bool(d.mean() < z * d.std() / math.sqrt(len(d)))
    return bool(a.mean() < b.mean() + z * (a.var() / len(a) + b.var() / len(b)).sqrt())


@pytest.mark.parametrize("preset", ["vdvae-mnist-tiny", "dctvae-mnist-tiny", "openai-vdvae-tiny"])
def test_iwae_bound_lies_between_elbo_and_zero_and_tightens_with_k(preset, gen):
    """E[NLL_K] falls with K and lies between 0 and E[-ELBO]; every comparison allows 4 standard errors of the
    difference, estimated from the repeats. The K's of one repeat share its noise: DCT-VAE's context bound, one
    draw for all K samples, once made K = 200 look looser than K = 10 when independent means were compared bare."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = _model(preset)
    x = _images(m, 8, gen)
    seeds = torch.randint(0, 2**31, (8,), generator=gen).tolist()
    with torch.no_grad():
        nelbo = torch.stack([m.elbo(x).nelbo.double().mean() for _ in range(20)])
        per_image = {k: torch.stack([_nll_from_seed(m, x, k, s) for s in seeds]) for k in (1, 10, 200)}
    nll = {k: v.mean(1) for k, v in per_image.items()}  # per repeat: the mean over the images
    assert torch.all(per_image[200].mean(0) > 0)
    assert _below(nll[200], nll[10], paired=True) and _below(nll[10], nll[1], paired=True)
    assert _below(nll[200], nll[1], z=-4.0, paired=True)  # and K = 1 -> 200 tightens by more than 4 standard errors
    assert _below(nll[200], nelbo)
    assert (nll[1].mean() - nelbo.mean()).abs() < 0.05 * nelbo.mean()


def test_weight_norm_and_dmol_config_builds(gen):
    cfg = ModelConfig(
        image_channels=3,
        image_size=8,
        likelihood="dmol",
        num_mixtures=2,
        channels=4,
        hidden=4,
        latents=((4, 1), (1, 1)),
        z_dim=2,
        weight_norm=True,
        dmol_bits=5,
    )
    m = build_model(cfg)
    x = torch.rand(2, 3, 8, 8, generator=gen)
    r = m.elbo(x)
    assert torch.isfinite(r.nelbo).all()
    assert m.reconstruct(x, 1).shape == x.shape
