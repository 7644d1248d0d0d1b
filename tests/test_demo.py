"""The demo's pipeline end to end at a tiny scale (train, eval, attack, report), and its output-directory rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustvae.cli import main
from robustvae.demo import DEMO_PRESETS, DemoSettings, run_demo
from robustvae.registry import get_preset

ROOT = Path(__file__).resolve().parent.parent
TINY = DemoSettings(presets=("vdvae-mnist-tiny", "dctvae-mnist-tiny"), train_steps=8, iw_samples=2, eval_limit=20,
                    points=2, restarts=2, attack_steps=2)


def test_demo_pipeline_end_to_end_on_tiny_models(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, TINY, device="cpu", quiet=True)
    assert (out / "index.html").is_file() and (out / "figure10.png").is_file()
    rows = summary["table"]
    for preset in TINY.presets:
        m = get_preset(preset).model
        L = sum(n for _, n in m.latents) + (m.arch == "dctvae")  # DCT-VAE: the context is layer 1
        assert {r["k"] for r in rows if r["model"] == preset} == set(range(1, L + 1))  # k = 1 .. L
        assert all(r["points"] == 2 and r["restarts"] == 2 for r in rows if r["model"] == preset)
    models = {m["label"]: m for m in summary["models"]}
    assert set(models) == set(TINY.presets) and all(m["nll_nats"] > 0 for m in models.values())
    assert {c["check"] for c in summary["checks"]} >= {"budget respected", "run complete"}
    assert all(c["passed"] for c in summary["checks"] if c["check"] in ("budget respected", "run complete"))
    html = (out / "index.html").read_text()
    assert "robustvae train --preset vdvae-mnist-tiny" in html  # the commands it ran, in the notes
    assert json.loads((out / "runs" / "eval-test.json").read_text())["results"][0]["iw_samples"] == 2

    # a second demo into the same directory is refused (nothing touched) unless forced
    before = (out / "summary.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "-q"]) == 2
    assert (out / "summary.json").stat().st_mtime_ns == before


def test_demo_refuses_a_non_empty_directory_and_bad_settings(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "is not empty; pass --force" in err and len(err.strip().splitlines()) == 1
    assert main(["demo", "--out", str(tmp_path / "new"), "--points", "0"]) == 2
    assert "--points must be a positive integer" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "new"), "--threads", "0"]) == 2
    assert "--threads must be a positive integer" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_demo_presets_exist_and_are_small():
    for name in DEMO_PRESETS:
        cfg = get_preset(name)
        assert cfg.data.name == "mnist-offline" and cfg.train.steps is not None and cfg.train.steps <= 3000


@pytest.mark.slow
def test_reference_report_script_at_tiny_scale(tmp_path):
    """reports/make_mnist_cpu.sh with tiny presets and budgets: every command it runs works."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "VDVAE": "vdvae-mnist-tiny",
           "DCTVAE": "dctvae-mnist-tiny", "TRAIN_ARGS": "--steps 4", "IW_SAMPLES": "2", "EVAL_LIMIT": "10",
           "POINTS": "2", "RESTARTS": "1", "STEPS": "2", "ATTACK_ARGS": "--layers 1,2", "RUNS": str(tmp_path / "runs"),
           "OUT": str(tmp_path / "report"), "FINDINGS": str(tmp_path / "none.md")}
    subprocess.run(["bash", str(ROOT / "reports" / "make_mnist_cpu.sh")], env=env, check=True, capture_output=True)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    # the ensemble (its current version) and the paper's PGD side by side: a curve per model and attack
    from robustvae.attacks.registry import AUTO_VERSION

    assert {(r["model_label"], r["attack"]) for r in summary["table"]} == {
        (m, a) for m in ("vdvae-mnist-tiny", "dctvae-mnist-tiny") for a in ("pgd on skl", AUTO_VERSION)}
    assert "dctvae-mnist-tiny · pgd on skl" in {r["model"] for r in summary["table"]}
    assert len(summary["runs"]) == 2 and {"auto", "pgd"} <= {w for r in summary["runs"] for w in r["command"].split()}
    assert summary["certify"]  # DCT-VAE's context, certified on the same points
    notes = (tmp_path / "runs" / "commands.txt").read_text()
    assert "--suite attacks/figure10-mnist.toml" in notes and "eval" in notes and "certify" in notes
    # a second run reuses the trained models and the evaluation, and resumes the (finished) attack
    subprocess.run(["bash", str(ROOT / "reports" / "make_mnist_cpu.sh")], env=env, check=True, capture_output=True)
    assert "reused" in (tmp_path / "runs" / "commands.txt").read_text()
