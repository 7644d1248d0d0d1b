"""The command line end to end, and every bad input: one line, non-zero exit, no traceback."""

from __future__ import annotations

import json

import pytest

from robustvae.cli import main

TINY = ["--preset", "vdvae-mnist-tiny", "--data", "synthetic", "--quiet", "--batch-size", "16"]


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, fragment):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err


def test_train_eval_sample_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = _run(capsys, ["train", *TINY, "--steps", "6", "--out", str(run)])
    assert code == 0, err
    assert "trained vdvae-mnist-tiny for 6 steps" in out
    code, out, err = _run(capsys, ["eval", str(run), "-k", "4", "--limit", "24", "-q", "--batch-size", "12"])
    assert code == 0, err
    res = json.loads((run / "eval-test.json").read_text())
    assert res["images"] == 24 and res["iw_samples"] == 4 and len(res["layers"]) == 4
    assert res["nll_nats"] > 0 and res["nelbo_nats"] > 0
    assert sum(layer["active_units"] for layer in res["layers"]) == res["active_units"]
    code, out, err = _run(capsys, ["sample", str(run), "--n", "4", "-o", str(tmp_path / "s.png")])
    assert code == 0 and (tmp_path / "s.png").stat().st_size > 0
    # resume extends the run; changing its config on resume is refused
    code, out, err = _run(capsys, ["train", "--out", str(run), "--resume", "--steps", "8", "-q"])
    assert code == 0, err and "for 8 steps" in out
    code, out, err = _run(capsys, ["train", "--out", str(run), "--resume", "--set", "model.channels=4", "-q"])
    _one_line_error(code, err, "cannot change it")


def test_dctvae_train_eval_sample_and_side_by_side_comparison(tmp_path, capsys):
    dct, vd = tmp_path / "dct", tmp_path / "vd"
    dct_args = ["--preset", "dctvae-mnist-tiny", *TINY[2:]]
    code, out, err = _run(capsys, ["train", *dct_args, "--steps", "4", "--out", str(dct)])
    assert code == 0 and "trained dctvae-mnist-tiny for 4 steps" in out, err
    code, out, err = _run(capsys, ["eval", str(dct), "-k", "4", "--limit", "24", "-q", "--batch-size", "12"])
    assert code == 0, err
    assert "context" in out and "levels used" in out
    res = json.loads((dct / "eval-test.json").read_text())
    assert res["model"] == "dctvae-mnist-tiny" and len(res["layers"]) == 4 and res["layers"][0]["kind"] == "context"
    assert res["context_nats"] > 0 and res["layers"][0]["active_units"] is None
    assert sum(layer["active_units"] for layer in res["layers"][1:]) == res["active_units"]
    code, out, err = _run(capsys, ["sample", str(dct), "--n", "4", "-o", str(tmp_path / "s.png")])
    assert code == 0 and (tmp_path / "s.png").stat().st_size > 0, err
    # two checkpoints: one table with both models, each result saved next to its checkpoint
    assert main(["train", *TINY, "--steps", "2", "--out", str(vd)]) == 0
    capsys.readouterr()
    code, out, err = _run(capsys, ["eval", str(vd), str(dct), "-k", "2", "--limit", "12", "-q"])
    assert code == 0, err
    assert "vdvae-mnist-tiny" in out and "dctvae-mnist-tiny" in out and "diffusion bound" in out
    assert json.loads((vd / "eval-test.json").read_text())["model"] == "vdvae-mnist-tiny"
    code, out, err = _run(capsys, ["eval", str(vd), str(dct), "-k", "2", "--limit", "12", "-q",
                                   "-o", str(tmp_path / "both.json")])
    both = json.loads((tmp_path / "both.json").read_text())["results"]
    assert code == 0 and [r["model"] for r in both] == ["vdvae-mnist-tiny", "dctvae-mnist-tiny"]
    assert both[1]["images"] == both[0]["images"] == 12


def test_comparing_models_of_different_datasets_is_refused(tmp_path, capsys):
    import torch

    from robustvae import zoo
    from robustvae.registry import build_model, get_preset

    for name in ("vdvae-mnist-tiny", "vdvae-cifar10-tiny"):
        cfg = get_preset(name)
        torch.manual_seed(0)
        zoo.atomic_save(zoo.make_checkpoint(cfg, build_model(cfg.model)), tmp_path / f"{name}.pt")
    code, _, err = _run(capsys, ["eval", str(tmp_path / "vdvae-mnist-tiny.pt"), str(tmp_path / "vdvae-cifar10-tiny.pt")])
    _one_line_error(code, err, "cannot compare models trained on different datasets")


def test_zoo_list_and_version(capsys):
    code, out, _ = _run(capsys, ["zoo", "list"])
    assert code == 0 and "vdvae-mnist" in out and "vdvae-cifar10-tiny" in out and "dctvae-mnist-downsample" in out
    code, out, _ = _run(capsys, ["--version"])
    assert code == 0 and out.startswith("robustvae ")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--preset", "vdvae-mnsit"], "unknown preset 'vdvae-mnsit' (known:"),
        (["train", *TINY, "--set", "model.chanels=3"], "unknown config key 'model.chanels'"),
        (["train", *TINY, "--set", "train.lr=abc"], "train.lr expects a number"),
        (["train", *TINY, "--batch-size", "0"], "train.batch_size must be positive"),
        (["train", *TINY, "--epochs", "0"], "train.epochs must be positive"),
        (["train", *TINY, "--steps", "-3"], "train.steps must be positive"),
        (["train", *TINY, "--device", "cuda"], "no CUDA GPU is visible"),
        (["train", *TINY, "--device", "tpu"], "unknown device 'tpu'"),
        (["train", *TINY, "--data", "cifar10"], "has images of shape (3, 32, 32)"),
        (["train", "--preset", "dctvae-mnist-tiny", "--set", "model.context_size=40"], "cannot be larger than the 28x28"),
        (["train", "--preset", "dctvae-mnist-tiny", "--set", "model.context_bits=0"], "model.context_bits must be in 1..16"),
        (["train", "--preset", "dctvae-mnist-tiny", "--set", "model.diffusion_steps=0"], "(T >= 1)"),
        (["train", *TINY, "--resume", "--force"], "contradict"),
        (["eval", "missing.pt"], "neither a zoo checkpoint"),
        (["eval", "vdvae-mnist"], "is a preset, not a trained checkpoint"),
        (["sample", "missing.pt"], "neither a zoo checkpoint"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, argv)
    _one_line_error(code, err, fragment)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


def test_existing_run_directory_and_bad_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    before = (run / "last.pt").read_bytes()
    code, _, err = _run(capsys, ["train", *TINY, "--steps", "2", "--out", str(run)])
    _one_line_error(code, err, "already holds a run")
    assert (run / "last.pt").read_bytes() == before
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    code, _, err = _run(capsys, ["eval", str(corrupt)])
    _one_line_error(code, err, "corrupt, truncated")
    code, _, err = _run(capsys, ["eval", str(run), "-k", "0"])
    _one_line_error(code, err, "--iw-samples must be a positive integer")
    code, _, err = _run(capsys, ["train", "--out", str(tmp_path / "none"), "--resume"])
    _one_line_error(code, err, "nothing to resume")


def test_unknown_option_is_a_usage_error_without_traceback(capsys):
    code, _, err = _run(capsys, ["train", "--no-such-option"])
    assert code == 2 and "No such option" in err and "Traceback" not in err


def test_attack_help_names_every_registered_attack_and_objective(capsys):
    """The help text lists the registries' names (it is written out so that --help needs no torch import)."""
    from robustvae.attacks import ATTACKS, OBJECTIVES

    assert main(["attack", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in [*OBJECTIVES, *ATTACKS]:
        assert name in text, name
