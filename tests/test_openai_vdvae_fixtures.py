"""The openai-vdvae family against tensors recorded from openai/vdvae's own code (tests/fixtures_openai_vdvae).

Upstream's perturbed weights of three reduced configurations (8-bit CIFAR-10, 5-bit FFHQ-256,
FFHQ-1024's custom widths and [0, 1] input) are loaded strictly, every draw upstream made is
replayed (teacher forcing), and every recorded tensor is compared: the encoder input and the
likelihood target (also for all five datasets' preprocessing), the encoder activations, every
layer's posterior and prior parameters, latent and KL, the decoder output, the mixture
parameters, the per-image distortion and rate, the batch ELBO, and the reconstruction image at
the posterior means, with 2 layers from the posterior and the rest from the prior at
temperature 0.1, and an unconditional sample.

Tolerance, from floating-point rounding: |ours - theirs| <= 256 u S per tensor group, u the unit
roundoff of the fixture's precision (2^-24 in float32, 2^-53 in float64) and S the group's
scale: its largest magnitude, and at least 1 for the KLs (they are differences of terms of
order 1, so their error is absolute). A value here passes through at most about 20 roundings
of sums of up to 144 products; 256 u leaves room for that while a real difference (a wrong
constant, a missing term, another layout) is 1e-3 or more. The float64 fixture pins the maths:
there the two codes agree to a few units of 2^-53. ``python tests/test_openai_vdvae_fixtures.py``
prints the worst difference per group.
"""

from __future__ import annotations

import pytest
import torch
from openai_vdvae_fixtures import FIXTURES, SMALL, group, ours, read, read_keys

from robustvae.models.openai_vdvae.model import encoder_input, likelihood_target
from robustvae.registry import OPENAI_HPS

CASES = [(name, torch.float32) for name in SMALL] + [("cifar10_small-f64", torch.float64)]
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}
INPUTS = ("u8", "draw_eps")  # what the passes replay rather than compute


def tolerance(key: str, ref: torch.Tensor, dtype: torch.dtype) -> float:
    scale = float(ref.abs().max())
    if group(key).endswith("/kl"):
        scale = max(scale, 1.0)
    return 256 * UNIT_ROUNDOFF[dtype] * scale


def worst_by_group(name: str, dtype: torch.dtype) -> dict[str, tuple[float, float]]:
    """Per tensor group: (worst |ours - theirs|, the group's tolerance at that tensor)."""
    got, ref = ours(name, dtype), read(name)["tensors"]
    compared = [k for k in ref if not k.startswith("weights/") and not k.endswith(INPUTS)]
    assert sorted(compared) == sorted(got), set(compared) ^ set(got)
    out: dict[str, tuple[float, float]] = {}
    for key in compared:
        r = ref[key].to(dtype)
        assert got[key].shape == r.shape, key
        diff, tol = float((got[key] - r).abs().max()), tolerance(key, r, dtype)
        if group(key) not in out or diff * out[group(key)][1] > out[group(key)][0] * tol:  # a larger diff / tol
            out[group(key)] = (diff, tol)
    return out


@pytest.mark.parametrize("name, dtype", CASES, ids=[c[0] for c in CASES])
def test_every_recorded_tensor_agrees_within_rounding(name, dtype):
    bad = {g: v for g, v in worst_by_group(name, dtype).items() if not v[0] <= v[1]}
    assert not bad, bad


def test_the_fixtures_exercise_what_differs_between_configurations():
    """The reduced configurations cover the 5-bit likelihood, custom widths (padding and slicing) and zero starts."""
    hp = {n: read(n)["meta"]["hparams"] for n in SMALL}
    assert hp["ffhq256_small"]["dataset"] == "ffhq_256" and hp["ffhq256_small"]["no_bias_above"] < 16
    assert hp["ffhq1024_small"]["custom_width_str"] and hp["ffhq1024_small"]["no_bias_above"] < 16
    assert all(read(n)["meta"]["upstream_commit"].startswith("ea35b49") for n in SMALL)
    # every weight matters: none of the recorded tensors is zero (upstream zero-initialises some)
    for n in SMALL:
        weights = {k: v for k, v in read(n)["tensors"].items() if k.startswith("weights/")}
        assert all(bool(v.abs().max() > 0) for v in weights.values())


@pytest.mark.parametrize("hps", list(OPENAI_HPS))
def test_preprocessing_is_upstreams_for_every_dataset(hps):
    """Encoder input (u + shift) * scale and likelihood target of data.py, for images holding all 256 values."""
    fx = torch.load(FIXTURES / "preprocess.pt", weights_only=True)
    x = fx["u8"].permute(0, 3, 1, 2).float() / 255
    cfg = OPENAI_HPS[hps]
    for ours_, theirs in (
        (encoder_input(x, cfg), fx[f"{hps}/input"]),
        (likelihood_target(x, cfg), fx[f"{hps}/target"]),
    ):
        tol = 4 * UNIT_ROUNDOFF[torch.float32] * float(theirs.abs().max())  # one rounding of each operand
        assert float((ours_.permute(0, 2, 3, 1) - theirs).abs().max()) <= tol
    if hps == "ffhq256":  # 5 bits: 32 levels, the lowest at -1 and the highest at 248 / 127.5 - 1
        levels = fx[f"{hps}/target"].unique()
        assert len(levels) == 32 and float(levels[0]) == -1 and abs(float(levels[-1]) - (248 / 127.5 - 1)) < 1e-6


def test_key_lists_of_the_five_published_configurations_match_the_presets():
    """Every name and shape of upstream's five models (from its own code, on the meta device) loads strictly."""
    from robustvae.models.openai_vdvae.convert import check_state_dict

    keys = read_keys()
    assert sorted(keys) == sorted(OPENAI_HPS)
    for hps, rows in keys.items():
        state = {k: torch.empty(shape, device="meta") for k, shape in rows}
        ours_ = check_state_dict(state, OPENAI_HPS[hps], hps)
        assert len(ours_) == len(rows)


if __name__ == "__main__":
    for case in CASES:
        print(case[0])
        for g, (diff, tol) in worst_by_group(*case).items():
            print(f"  {g:24s} worst {diff:.2e}  tolerance {tol:.2e}")
