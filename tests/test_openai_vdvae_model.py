"""The openai-vdvae family's own pieces against independent references: the likelihood's options (brute force in
float64), the reconstruction image rule (a per-pixel loop), the block strings and the config checks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.special import expit, logsumexp

from robustvae.config import parse_block_string
from robustvae.errors import ConfigError
from robustvae.models.contract import HierarchicalVAE
from robustvae.models.distributions import DiscretizedLogisticMixture
from robustvae.registry import OPENAI_HPS, build_model, get_preset, openai_latents

TINY = get_preset("openai-vdvae-tiny").model


def _params(K: int, gen: torch.Generator, B: int = 2, H: int = 3, W: int = 4) -> torch.Tensor:
    return torch.randn(B, K * 10, H, W, generator=gen, dtype=torch.float64) * 2


def _brute_log_prob(params: np.ndarray, x255: np.ndarray, K: int, bits: int, tiny: float | None) -> np.ndarray:
    """Per image log p(x) from the per-channel layout, pixel by pixel, upstream's rules spelled out in numpy."""
    B, _, H, W = params.shape
    out = np.zeros(B)
    step = 2 ** (8 - bits)
    half = 1 / (2**bits - 1)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                p = params[b, :, i, j]
                logits = p[:K]
                rest = p[K:].reshape(3, 3, K)  # channel, (means, log-scales, coefficients), component
                v = np.floor(x255[b, :, i, j] / step) * step
                t = (v - 127.5) / 127.5
                comp = np.log(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
                for k in range(K):
                    c = np.tanh(rest[:, 2, k])
                    mean = [rest[0, 0, k], rest[1, 0, k] + c[0] * t[0], rest[2, 0, k] + c[1] * t[0] + c[2] * t[1]]
                    for ch in range(3):
                        s = math.exp(-max(rest[ch, 1, k], -7.0))
                        lo, hi = s * (t[ch] - mean[ch] - half), s * (t[ch] - mean[ch] + half)
                        if t[ch] < -0.999:
                            lp = math.log(expit(hi))
                        elif t[ch] > 0.999:
                            lp = math.log(1 - expit(lo))
                        elif tiny is not None and expit(hi) - expit(lo) <= tiny:
                            mid = s * (t[ch] - mean[ch])
                            lp = mid - max(rest[ch, 1, k], -7.0) - 2 * np.logaddexp(0, mid) + math.log(2 * half)
                        else:
                            lp = math.log(expit(hi) - expit(lo))
                        comp[k] += lp
                out[b] += logsumexp(comp)
    return out


@pytest.mark.parametrize("bits", [8, 5])
def test_the_likelihoods_upstream_options_against_a_pixel_by_pixel_reference(bits, gen):
    K = 3
    params = _params(K, gen)
    x255 = torch.randint(0, 256, (2, 3, 3, 4), generator=gen).double()
    x255[0, :, 0, 0], x255[0, :, 0, 1] = 0, 255  # both tails
    d = DiscretizedLogisticMixture(params, 3, K, bits, layout="per-channel", grid="uint8", tiny_bin=1e-5)
    want = _brute_log_prob(params.numpy(), x255.numpy(), K, bits, 1e-5)
    torch.testing.assert_close(d.log_prob(x255 / 255), torch.from_numpy(want), rtol=1e-10, atol=1e-9)


def test_layouts_hold_the_same_parameters_and_the_uint8_grid_is_the_even_one_at_8_bits(gen):
    K = 4
    params = _params(K, gen)
    B, _, H, W = params.shape
    # the same mixture written in robustvae's grouped layout: (loc, log-scale, coeff) major, then channel
    per_channel = params[:, K:].reshape(B, 3, 3, K, H, W)  # channel, kind, component
    grouped = torch.cat([params[:, :K], per_channel.transpose(1, 2).reshape(B, 9 * K, H, W)], 1)
    x = torch.randint(0, 256, (B, 3, H, W), generator=gen).double() / 255
    a = DiscretizedLogisticMixture(params, 3, K, layout="per-channel", grid="uint8")
    b = DiscretizedLogisticMixture(grouped, 3, K)
    torch.testing.assert_close(a.log_prob(x), b.log_prob(x), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(a.top_component_image(), b.top_component_image(), rtol=0, atol=0)


def test_tiny_bins_are_scored_at_their_centre(gen):
    """A bin far in a sharp component's tail: exact log-probability vs upstream's density-times-width rule."""
    K = 1
    params = torch.zeros(1, 10, 1, 1, dtype=torch.float64)
    params[0, 1:10:3] = 0.9  # every channel's location at 0.9
    params[0, 2:10:3] = -6.0  # scale e^-6: x = 0 sits ~360 scales away
    x = torch.full((1, 3, 1, 1), 128 / 255, dtype=torch.float64)
    exact = DiscretizedLogisticMixture(params, 3, K, layout="per-channel", grid="uint8").log_prob(x)
    upstream = DiscretizedLogisticMixture(params, 3, K, layout="per-channel", grid="uint8", tiny_bin=1e-5).log_prob(x)
    t = (128 - 127.5) / 127.5
    z = (t - 0.9) * math.exp(6.0)
    centre = 3 * (z + 6.0 - 2 * np.logaddexp(0, z) + math.log(2 / 255))
    assert abs(float(upstream) - centre) < 1e-9 and abs(float(exact) - float(upstream)) > 1e-3


def test_the_reconstruction_image_is_the_top_components_mean_with_coefficients_applied_and_clipped(gen):
    K = 3
    params = _params(K, gen)
    img = DiscretizedLogisticMixture(params, 3, K, layout="per-channel").top_component_image()
    p = params.numpy()
    B, _, H, W = p.shape
    for b in range(B):
        for i in range(H):
            for j in range(W):
                k = int(np.argmax(p[b, :K, i, j]))
                rest = p[b, K:, i, j].reshape(3, 3, K)
                c = np.tanh(rest[:, 2, k])
                x0 = np.clip(rest[0, 0, k], -1, 1)
                x1 = np.clip(rest[1, 0, k] + c[0] * x0, -1, 1)
                x2 = np.clip(rest[2, 0, k] + c[1] * x0 + c[2] * x1, -1, 1)
                np.testing.assert_allclose(img[b, :, i, j].numpy(), (np.array([x0, x1, x2]) + 1) / 2, rtol=1e-12)


def test_the_family_satisfies_the_contract_and_reads_log_sigmas(gen):
    torch.manual_seed(0)
    m = build_model(TINY).eval()
    assert isinstance(m, HierarchicalVAE) and m.arch == "openai-vdvae" and m.num_layers == 4
    assert [info.shape for info in m.layers] == [(2, 1, 1), (2, 8, 8), (2, 16, 16), (2, 32, 32)]
    raw = torch.randn(2, 3, generator=gen)
    q = m._gaussian(raw, raw)
    assert torch.equal(q.std, torch.exp(raw))  # the second half is a log standard deviation, unclamped
    assert set(m.bias) == {"1", "8"} and m.bias["8"].shape == (1, 16, 8, 8)  # widths and no start above 8
    x = torch.rand(2, 3, 32, 32, generator=gen)
    acts = m._encoder(x)
    assert {r: a.shape[1] for r, a in acts.items()} == {32: 8, 16: 8, 8: 16, 1: 16}  # 8 -> 16 channels: zero-padded
    # the prior starts at N(0, I): upstream zero-initialises the prior nets' last convolutions (and every bias)
    td = m._top_down(2, None, n_posterior=0)
    assert all(torch.all(p.mean == 0) and torch.all(p.logvar == 0) for p in td.priors)


def test_the_five_presets_are_upstreams_sizes():
    sizes = {}
    for name, cfg in OPENAI_HPS.items():
        with torch.device("meta"):
            sizes[name] = (cfg.num_layers, sum(p.numel() for p in build_model(cfg).parameters()))
    assert sizes == {
        "cifar10": (43, 39_145_700),
        "imagenet32": (78, 119_280_868),
        "imagenet64": (75, 125_005_860),
        "ffhq256": (66, 114_874_852),
        "ffhq1024": (70, 109_366_904),
    }
    assert OPENAI_HPS["ffhq256"].dmol_bits == 5 and OPENAI_HPS["ffhq1024"].num_mixtures == 2


def test_block_strings_parse_and_bad_ones_are_named():
    b = parse_block_string("32x2,32d2,16m8,4")
    assert [(s.resolution, s.down, s.mixin) for s in b] == [(32, None, None)] * 2 + [
        (32, 2, None),
        (16, None, 8),
        (4, None, None),
    ]
    for bad in ("32y2", "32x", "0x2", "32x0", "16m"):
        with pytest.raises(ValueError, match="block string entry"):
            parse_block_string(bad)
    assert openai_latents("1x1,4m1,4x2,8m4") == ((8, 1), (4, 3), (1, 1))
    with pytest.raises(ConfigError, match="must start by mixing in 1"):
        openai_latents("1x1,4x2")
    with pytest.raises(ConfigError, match="only the first block at 4 mixes in"):
        openai_latents("1x1,4m1,4m1")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"enc_layout": "32x1,32x"}, "model.enc_layout: block string entry '32x'"),
        ({"enc_layout": "16x1"}, "must run from the image size 32 down"),
        ({"enc_layout": "32x1,32d3"}, "32d3 does not divide resolution 32"),
        ({"enc_layout": "32x1,32d2,16d2,8x1"}, "no encoder features at latent resolution(s) [1]"),
        ({"widths": ((32, 4),)}, "image resolution's width must be model.channels=8"),
        ({"widths": ((16, 32), (8, 16))}, "must not grow from coarse to fine"),
        ({"bias_max_res": 0}, "model.bias_max_res must be >= 1"),
        ({"image_channels": 1}, "models RGB images with a logistic mixture"),
        ({"latents": ((16, 1), (1, 1))}, "finest latents must be at the image size 32"),
        ({"arch": "vdvae"}, "model.enc_layout only applies to model.arch=openai-vdvae"),
    ],
)
def test_bad_configs_are_one_line_naming_the_key(change, message):
    with pytest.raises(ConfigError) as e:
        dataclasses.replace(TINY, **change)
    assert message in str(e.value) and "\n" not in str(e.value)
