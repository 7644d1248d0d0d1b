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
    assert "train vdvae-mnist-tiny: data synthetic, 6 steps, batch 16" in out  # the settings, before the run
    assert "[done]" in (run / "log.txt").read_text()  # progress lines in the run directory
    train_log = (run / "log.txt").read_bytes()
    code, out, err = _run(capsys, ["eval", str(run), "-k", "4", "--limit", "24", "-q", "--batch-size", "12"])
    assert code == 0, err
    assert (run / "log.txt").read_bytes() == train_log  # eval's progress goes beside its JSON, not over training's log
    res = json.loads((run / "eval-test.json").read_text())
    assert res["images"] == 24 and res["iw_samples"] == 4 and len(res["layers"]) == 4
    assert res["nll_nats"] > 0 and res["nelbo_nats"] > 0
    assert sum(layer["active_units"] for layer in res["layers"]) == res["active_units"]
    # the image set and the settings, in the JSON and in the printed table
    image_set = res["image_set"]
    assert image_set["split"] == "test" and image_set["images"] == 24 and image_set["selection_seed"] == 0
    assert image_set["selection"] == "label-stratified subset" and len(image_set["indices"]) == 24
    assert res["settings"] == {
        "split": "test",
        "iw_samples": 4,
        "limit": 24,
        "batch_size": 12,
        "max_batch_mib": 64,
        "seed": 0,
        "device": "cpu",
        "estimator": "iwae",
        "weights": "auto",
    }
    flat = " ".join(out.split())
    assert f"24 of {image_set['split_images']} images (label-stratified, selection seed 0" in flat
    assert image_set["images_sha256"][:12] in flat and "K=4" in flat
    assert "importance samples (K=4 x 24 images)" in (run / "eval-test.log").read_text()
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
    code, out, err = _run(
        capsys, ["eval", str(vd), str(dct), "-k", "2", "--limit", "12", "-q", "-o", str(tmp_path / "both.json")]
    )
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
    code, _, err = _run(
        capsys, ["eval", str(tmp_path / "vdvae-mnist-tiny.pt"), str(tmp_path / "vdvae-cifar10-tiny.pt")]
    )
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
        (
            ["train", "--preset", "dctvae-mnist-tiny", "--set", "model.context_size=40"],
            "cannot be larger than the 28x28",
        ),
        (
            ["train", "--preset", "dctvae-mnist-tiny", "--set", "model.context_bits=0"],
            "model.context_bits must be in 1..16",
        ),
        (["train", "--preset", "dctvae-mnist-tiny", "--set", "model.diffusion_steps=0"], "(T >= 1)"),
        (["train", *TINY, "--resume", "--force"], "contradict"),
        (["eval", "missing.pt"], "neither an existing checkpoint"),
        (["eval", "vdvae-mnist"], "is a preset, not a trained checkpoint"),
        (["sample", "missing.pt"], "neither an existing checkpoint"),
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


def test_sample_refuses_to_overwrite_and_writes_a_readable_grid(tmp_path, capsys):
    from PIL import Image

    run = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "2", "--out", str(run)]) == 0
    png = tmp_path / "s.png"
    code, out, err = _run(capsys, ["sample", str(run), "--n", "5", "--seed", "3", "-o", str(png)])
    assert code == 0, err
    out = " ".join(out.split())
    assert "sample: 5 images from" in out and "each 84 px, 3x nearest" in out
    with Image.open(png) as im:  # 3 x 2 grid of 28 px digits scaled 3x, 3 px gaps
        assert im.size == (3 * 84 + 4 * 3, 2 * 84 + 3 * 3)
        assert json.loads(im.text["robustvae-sample"]) == {
            "checkpoint": str(run),
            "n": 5,
            "temperature": 1.0,
            "seed": 3,
            "device": "auto",
            "scale": 3,
        }
    before = png.read_bytes()
    code, _, err = _run(capsys, ["sample", str(run), "--n", "2", "-o", str(png)])
    _one_line_error(code, err, "exists; pass --force")
    assert png.read_bytes() == before
    code, _, err = _run(capsys, ["sample", str(run), "--n", "2", "-o", str(png), "--force"])
    assert code == 0 and png.read_bytes() != before, err
    code, _, err = _run(capsys, ["sample", str(run), "--n", "0", "-o", str(tmp_path / "t.png")])
    _one_line_error(code, err, "--n must be a positive integer")


def test_ctrl_c_in_eval_is_one_stopped_line_exit_130_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from robustvae.models.vdvae import VDVAE

    run = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(VDVAE, "elbo", interrupted)  # Ctrl-C before the importance sampling
    code, out, err = _run(capsys, ["eval", str(run), "-k", "2", "--limit", "4", "-q"])
    assert code == 130 and err.strip() == "stopped: eval interrupted by Ctrl-C; nothing written", err
    monkeypatch.undo()
    real, calls = VDVAE.log_importance_weights, []

    def in_the_second_pass(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:  # two calls measure the memory per pass row, then the passes
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(VDVAE, "log_importance_weights", in_the_second_pass)
    code, out, err = _run(capsys, ["eval", str(run), "-k", "8", "--limit", "4", "-q", "--max-batch-mib", "1"])
    assert code == 130 and "Traceback" not in err, err
    assert err.strip().splitlines() == [
        "stopped: vdvae-mnist-tiny interrupted by Ctrl-C after 8 of 32 importance samples; nothing written"
    ]
    assert not (run / "eval-test.json").exists()


def test_a_preset_typo_fails_before_torch_is_imported():
    import subprocess
    import sys

    code = "import sys; from robustvae.cli import main; rc = main(['train', '--preset', 'typo']); print(rc, 'torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["2", "False"], res.stderr
    assert res.stderr.strip().startswith("error: unknown preset 'typo' (known:")


def _commands():
    from robustvae.cli import command

    root = command()
    for name, cmd in root.commands.items():
        yield from (
            ((f"{name} {sub}", c) for sub, c in cmd.commands.items()) if hasattr(cmd, "commands") else [(name, cmd)]
        )


def test_help_shows_every_default_and_flags_read_as_flags():
    """Every option of every command either has a literal default typer prints or says [default: ...] in its
    help (escaped, so rich markup does not swallow it); flags take no value."""
    seen = 0
    for name, cmd in _commands():
        for p in cmd.params:
            if getattr(p, "param_type_name", None) != "option" or p.name == "help":
                continue
            seen += 1
            literal = p.default is not None and p.default is not False and p.default not in ([], ())
            stated = any(f"\\[{word}" in (p.help or "") for word in ("default:", "required"))
            assert (literal and p.show_default is not False) or stated or p.required, f"{name} --{p.name}"
            assert "[default:" not in (p.help or "").replace("\\[default:", ""), f"{name} --{p.name}: unescaped"
            if p.is_flag:
                assert p.metavar == "", f"{name} --{p.name}"
    assert seen > 60


def test_attack_help_shows_its_defaults_and_flags_without_a_value(monkeypatch):
    """What a user sees: rich markup keeps the [default: ...] texts; a flag shows no <bool>."""
    import contextlib
    import io
    import re

    from robustvae.cli import main

    monkeypatch.setenv("COLUMNS", "240")  # no option name cut short
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["attack", "--help"]) == 0
    text = " ".join(buf.getvalue().replace("│", " ").split())
    assert "[default: 0.1]" in text and "[default: auto; a --suite's own" in text and "[default: off]" in text
    assert re.search(r"--straight-through --no-straight-through DCT-VAE", text), text
    assert not re.search(r"--quiet -q <bool>", text), text


def test_progress_without_a_terminal_writes_plain_lines_and_a_log(tmp_path, capsys, monkeypatch):
    """stderr is not a terminal under pytest: plain lines at the start, every 5 % (at most one a second) or
    10 s, and at the end, with the rate and the ETA; the same lines go to the log file, even when quiet."""
    from robustvae import progress as pg

    clock = [1000.0]
    monkeypatch.setattr(pg.time, "monotonic", lambda: clock[0])
    log = tmp_path / "log.txt"
    with pg.make_progress(log_path=log) as p:
        task = p.add_task("job", total=200, info="", unit="steps")
        for step in range(200):
            clock[0] += 0.25  # 4 steps a second: 5 % (10 steps) every 2.5 s
            p.update(task, advance=1, info=f"loss {step}")
        p.note("a message")
    err = capsys.readouterr().err.splitlines()
    assert err == log.read_text().splitlines()
    assert err[0].endswith("job: 0/200 (0%) steps [started]") and err[-1].endswith("a message")
    assert len(err) == 1 + 20 + 1  # every 5 %, the last one marked done
    assert "job: 20/200 (10%) | 4.0 steps/s | elapsed 0:00:05 | ETA 0:00:45 | loss 19" in err[2]
    assert err[-2].endswith("| loss 199 [done]")
    # quiet: nothing on stderr, the log still gets every line; a slow job writes every 10 s; an unfinished one says so
    with pg.make_progress(quiet=True, log_path=log) as p:
        task = p.add_task("slow", total=1000, info="")
        for _ in range(3):
            clock[0] += 11
            p.advance(task)
    assert capsys.readouterr().err == ""
    tail = log.read_text().splitlines()[-5:]
    assert [line.rsplit("[", 1)[-1] if line.endswith("]") else "" for line in tail] == [
        "started]",
        "",
        "",
        "",
        "stopped]",
    ]
    assert "slow: 3/1,000 (0%) | 0.1/s" in tail[-1]


def test_a_dataset_that_cannot_be_fetched_is_one_line_and_leaves_no_run_directory(tmp_path, capsys, monkeypatch):
    """torchvision's download error spans a line per mirror: the command still prints one line, and the run
    directory it had made for the run is gone again."""
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n<urlopen error>\n")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    out = tmp_path / "runs" / "small"
    code = main(
        [
            "train",
            "--preset",
            "vdvae-mnist-tiny",
            "--data",
            "mnist",
            "--data-dir",
            str(tmp_path / "data"),
            "--steps",
            "1",
            "--out",
            str(out),
            "-q",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: MNIST not found under")
    assert "Tried https://a/, got: <urlopen error>" in err and not out.exists()


def test_an_error_quoting_a_huge_value_is_one_bounded_line(tmp_path, capsys):
    """A value quoted from a hostile file or argument can be megabytes: the error stays one line of at most
    MESSAGE_LIMIT characters (plus the note of what was left out), keeping its start and its fix."""
    from robustvae.cli import MESSAGE_LIMIT

    code = main(["attack", "x" * 100_000, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: cannot use xxx")
    assert "characters left out" in lines[0] and lines[0].endswith("check the path and its permissions")
    assert len(lines[0]) <= MESSAGE_LIMIT + len(" ... (100,000 characters left out) ... ")
    assert not (tmp_path / "o").exists()
