"""Training: the loss goes down, resume is exact, skipping stops a hopeless run, nothing is overwritten."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config
from robustvae.config import ModelConfig, from_dict, to_dict
from robustvae.errors import RobustVAEError, TrainingError
from robustvae.training import Interrupted, Trainer, lr_factor
from robustvae.zoo import read_checkpoint

CPU = torch.device("cpu")


def _fit(cfg, out, **kw):
    Trainer.prepare_dir(out, resume=kw.get("resume", False), force=kw.pop("force", False))
    return Trainer(cfg, out, CPU, quiet=True).fit(**kw)


def test_a_few_hundred_steps_lower_the_loss_on_offline_mnist(tmp_path):
    cfg = tiny_config(
        data="mnist-offline", steps=240, batch_size=32, lr=3e-3, log_every=20, checkpoint_every=1000, val_batches=4
    )
    _fit(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert train[-1]["loss_nats"] < 0.6 * train[0]["loss_nats"]
    val = [r for r in rows if r["kind"] == "val"]
    assert val[-1]["nelbo"] < 250  # untrained: ~540 nats (784 pixels at log 2)
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "last.pt").is_file()
    cfg_saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg_saved == cfg.to_dict()


class _Crash(Exception):
    pass


def test_resume_after_a_crash_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    cfg = tiny_config(steps=14, checkpoint_every=4, ema_decay=0.9)
    _fit(cfg, tmp_path / "a")

    def crash(step):
        if step == 10:  # after the checkpoint at step 8, before the next one
            raise _Crash

    with pytest.raises(_Crash):
        _fit(cfg, tmp_path / "b", on_step=crash)
    assert read_checkpoint(tmp_path / "b" / "last.pt")["train_state"]["step"] == 8
    _fit(cfg, tmp_path / "b", resume=True)
    a = read_checkpoint(tmp_path / "a" / "last.pt")
    b = read_checkpoint(tmp_path / "b" / "last.pt")
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume
    ref = [
        json.loads(line)["step"]
        for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert steps == ref


def test_resuming_a_finished_run_keeps_its_summary(tmp_path):
    """--resume of a run that already reached its last step runs nothing and reports what it had (the README's
    resume example, run after the training it continues), instead of a summary without validation."""
    cfg = tiny_config(steps=3)
    first = _fit(cfg, tmp_path / "run")
    again = _fit(cfg, tmp_path / "run", resume=True)
    assert again == json.loads(json.dumps(first)) and again["final_val"]["nelbo"] > 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == again


def test_ctrl_c_finishes_the_step_saves_last_pt_and_resumes_exactly(tmp_path):
    cfg = tiny_config(steps=8, checkpoint_every=1000)
    _fit(cfg, tmp_path / "a")

    def ctrl_c(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match="interrupted at step 3/8"):
        _fit(cfg, tmp_path / "b", on_step=ctrl_c)
    assert signal.getsignal(signal.SIGINT) is handler
    assert read_checkpoint(tmp_path / "b" / "last.pt")["train_state"]["step"] == 3
    _fit(cfg, tmp_path / "b", resume=True)
    a = read_checkpoint(tmp_path / "a" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_absurd_skip_threshold_stops_the_run_with_a_clear_message(tmp_path):
    cfg = tiny_config(steps=50, skip_threshold=1e-9, max_consecutive_skips=5)
    with pytest.raises(TrainingError, match="5 consecutive updates skipped.*skip_threshold"):
        _fit(cfg, tmp_path / "run")


def test_existing_run_is_never_overwritten(tmp_path):
    cfg = tiny_config(steps=2)
    _fit(cfg, tmp_path / "run")
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(RobustVAEError, match="--resume.*--force"):
        Trainer.prepare_dir(tmp_path / "run", resume=False, force=False)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    with pytest.raises(RobustVAEError, match="nothing to resume"):
        Trainer.prepare_dir(tmp_path / "empty", resume=True, force=False)


def test_batch_larger_than_the_data_is_refused(tmp_path):
    cfg = tiny_config(steps=2, batch_size=100000)
    with pytest.raises(RobustVAEError, match="larger than the"):
        _fit(cfg, tmp_path / "run")


def test_nan_losses_are_skipped_not_applied(tmp_path, monkeypatch):
    """A step whose loss is NaN leaves the weights untouched and is counted."""
    from robustvae.models.vdvae import VDVAE

    real = VDVAE.elbo
    calls = {"n": 0}

    def flaky(self, x):
        r = real(self, x)
        calls["n"] += 1
        if self.training and calls["n"] == 3:
            r.nelbo = r.nelbo * float("nan")
        return r

    monkeypatch.setattr(VDVAE, "elbo", flaky)
    cfg = tiny_config(steps=5)
    summary = _fit(cfg, tmp_path / "run")
    assert summary["skipped_steps"] == 1
    w = read_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(torch.isfinite(t).all() for t in w.values())


def test_cosine_schedule_shape():
    lrs = [lr_factor(s, 100, 10, 1e-3, 1e-5) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[100] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_cifar_shaped_tiny_model_trains(tmp_path):
    cfg = tiny_config("vdvae-cifar10-tiny", data="synthetic-rgb", steps=6)
    summary = _fit(cfg, tmp_path / "run")
    assert summary["steps"] == 6 and summary["final_val"]["bpd"] > 0
    stored = read_checkpoint(tmp_path / "run" / "best.pt")["config"]["model"]
    assert from_dict(ModelConfig, stored | {"latents": to_dict(cfg.model.latents)}) == cfg.model  # reads back as it was


@pytest.mark.parametrize(
    "option, value", [("channels_last", False), pytest.param("compile", True, marks=pytest.mark.slow)]
)
def test_speed_options_train_to_the_same_weights(option, value, tmp_path):
    """channels_last / torch.compile change the memory layout or the kernels, not the result."""
    _fit(tiny_config(steps=4), tmp_path / "plain")
    _fit(tiny_config(steps=4, **{option: value}), tmp_path / option)
    a = read_checkpoint(tmp_path / "plain" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / option / "last.pt")["model"]
    assert a.keys() == b.keys()  # the plain module's names, also when compiled
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_importing_training_leaves_the_warning_filters_alone():
    """The scheduler warning is silenced around the one call that raises it, not for the whole process."""
    code = (
        "import warnings, torch\n"
        "before = [repr(f) for f in warnings.filters]\n"
        "import robustvae.training\n"
        "print([repr(f) for f in warnings.filters] == before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_a_skipped_first_update_does_not_warn_about_the_scheduler(tmp_path, recwarn):
    cfg = tiny_config(steps=2, skip_threshold=1e-9, max_consecutive_skips=5)
    _fit(cfg, tmp_path / "run")
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
