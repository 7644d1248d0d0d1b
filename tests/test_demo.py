"""The demo's pipeline end to end at a tiny scale (train, eval, attack, report), and its output-directory rules."""

from __future__ import annotations

import dataclasses
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
TINY = DemoSettings(
    presets=("vdvae-mnist-tiny", "dctvae-mnist-tiny"),
    train_steps=8,
    iw_samples=2,
    eval_limit=20,
    points=2,
    restarts=2,
    attack_steps=2,
)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """One uninterrupted demo at tiny sizes, shared by the tests of this module: (out, summary)."""
    out = tmp_path_factory.mktemp("tiny") / "demo"
    return out, run_demo(out, TINY, device="cpu", quiet=True)


def test_demo_pipeline_end_to_end_on_tiny_models(tiny_demo):
    out, summary = tiny_demo
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
    assert json.loads((out / "demo.json").read_text())["stages"]["report"]["status"] == "done"


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
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
        "VDVAE": "vdvae-mnist-tiny",
        "DCTVAE": "dctvae-mnist-tiny",
        "TRAIN_ARGS": "--steps 4",
        "IW_SAMPLES": "2",
        "EVAL_LIMIT": "10",
        "POINTS": "2",
        "RESTARTS": "1",
        "STEPS": "2",
        "ATTACK_ARGS": "--layers 1,2",
        "RUNS": str(tmp_path / "runs"),
        "OUT": str(tmp_path / "report"),
        "FINDINGS": str(tmp_path / "none.md"),
    }
    subprocess.run(["bash", str(ROOT / "reports" / "make_mnist_cpu.sh")], env=env, check=True, capture_output=True)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    # the ensemble (its current version) and the paper's PGD side by side: a curve per model and attack
    from robustvae.attacks.registry import AUTO_VERSION

    assert {(r["model_label"], r["attack"]) for r in summary["table"]} == {
        (m, a) for m in ("vdvae-mnist-tiny", "dctvae-mnist-tiny") for a in ("pgd on skl", AUTO_VERSION)
    }
    assert "dctvae-mnist-tiny · pgd on skl" in {r["model"] for r in summary["table"]}
    assert len(summary["runs"]) == 2 and {"auto", "pgd"} <= {w for r in summary["runs"] for w in r["command"].split()}
    assert summary["certify"]  # DCT-VAE's context, certified on the same points
    notes = (tmp_path / "runs" / "commands.txt").read_text()
    assert "--suite attacks/figure10-mnist.toml" in notes and "eval" in notes and "certify" in notes
    # a second run reuses the trained models and the evaluation, and resumes the (finished) attack
    subprocess.run(["bash", str(ROOT / "reports" / "make_mnist_cpu.sh")], env=env, check=True, capture_output=True)
    assert "reused" in (tmp_path / "runs" / "commands.txt").read_text()


TIMINGS = {"wall_time_s", "wall_time"}


def _deterministic(out: Path) -> dict:
    """summary.json minus timings: the output folder's path and each checkpoint's sha256 (best.pt stores the training's
    wall time) are replaced by names, and wall times are dropped."""
    summary = json.loads((out / "summary.json").read_text())
    text = json.dumps(summary).replace(str(out), "<out>")
    for m in summary["models"]:
        text = text.replace(m["sha256"], f"<sha256 of {m['label']}>")

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in TIMINGS}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return strip(json.loads(text))


def test_an_interrupted_demo_resumes_to_the_report_of_an_uninterrupted_one(tiny_demo, tmp_path, monkeypatch):
    """Ctrl-C during the second model's training, then again during the attack: --resume finishes the demo at the
    stage and step it reached, and its report equals an uninterrupted demo's in every deterministic field."""
    from robustvae.errors import Interrupted
    from robustvae.experiments import attack as attack_module
    from robustvae.training.loop import Trainer

    whole, _ = tiny_demo
    out = tmp_path / "interrupted"

    stop_if_requested = Trainer._stop_if_requested

    def ctrl_c_at_step_3(self, run):  # what the first Ctrl-C does: the handler sets the flag, the step finishes
        if self.cfg.name == "dctvae-mnist-tiny" and run.state.step == 3:
            self._stop_requested = True
        return stop_if_requested(self, run)

    monkeypatch.setattr(Trainer, "_stop_if_requested", ctrl_c_at_step_3)
    with pytest.raises(Interrupted) as e:
        run_demo(out, TINY, device="cpu", quiet=True)
    msg = str(e.value)
    assert msg.startswith("demo interrupted during stage 2/5 (train dctvae-mnist-tiny): interrupted at step 3/8")
    assert msg.endswith(f"continue with: robustvae demo --out {out} --resume") and msg.count("--resume") == 1
    assert (out / "runs" / "vdvae-mnist-tiny" / "summary.json").is_file()
    assert not (out / "runs" / "dctvae-mnist-tiny" / "summary.json").exists()
    monkeypatch.setattr(Trainer, "_stop_if_requested", stop_if_requested)

    run_unit, calls = attack_module.run_unit, []

    def ctrl_c_in_the_third_unit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return run_unit(*args, **kwargs)

    steps = []
    monkeypatch.setattr(attack_module, "run_unit", ctrl_c_in_the_third_unit)
    monkeypatch.setattr(
        Trainer,
        "fit",
        lambda self, resume=False, on_step=None, fit=Trainer.fit: (
            steps.append((self.cfg.name, resume)),
            fit(self, resume, on_step),
        )[1],
    )
    with pytest.raises(Interrupted) as e:  # the CLI's way in, as a user types it: --resume alone
        run_demo(out, {}, device="cpu", quiet=True, resume=True)
    assert steps == [("dctvae-mnist-tiny", True)]  # the first model was not trained again, the second continued
    assert str(e.value).startswith("demo interrupted during stage 4/5 (attack): the records of finished units are kept")
    kept = (out / "runs" / "attack" / "records.jsonl").read_text().splitlines()
    assert kept and len({json.loads(r)["unit"] for r in kept}) == 2  # the two units finished before Ctrl-C
    monkeypatch.setattr(attack_module, "run_unit", run_unit)

    assert main(["demo", "--out", str(out), "--resume", "-q", "--points", "2", "--device", "cpu"]) == 0  # agrees: fine
    assert steps == [("dctvae-mnist-tiny", True)] and len(calls) == 3 + 0  # nothing trained again
    assert _deterministic(out) == _deterministic(whole)
    notes = (out / "commands.txt").read_text()
    assert "# attack: " in notes and "in 2 parts (interrupted, continued with --resume)" in notes


def test_demo_resume_refuses_what_it_cannot_continue(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "none"), "--resume", "-q"]) == 2
    assert "nothing to resume in" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "x"), "--resume", "--force", "-q"]) == 2
    assert "contradict" in capsys.readouterr().err
    d = tmp_path / "d"
    d.mkdir()
    saved = dataclasses.asdict(DemoSettings(points=3))
    (d / "demo.json").write_text(json.dumps({"format": "robustvae-demo/1", "settings": saved, "stages": {}}))
    assert main(["demo", "--out", str(d), "--resume", "--points", "4", "-q"]) == 2
    err = capsys.readouterr().err
    assert "saved settings (points 3 there, 4 now)" in err and len(err.strip().splitlines()) == 1
    (d / "demo.json").write_text("[1, 2]")
    assert main(["demo", "--out", str(d), "--resume", "-q"]) == 2
    assert "not a demo state file" in capsys.readouterr().err
