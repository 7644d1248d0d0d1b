"""DCT-VAE: the context layer in the model API, presets, configs, checkpoints and training.

The API tests shared with VDVAE (build, forward, backward, save, load, shared-noise
determinism, prefix-consistent encode, IWAE bounds) run in tests/test_models.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import tiny_config
from robustvae import zoo
from robustvae.config import ModelConfig
from robustvae.data import load_dataset
from robustvae.errors import ConfigError
from robustvae.models import DCTVAE, PointMass
from robustvae.models.context import DCTContext, DownsampleContext, dct2, idct2
from robustvae.models.distributions import snap_to_levels
from robustvae.registry import build_model, get_preset
from robustvae.training import Trainer

CPU = torch.device("cpu")


def _model(preset: str = "dctvae-mnist-tiny", seed: int = 0, fit: torch.Tensor | None = None) -> DCTVAE:
    torch.manual_seed(seed)
    m = build_model(get_preset(preset).model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    m.fit_data(fit if fit is not None else torch.rand(64, 1, 28, 28))
    return m.eval()


def _binary(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.bernoulli(torch.rand(n, 1, 28, 28, generator=gen), generator=gen)


def test_paper_presets_follow_table_6():
    m = get_preset("dctvae-mnist").model
    assert (m.arch, m.context, m.context_size, m.context_bits) == ("dctvae", "dct", 6, 2)
    assert m.latents == ((14, 4), (7, 3)) and m.num_layers == 8 and m.num_gaussian_layers == 7
    assert (m.diffusion_steps, m.diffusion_scales, m.diffusion_res_blocks, m.diffusion_channels) == (7, 1, 3, 32)
    assert m.diffusion_beta_start < m.diffusion_beta_end
    assert get_preset("dctvae-omniglot").model == dataclasses.replace(m, context_size=7)
    assert get_preset("dctvae-mnist-downsample").model == dataclasses.replace(m, context="downsample")
    assert get_preset("dctvae-mnist").train == get_preset("vdvae-mnist").train
    c = get_preset("dctvae-cifar10").model
    assert c.latents == ((32, 10), (16, 10), (8, 5), (4, 2), (1, 1)) and c.num_layers == 29
    assert (c.image_channels, c.context_size, c.context_bits, c.likelihood) == (3, 6, 5, "dmol")
    assert (c.diffusion_steps, c.diffusion_scales, c.diffusion_res_blocks, c.diffusion_channels) == (40, 2, 3, 64)
    mnist = build_model(m)
    assert [info.kind for info in mnist.layers] == ["context"] + ["gaussian"] * 7
    assert mnist.layer_shapes == [(1, 6, 6)] + [(1, 7, 7)] * 3 + [(1, 14, 14)] * 4
    assert [info.index for info in mnist.layers] == list(range(1, 9))
    assert get_preset("dctvae-mnist-tiny").data.name == "mnist-offline"


def test_make_noise_has_one_entry_per_layer_with_the_diffusion_noise_first():
    m = _model()
    T = m.cfg.diffusion_steps
    noise = m.make_noise(5, torch.Generator().manual_seed(0))
    assert len(noise) == m.num_layers
    assert noise[0].shape == (5, T + 1, 1, 6, 6)
    assert [tuple(n.shape[1:]) for n in noise[1:]] == m.layer_shapes[1:]
    again = m.make_noise(5, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(noise, again))


def test_encode_gives_the_context_as_a_point_mass(gen):
    m = _model()
    x = _binary(4, gen).requires_grad_()
    q = m.encode(x)
    assert isinstance(q[0], PointMass) and all(not isinstance(p, PointMass) for p in q[1:])
    ref = (dct2(x.detach())[..., :6, :6] / m.codec.scale).clamp(-1, 1)
    torch.testing.assert_close(q[0].pre_quant.detach(), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(q[0].mean, snap_to_levels(q[0].pre_quant.detach(), 4))
    assert torch.equal(q[0].sample(torch.randn(4, 1, 6, 6)), q[0].mean)
    q[0].pre_quant.pow(2).sum().backward()
    assert x.grad.abs().sum() > 0


def test_reconstruct_with_k1_depends_on_the_image_only_through_its_context(gen):
    m = _model()
    x = _binary(3, gen)
    coef = dct2(x)
    high = torch.randn(coef.shape, generator=gen) * 0.3
    high[..., :6, :6] = 0  # change only frequencies outside the context block
    x2 = idct2(coef + high)
    noise = m.make_noise(3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(m.encode(x2, 1)[0].pre_quant, m.encode(x, 1)[0].pre_quant, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m.reconstruct(x2, 1, noise=noise), m.reconstruct(x, 1, noise=noise))
        assert not torch.allclose(m.reconstruct(x2, 2, noise=noise), m.reconstruct(x, 2, noise=noise))
        # k = 0 takes the context from the diffusion prior, driven by the context noise only
        other = [noise[0].roll(1, 0)] + noise[1:]
        assert not torch.equal(m.reconstruct(x, 0, noise=noise), m.reconstruct(x, 0, noise=other))
        assert torch.equal(m.reconstruct(x, 1, noise=noise), m.reconstruct(x, 1, noise=other))


def test_elbo_column_0_is_the_diffusion_bound_and_the_weights_subtract_it(gen):
    m = _model()
    x = _binary(3, gen)
    with torch.no_grad():
        y = m.encode(x, 1)[0].mean
        ctx = m.codec.decode(y)
        torch.manual_seed(3)
        r = m.elbo(x)
        torch.manual_seed(3)
        kl, recon = m._elbo_ladder(x, ctx)
        bound = m.prior.bound(y, all_steps=True)
        torch.manual_seed(4)
        logw = m.log_importance_weights(x, 6)
        torch.manual_seed(4)
        ladder = m._log_weights_ladder(x, 6, None, ctx)
        bound_w = m.prior.bound(y, all_steps=True)
    assert r.kl.shape == (3, m.num_layers)
    torch.testing.assert_close(r.kl[:, 0], bound)
    torch.testing.assert_close(r.kl[:, 1:], kl)
    torch.testing.assert_close(r.nelbo, recon + bound + kl.sum(1))
    torch.testing.assert_close(logw, ladder - bound_w)
    assert torch.all(r.kl[:, 0] > 0)


def test_sampling_gives_images_of_the_right_shape_and_range():
    m = _model()
    noise = m.make_noise(6, torch.Generator().manual_seed(2))
    a = m.sample(6, 0.8, noise=noise)
    assert a.shape == (6, 1, 28, 28) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, m.sample(6, 0.8, noise=noise))
    assert m.sample(3).shape == (3, 1, 28, 28)


def test_checkpoint_round_trip_keeps_the_context_scale(tmp_path, gen):
    data = _binary(40, gen)
    m = _model(fit=data)
    expected = dct2(data)[..., :6, :6].abs().amax(0)
    torch.testing.assert_close(m.codec.scale, expected)
    cfg = get_preset("dctvae-mnist-tiny")
    zoo.atomic_save(zoo.make_checkpoint(cfg, m), tmp_path / "m.pt")
    loaded = zoo.load(tmp_path / "m.pt").model
    assert torch.equal(loaded.codec.scale, m.codec.scale)
    x = _binary(4, gen)
    noise = m.make_noise(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for k in (0, 1, 2):
            assert torch.equal(loaded.reconstruct(x, k, noise=noise), m.reconstruct(x, k, noise=noise))


def test_training_fits_the_scale_on_the_training_split_only_and_resume_keeps_it(tmp_path, monkeypatch):
    cfg = tiny_config("dctvae-mnist-tiny", steps=2, ema_decay=0.5)
    out = tmp_path / "run"
    Trainer.prepare_dir(out, resume=False, force=False)
    Trainer(cfg, out, CPU, quiet=True).fit()
    ds = load_dataset(cfg.data)
    train_only, with_val = DCTContext(1, 28, 6, 2), DCTContext(1, 28, 6, 2)
    train_only.fit(ds.train.images)
    with_val.fit(torch.cat([ds.train.images, ds.val.images]))
    assert not torch.equal(train_only.scale, with_val.scale)
    ckpt = zoo.read_checkpoint(out / "last.pt")
    assert torch.equal(ckpt["model"]["codec.scale"], train_only.scale)
    assert torch.equal(ckpt["ema"]["module.codec.scale"], train_only.scale)

    def refit(self, images):
        raise AssertionError("a resumed run must restore the scale, not refit it")

    monkeypatch.setattr(DCTVAE, "fit_data", refit)
    Trainer(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=4)), out, CPU, quiet=True).fit(
        resume=True
    )
    ckpt = zoo.read_checkpoint(out / "last.pt")
    assert ckpt["train_state"]["step"] == 4 and torch.equal(ckpt["model"]["codec.scale"], train_only.scale)


def test_a_short_training_lowers_the_bound_and_the_context_term(gen):
    torch.manual_seed(0)
    m = build_model(get_preset("dctvae-mnist-tiny").model)
    x = _binary(32, gen)
    m.fit_data(x)
    m.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        before = m.elbo(x)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    m.train()
    for _ in range(40):
        loss = m.elbo(x).nelbo.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        after = m.elbo(x)
    # on these noise images 40 steps bring the bound to 0.78-0.81 of its start and the context term to
    # 0.35-0.40 (12 fresh draws); the margins keep the check firm without flaking on a lucky draw
    assert after.nelbo.mean() < 0.9 * before.nelbo.mean()
    assert after.kl[:, 0].mean() < 0.6 * before.kl[:, 0].mean()


def test_downsample_context_model_runs(gen):
    x = _binary(2, gen)
    m = _model("dctvae-mnist-downsample", fit=torch.cat([x, _binary(30, gen)]))
    assert isinstance(m.codec, DownsampleContext) and m.layer_shapes[0] == (1, 6, 6)
    with torch.no_grad():
        r = m.elbo(x)
        q = m.encode(x, 1)[0]
        out = m.reconstruct(x, 1, noise=m.make_noise(2))
    assert torch.isfinite(r.nelbo).all() and out.shape == x.shape
    torch.testing.assert_close(q.pre_quant * m.codec.scale, torch.nn.functional.adaptive_avg_pool2d(x, 6) * 2 - 1)


def test_cifar_shaped_dctvae_with_a_two_scale_unet(gen):
    cfg = ModelConfig(
        arch="dctvae",
        image_channels=3,
        image_size=8,
        likelihood="dmol",
        num_mixtures=2,
        channels=4,
        hidden=4,
        latents=((4, 1), (1, 1)),
        z_dim=2,
        weight_norm=True,
        context="dct",
        context_size=5,
        context_bits=5,
        diffusion_steps=4,
        diffusion_beta_start=0.1,
        diffusion_beta_end=0.5,
        diffusion_channels=4,
        diffusion_scales=2,
        diffusion_res_blocks=1,
    )
    m = build_model(cfg)
    x = torch.rand(3, 3, 8, 8, generator=gen)
    m.fit_data(x)
    r = m.elbo(x)
    assert torch.isfinite(r.nelbo).all() and r.kl.shape == (3, 3)
    r.nelbo.mean().backward()
    m.eval()
    assert m.sample(2).shape == (2, 3, 8, 8)
    assert m.encode(x, 1)[0].mean.shape == (3, 3, 5, 5)


@pytest.mark.parametrize(
    "preset, assignment, message",
    [
        ("dctvae-mnist", "model.context_size=30", "the context cannot be larger than the 28x28 image"),
        ("dctvae-mnist", "model.context_size=0", "model.context_size must be in 1..28"),
        ("dctvae-mnist", "model.context_bits=0", "model.context_bits must be in 1..16"),
        ("dctvae-mnist", "model.diffusion_steps=0", "model.diffusion_steps must be at least 1 (T >= 1)"),
        ("dctvae-mnist", "model.context=none", "model.arch=dctvae needs a context"),
        ("dctvae-mnist", "model.context=fft", "model.context must be one of none, dct, downsample"),
        ("dctvae-mnist", "model.diffusion_beta_end=1.5", "0 < start <= end < 1"),
        ("dctvae-mnist", "model.diffusion_channels=0", "model.diffusion_channels must be positive"),
        ("vdvae-mnist", "model.context=dct", "only applies to model.arch=dctvae"),
    ],
)
def test_bad_context_configs_are_rejected_with_a_clear_message(preset, assignment, message):
    with pytest.raises(ConfigError) as e:
        get_preset(preset).override([assignment])
    assert message in str(e.value) and "\n" not in str(e.value)
