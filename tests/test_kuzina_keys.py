"""Strict loading of the authors' state dicts into the kuzina presets, for all five of their configurations.

For each config, a state dict with exactly the keys and shapes of keys.txt (random
values; their constants and shared copies as their code stores them) must load into the
matching preset with every key used, or known as shared / unused / constant, and none
missing. Wrong or incomplete state dicts give one line naming what is wrong.
"""

from __future__ import annotations

import pytest
import torch

from kuzina_fixtures import CONFIGS, perturbed, read_keys, their_state_dict
from robustvae.errors import CheckpointError
from robustvae.models.kuzina.convert import SHARED, _basis, classify, convert_state_dict, rename
from robustvae.registry import build_model, get_preset


def random_state(config: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Exactly the keys and shapes of the config's keys.txt; DCT bases and the UNet's second copy as theirs."""
    g = torch.Generator().manual_seed(seed)
    keys = read_keys(config)
    size = get_preset(CONFIGS[config]).model.image_size
    sd = {k: torch.randn(shape, generator=g) for k, (shape, _) in keys.items()}
    for k in sd:
        if classify(k) == "constant":
            sd[k] = _basis(k, size).float()
        if k.startswith(SHARED[0]):
            sd[k] = sd[SHARED[1] + k[len(SHARED[0]) :]]
    return sd


@pytest.mark.parametrize("config", list(CONFIGS))
def test_their_key_list_loads_strictly_into_the_preset(config):
    sd = random_state(config)
    model = build_model(get_preset(CONFIGS[config]).model)
    state = convert_state_dict(sd, model)
    model.load_state_dict(state, strict=True)
    own = model.state_dict()
    used = [k for k in sd if classify(k) == "used"]
    assert sorted(rename(k) for k in used) == sorted(own)  # a bijection: every used key lands, nothing left over
    for k in used:
        assert torch.equal(own[rename(k)], sd[k]), k


@pytest.mark.parametrize("config", list(CONFIGS))
def test_what_is_dropped_is_what_their_key_notes_call_unused_shared_or_constant(config):
    for key, (_, notes) in read_keys(config).items():
        kind = classify(key)
        if kind == "shared":
            assert "same tensor as" in notes, key
        elif kind in ("unused", "constant"):
            assert "UNUSED" in notes or key.endswith(("reverse_function_w", "reverse_function_h")), key
            assert kind == "unused" or "constant" in notes, key
        else:
            assert "UNUSED" not in notes, key


def model_state(config: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of the config's preset under the authors' names, built from the preset (no fixture file)."""
    torch.manual_seed(seed)
    return their_state_dict(_model(config))


def test_legacy_weight_norm_is_g_times_v_over_its_norm():
    """SVHN / CIFAR-10 store weight_g, weight_v: the weight is g v / ||v||, the norm over all dims but the first."""
    sd = model_state("svhn_dct_ladder")
    model = build_model(get_preset(CONFIGS["svhn_dct_ladder"]).model)
    model.load_state_dict(convert_state_dict(sd, model))
    prefix = "encoder.encoder_blocks.0.0.net.1.net.1"
    g, v = sd[prefix + ".weight_g"], sd[prefix + ".weight_v"]
    expected = g * v / v.pow(2).sum((1, 2, 3), keepdim=True).sqrt()
    torch.testing.assert_close(model.encoder.encoder_blocks[0][0].net[1].net[1].weight, expected)


def test_the_fitted_bases_in_their_files_are_the_cosines():
    sd, _ = perturbed("mnist_dct_ladder")
    for k in sd:
        if classify(k) == "constant":
            torch.testing.assert_close(sd[k].double(), _basis(k, 28), atol=1e-5, rtol=0)  # theirs: float32 cosines


def _model(config: str):
    return build_model(get_preset(CONFIGS[config]).model)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda sd: sd.pop("decoder.post_process.0.weight"),
            "1 missing, 0 unknown, 0 mis-shaped tensors; first: decoder.post_process.0.weight",
        ),
        (lambda sd: sd.update({"decoder.extra.weight": torch.zeros(1)}), "first: decoder.extra.weight"),
        (lambda sd: sd.update({"decoder.s_L": torch.zeros(1, 32, 14, 14)}), "1 mis-shaped"),
        (lambda sd: sd.update({SHARED[0] + "out.2.bias": torch.ones(2)}), "should be the same tensor as"),
        (
            lambda sd: sd.update({"decoder.decoder_blocks.0.dct.reverse_function_w": torch.zeros(28, 27)}),
            "is not the DCT basis of 28x28 images",
        ),
    ],
)
def test_a_wrong_state_dict_is_one_line_naming_the_problem(edit, message):
    sd = model_state("mnist_dct_ladder")
    edit(sd)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        convert_state_dict(sd, _model("mnist_dct_ladder"), "model.pt")
    assert "\n" not in str(e.value) and str(e.value).startswith("model.pt")


def test_another_datasets_checkpoint_is_refused_naming_the_preset():
    with pytest.raises(CheckpointError, match="pick the preset"):
        convert_state_dict(model_state("mnist_dct_ladder"), _model("omniglot_dct_ladder"))
    with pytest.raises(CheckpointError, match="pick the preset"):
        convert_state_dict(model_state("svhn_dct_ladder"), _model("cifar_dct_ladder"))


def test_a_missing_renamed_tensor_is_named_as_their_file_names_it():
    sd = model_state("svhn_dct_ladder")
    sd.pop("decoder.z_L_prior.model.out.2.weight")
    sd.pop("encoder.encoder_blocks.1.0.net.2.net.1.weight_g")
    with pytest.raises(CheckpointError, match=r"2 missing.*first: encoder.encoder_blocks.1.0.net.2.net.1.weight_g"):
        convert_state_dict(sd, _model("svhn_dct_ladder"))
