"""Hardening II (items 1-4 of issue 25), each case of its 'Why' as a test.

* writes outside --out: ``eval --out ev.json`` through a linked ``ev.log``, ``zoo import --force`` through a
  linked ``imported.json``; ``--force`` that fails leaves the earlier run whole (compress, zoo import, demo);
* memory before checks: a checkpoint whose config says channels = hidden = 200000 over the tensors of a tiny
  model is one line, decided on the meta device (the command runs under an address-space limit, so a
  regression fails fast instead of exhausting the machine);
* impossible values: ``--eps 1e308``, ``--eps 1.5``, a ``null`` run.json, an MS-SSIM of 5.0;
* resume: a complete (newline-terminated) garbage last line stops the run naming file and line, nothing cut.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from robustvae.cli import main
from robustvae.errors import CheckpointError, RobustVAEError
from test_hardening_runs import _copy, trained  # noqa: F401 - a tiny trained run (module fixture), and copying a run

ROOT = Path(__file__).resolve().parent.parent
ATTACK = ["--points", "1", "--restarts", "1", "--steps", "1", "--layers", "1", "-q"]


def _one_line_error(capsys, argv, fragment):
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    return lines[0]


def _tree(d: Path) -> dict[str, str]:
    """Every file under ``d`` by relative path -> sha256 (links by their target's name)."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def attacked(trained, tmp_path_factory):
    """A finished attack run (one unit per k: layers 1, one point, one restart); tests copy it before changing it."""
    out = tmp_path_factory.mktemp("attacked") / "a"
    assert main(["attack", str(trained), *ATTACK, "--out", str(out)]) == 0
    return out


# --------------------------------------------------------------------------- 1. writes outside --out


def test_eval_does_not_append_its_log_through_a_link(tmp_path, trained, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (tmp_path / "ev.log").symlink_to(outside)
    _one_line_error(
        capsys,
        ["eval", str(trained), "-k", "2", "--limit", "4", "-q", "--out", str(tmp_path / "ev.json")],
        "ev.log is a symbolic link",
    )
    assert outside.read_text() == "precious\n" and not (tmp_path / "ev.json").exists()


def _authors_file(tmp_path: Path) -> Path:
    from test_kuzina_zoo import _model, _save

    return _save(tmp_path / "theirs.pth", _model())


def test_zoo_import_force_does_not_write_through_a_link(tmp_path, capsys):
    src = _authors_file(tmp_path)
    out = tmp_path / "imp"
    assert main(["zoo", "import", str(src), "--preset", "kuzina-dctvae-mnist-tiny", "--out", str(out)]) == 0
    outside = tmp_path / "outside.json"
    outside.write_text("precious")
    (out / "imported.json").unlink()
    (out / "imported.json").symlink_to(outside)
    before = _tree(out)
    _one_line_error(
        capsys,
        ["zoo", "import", str(src), "--preset", "kuzina-dctvae-mnist-tiny", "--out", str(out), "--force"],
        "imported.json is a symbolic link",
    )
    assert outside.read_text() == "precious" and _tree(out) == before


def test_zoo_import_force_that_fails_leaves_the_old_import(tmp_path, monkeypatch):
    from robustvae import io
    from robustvae.zoo import kuzina

    src = _authors_file(tmp_path)
    out = tmp_path / "imp"
    kuzina.import_checkpoint(src, "kuzina-dctvae-mnist-tiny", out)
    before = _tree(out)

    def broken(path, obj, *, root=None):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(io, "write_json", broken)  # best.pt is written, imported.json fails
    with pytest.raises(OSError):
        kuzina.import_checkpoint(src, "kuzina-dctvae-mnist-tiny", out, force=True)
    assert _tree(out) == before  # the old best.pt is the one in place, no staging folder is left


def _png(path: Path, seed: int) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
    return path


def test_compress_force_that_fails_leaves_the_old_run(tmp_path, trained, monkeypatch):
    from robustvae.experiments import compress as experiment

    images = [_png(tmp_path / "imgs" / "a.png", 0), _png(tmp_path / "imgs" / "b.png", 1)]
    out = tmp_path / "c"
    argv = ["compress", str(trained), "--layers", "1", "-q", "--out", str(out)] + [
        a for p in images for a in ("--images", str(p))
    ]
    assert main(argv) == 0
    before = _tree(out)
    calls = {"n": 0}
    real = experiment.save_png

    def fails_on_the_third(pixels, path, *, root=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device", str(path))
        real(pixels, path, root=root)

    monkeypatch.setattr(experiment, "save_png", fails_on_the_third)
    assert main([*argv, "--force"]) == 2
    assert calls["n"] == 3 and _tree(out) == before
    monkeypatch.setattr(experiment, "save_png", real)
    assert main([*argv, "--force"]) == 0 and set(_tree(out)) == set(before)  # replaced, same files


@pytest.mark.slow  # trains twice (tiny); the set-aside rule itself is tested in test_one_writer.py
def test_demo_force_that_fails_leaves_the_old_demo(tmp_path, monkeypatch):
    from robustvae import api
    from robustvae.demo import DemoSettings, run_demo

    s = DemoSettings(
        presets=("vdvae-mnist-tiny",), train_steps=2, iw_samples=1, eval_limit=4, points=1, restarts=1, attack_steps=1
    )
    out = tmp_path / "demo"
    run_demo(out, s, device="cpu", quiet=True)
    before = _tree(out)

    def broken(*args, **kwargs):
        raise RobustVAEError("the attack broke")

    monkeypatch.setattr(api, "attack", broken)
    with pytest.raises(RobustVAEError, match="the attack broke"):
        run_demo(out, s, device="cpu", quiet=True, force=True)
    after = _tree(out)
    assert {k: v for k, v in after.items() if not k.endswith(".lock")} == {
        k: v for k, v in before.items() if not k.endswith(".lock")
    }


# --------------------------------------------------------------------------- 2. checkpoints: shapes before memory


def _giant(trained: Path, dest: Path, width: int = 200_000) -> Path:
    ckpt = torch.load(trained / "best.pt", weights_only=True)
    ckpt["config"]["model"]["channels"] = ckpt["config"]["model"]["hidden"] = width
    torch.save(ckpt, dest)
    return dest


PROBE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
from robustvae.cli import main
code = main(sys.argv[2:])
# VmHWM, this program's own peak (kB): execve starts it afresh, whereas ru_maxrss keeps the forking parent's
# (a pytest worker already gigabytes large would count)
print("PEAK", next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM")), flush=True)
sys.exit(code)
"""
LIMIT = 6 << 30  # bytes of address space: torch alone maps ~3.3 GB; the giant model would need 160 GB


def test_a_giant_config_over_tiny_tensors_is_one_line_before_any_memory_is_spent(tmp_path, trained):
    giant = _giant(trained, tmp_path / "giant.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(LIMIT),
            "eval",
            str(giant),
            "-k",
            "2",
            "--limit",
            "4",
            "-q",
            "--out",
            str(tmp_path / "e.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert "does not fit the architecture its config describes" in lines[0]
    assert "200000" in lines[0]  # names the tensor and the shape the config makes of it
    peak_mib = int(r.stdout.split("PEAK")[1]) / 1024
    assert peak_mib < 2048, peak_mib  # about what importing torch takes (~0.7 GiB): nothing was materialised


def test_the_meta_build_of_a_giant_config_stops_early_and_every_family_checks_shapes(trained):
    from robustvae.registry import build_model
    from robustvae.zoo import config_of, meta_model, read_checkpoint

    ckpt = read_checkpoint(trained / "best.pt")
    cfg = config_of(ckpt)
    giant = cfg.override(["model.latents=[[14,4000],[7,4000]]"])  # 8000 layers: the build stops at the budget
    with pytest.raises(CheckpointError, match="far larger than the 1[0-9]* tensors"):
        meta_model(lambda: build_model(giant.model), ckpt["model"], "x.pt")


@pytest.mark.parametrize("preset", ["vdvae-mnist-tiny", "dctvae-mnist-tiny", "kuzina-dctvae-mnist-tiny"])
def test_build_checked_loads_exactly_and_names_the_first_misfit(preset):
    from robustvae.registry import build_model, get_preset
    from robustvae.zoo import build_checked

    torch.manual_seed(0)
    cfg = get_preset(preset).model
    ref = build_model(cfg)
    state = {k: v + 0.25 if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    model = build_checked(lambda: build_model(cfg), state, "f.pt")
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    # non-persistent buffers (diffusion schedules, quantiser levels) are the real ones, not uninitialised memory
    derived = [n for n, _ in model.named_buffers() if n not in state]
    assert all(torch.equal(dict(model.named_buffers())[n], dict(ref.named_buffers())[n]) for n in derived)
    assert derived or preset.startswith("vdvae")  # DCT-VAEs have them (the diffusion schedule)
    name = next(iter(state))
    bad = {**state, name: torch.zeros(3, 1, 7)}
    with pytest.raises(CheckpointError, match=rf"tensor {name} has shape 3x1x7 in the file"):
        build_checked(lambda: build_model(cfg), bad, "f.pt")
    with pytest.raises(CheckpointError, match="1 missing"):
        build_checked(lambda: build_model(cfg), {k: v for k, v in state.items() if k != name}, "f.pt")


def test_a_derived_buffer_beyond_the_tensors_present_is_refused(monkeypatch):
    from torch import nn

    from robustvae.zoo import DERIVED_ALLOWANCE_BYTES, check_state

    class Net(nn.Module):
        def __init__(self, derived: int):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(4))
            self.register_buffer("table", torch.zeros(derived), persistent=False)

    check_state(lambda: Net(1000), {"w": torch.zeros(4)}, "f.pt")
    with pytest.raises(CheckpointError, match="beyond the"):
        check_state(lambda: Net(DERIVED_ALLOWANCE_BYTES // 4 + 1), {"w": torch.zeros(4)}, "f.pt")


def test_resume_checks_last_pt_against_its_config_before_building(tmp_path, trained, capsys):
    run = _copy(trained, tmp_path / "run")
    _giant(run, run / "last.pt")
    _one_line_error(capsys, ["train", "--resume", "--out", str(run), "-q"], "does not fit the architecture")


# --------------------------------------------------------------------------- 3. impossible values


def test_eps_that_overflows_or_covers_the_box_is_one_line(tmp_path, trained, capsys):
    base = ["attack", str(trained), *ATTACK, "--out", str(tmp_path / "a")]
    _one_line_error(capsys, [*base, "--eps", "1e308"], "is not below 1")
    _one_line_error(capsys, [*base, "--eps", "1.5"], "every image in [0, 1] is reachable")
    _one_line_error(capsys, [*base, "--norm", "l2", "--eps", "1e308"], "the L2 diameter of [0, 1]^784")
    _one_line_error(capsys, [*base, "--eps-sweep", "0.1,1.0"], "eps_sweep")
    assert not (tmp_path / "a").exists()
    capsys.readouterr()
    assert main(["attack", "--help"]) == 0
    assert "below 1 for linf" in " ".join(capsys.readouterr().out.replace("│", " ").split())


def test_report_on_a_null_run_json_is_one_line(tmp_path, attacked, capsys):
    out = _copy(attacked, tmp_path / "a")
    (out / "run.json").write_text("null\n")
    _one_line_error(capsys, ["report", str(out), "--out", str(tmp_path / "r")], "run.json holds null")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value,ok", [(5.0, False), (-0.5, False), (1 + 2e-6, True), (math.nan, True), (1.0, True)])
def test_an_msssim_outside_the_unit_interval_is_refused_up_to_rounding(tmp_path, attacked, capsys, value, ok):
    out = _copy(attacked, tmp_path / "a")
    rec = out / "records.jsonl"
    rows = [json.loads(x) for x in rec.read_text().splitlines()]
    rows[2]["msssim"] = value
    rec.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["report", str(out), "--out", str(tmp_path / "r")]
    if ok:
        capsys.readouterr()
        assert main(argv) == 0
    else:
        _one_line_error(capsys, argv, "records.jsonl line 3: field 'msssim': must be in [0, 1]")


# --------------------------------------------------------------------------- 4. resume never deletes a terminated line


def test_a_terminated_garbage_last_line_stops_the_resume_and_nothing_is_cut(tmp_path, trained, attacked, capsys):
    out = _copy(attacked, tmp_path / "a")
    rec = out / "records.jsonl"
    n = len(rec.read_text().splitlines())
    with open(rec, "ab") as f:
        f.write(b'{"unit": "garbage"\n')
    before = rec.read_bytes()
    _one_line_error(
        capsys, ["attack", str(trained), *ATTACK, "--out", str(out)], f"records.jsonl line {n + 1} is not valid JSON"
    )
    assert rec.read_bytes() == before


def test_an_unterminated_last_line_is_a_torn_write_dropped_with_a_notice(tmp_path, trained, attacked, capsys):
    out = _copy(attacked, tmp_path / "a")
    rec = out / "records.jsonl"
    whole = rec.read_bytes()
    rec.write_bytes(whole + b'{"unit": "u-0", "model": "vd')
    torn = len(whole.splitlines()) + 1  # the line after the run's complete ones
    with pytest.warns(UserWarning, match=f"line {torn} is torn"):  # the CLI prints it as a 'note:' line
        assert main(["attack", str(trained), *ATTACK, "--out", str(out)]) == 0
    assert rec.read_bytes() == whole  # the torn tail is cut, every complete line kept


def test_a_terminated_garbage_line_in_training_metrics_stops_the_resume(tmp_path, trained, capsys):
    run = _copy(trained, tmp_path / "run")
    metrics = run / "metrics.jsonl"
    with open(metrics, "ab") as f:
        f.write(b'{"kind": "train", "step": "two"}\n')
    before = metrics.read_bytes()
    _one_line_error(capsys, ["train", "--resume", "--out", str(run), "--steps", "3", "-q"], "metrics.jsonl line")
    assert metrics.read_bytes() == before


def test_read_jsonl_refuses_every_terminated_bad_line_and_drops_only_an_unterminated_tail(tmp_path):
    from robustvae.io import read_jsonl

    p = tmp_path / "r.jsonl"
    for body, line in ((b'{"a": 1}\ngarbage\n', 2), (b'{"a": 1}\n[1]\n', 2), (b'garbage\n{"a": 1}\n', 1)):
        p.write_bytes(body)
        with pytest.raises(RobustVAEError, match=f"line {line}"):
            read_jsonl(p, repair=True)
        assert p.read_bytes() == body
    p.write_bytes(b'{"a": 1}\n{"a": 2}')  # complete JSON, but no newline: a torn write
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_jsonl(p, repair=True) == [{"a": 1}]
    assert p.read_bytes() == b'{"a": 1}\n' and any("torn" in str(w.message) for w in caught)
