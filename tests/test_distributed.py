"""Multi-process training and attack sweeps under torchrun (gloo, 2 CPU processes).

The references are single-process runs of the same command: after the same steps with
the same global batch the weights must agree to float rounding, and the merged attack
records must equal a single process's.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustvae.cli import main
from robustvae.distributed import DistContext
from robustvae.models import rng
from robustvae.registry import build_model
from robustvae.training import Trainer

from conftest import tiny_config

# a flat learning rate after warm-up, so a run extended with --resume --steps follows a longer run exactly
TRAIN = [
    "--preset",
    "vdvae-mnist-tiny",
    "--data",
    "synthetic",
    "--batch-size",
    "16",
    "-q",
    "--set",
    "train.warmup_steps=2",
    "--set",
    "train.checkpoint_every=2",
    "--set",
    "train.log_every=1",
    "--set",
    "train.lr=0.001",
    "--set",
    "train.lr_min=0.001",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """The in-process reference runs use one thread, as torchrun's workers do: the same float arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torchrun(*args: str, nproc: int = 2, script: str | None = None, timeout: float = 300, popen: bool = False):
    """``torchrun --standalone --nproc_per_node N [-m robustvae | script] args`` in a subprocess."""
    target = [script] if script else ["-m", "robustvae"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *target, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict, atol: float = 2e-5) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by {worst:.3g}"


def single(tmp: Path, name: str, steps: int) -> Path:
    out = tmp / name
    assert main(["train", *TRAIN, "--steps", str(steps), "--out", str(out), "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """6 steps of vdvae-mnist-tiny with 2 processes (global batch 16), through the console script."""
    script = shutil.which("robustvae")
    assert script, "the robustvae console script is not installed (pip install -e .)"
    out = tmp_path_factory.mktemp("ddp") / "run"
    r = torchrun("train", *TRAIN, "--steps", "6", "--out", str(out), script=script)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


# --------------------------------------------------------------------------- training


def test_two_processes_train_to_the_weights_of_one_process(two_process_run, tmp_path):
    ref = single(tmp_path, "one", 6)
    assert_same_weights(weights(ref), weights(two_process_run))
    summary = json.loads((two_process_run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 6 and summary["skipped_steps"] == 0
    # the logged losses are of the whole global batch, as in the single-process run
    log2 = [json.loads(line) for line in (two_process_run / "metrics.jsonl").read_text().splitlines()]
    log1 = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log2] == [r["step"] for r in log1]
    for a, b in zip(log1, log2):
        assert math.isclose(a.get("loss_nats", a.get("nelbo")), b.get("loss_nats", b.get("nelbo")), rel_tol=1e-5)


def test_a_two_process_run_resumes_with_one_process(two_process_run, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(two_process_run, run)
    assert main(["train", "--out", str(run), "--resume", "--steps", "10", "-q", "--device", "cpu"]) == 0
    assert_same_weights(weights(single(tmp_path, "one", 10)), weights(run))


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out += children.get(p, [])
        todo += children.get(p, [])
    return out


# robustvae's command line, with the main process stopped for good right after it saved last.pt at step STOP_AT:
# the run is killed there, whatever the machine's speed (a run that races a poll for last.pt may finish first)
STOP_AT = 20
HALT_AFTER_SAVE = f"""
import os, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from robustvae.training.checkpoint import Checkpointer
from robustvae.cli import main

save_last = Checkpointer.save_last


def save_then_halt(self, state):
    save_last(self, state)
    if self.dist.is_main and state.step == {STOP_AT}:
        open(os.environ["HALTED_MARKER"], "w").close()
        time.sleep(3600)  # the test kills every process here


Checkpointer.save_last = save_then_halt
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_distributed_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    out, marker, script = tmp_path / "killed", tmp_path / "halted", tmp_path / "halt_after_save.py"
    script.write_text(HALT_AFTER_SAVE)
    monkeypatch.setenv("HALTED_MARKER", str(marker))
    proc = torchrun("train", *TRAIN, "--steps", "40", "--out", str(out), script=str(script), popen=True)
    deadline = time.monotonic() + 240
    while not marker.exists():  # the main process saved step STOP_AT and halted: nothing moves until the kill
        assert proc.poll() is None, f"the run ended before it reached step {STOP_AT}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"no checkpoint at step {STOP_AT} after 240 s"
        time.sleep(0.05)
    for pid in _descendants(proc.pid) + [proc.pid]:  # a crash: no process gets to clean up
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)
    assert not (out / "summary.json").exists(), "the run finished before the kill; nothing was tested"
    assert torch.load(out / "last.pt", weights_only=True)["train_state"]["step"] == STOP_AT
    r = torchrun("train", "--out", str(out), "--resume", "--steps", "40", "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 40
    assert_same_weights(weights(single(tmp_path, "one", 40)), weights(out), atol=1e-4)


@pytest.mark.parametrize("preset", ["vdvae-mnist-tiny", "dctvae-mnist-tiny"])
def test_batch_slices_draw_the_numbers_of_the_whole_batch(preset, gen):
    """Two halves under rng.batch_slice average to the whole batch's gradient; without it they do not."""
    cfg = tiny_config(preset)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    if hasattr(model, "fit_data"):
        model.fit_data(torch.rand(64, 1, 28, 28, generator=gen))
    x = (torch.rand(8, 1, 28, 28, generator=gen) > 0.5).float()
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))

    def grads(loss_fn) -> torch.Tensor:
        model.zero_grad()
        loss_fn().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    def whole():
        torch.manual_seed(seed)
        return model(x).nelbo.mean()

    def halves(sliced: bool):  # two "processes": each starts from the same generator state
        total = 0
        for lo in (0, 4):
            torch.manual_seed(seed)
            if sliced:
                with rng.batch_slice(8, lo, lo + 4):
                    total = total + model(x[lo : lo + 4]).nelbo.mean() / 2
            else:
                total = total + model(x[lo : lo + 4]).nelbo.mean() / 2
        return total

    g = grads(whole)
    torch.testing.assert_close(grads(lambda: halves(True)), g, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(grads(lambda: halves(False)), g, rtol=1e-4, atol=1e-5)


def test_a_global_batch_that_does_not_split_evenly_is_refused(tmp_path):
    cfg = tiny_config(batch_size=15, steps=2)
    with pytest.raises(Exception, match="does not split evenly over 2 processes"):
        Trainer(cfg, tmp_path, torch.device("cpu"), quiet=True, dist=DistContext(0, 2, 0, "gloo")).fit()


# --------------------------------------------------------------------------- attack

ATTACK = ["--layers", "1-2", "--points", "6", "--restarts", "2", "--steps", "3", "--max-batch-mib", "1", "-q"]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_process_attack_merges_to_the_records_of_one_process(two_process_run, tmp_path):
    r = torchrun("attack", str(two_process_run), *ATTACK, "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert main(["attack", str(two_process_run), *ATTACK, "--out", str(tmp_path / "one"), "--device", "cpu"]) == 0
    one, two = _records(tmp_path / "one" / "records.jsonl"), _records(tmp_path / "two" / "records.jsonl")
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert len(run["settings"]["units"]) >= 4, "too few units to split over 2 processes"
    assert run["processes"] == 2 and run["status"] == "complete" and run["units_done"] == len(run["settings"]["units"])
    assert len(one) == len(two) > 0
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert math.isclose(a[key], b[key], rel_tol=1e-6, abs_tol=1e-9) or (
                    math.isnan(a[key]) and math.isnan(b[key])
                ), key
            else:
                assert a[key] == b[key], key
    assert not (tmp_path / "two" / ".parts").exists()
    assert sorted(p.name for p in (tmp_path / "one" / "gallery").iterdir()) == sorted(
        p.name for p in (tmp_path / "two" / "gallery").iterdir()
    )


def test_parts_left_by_a_killed_sweep_are_merged_in_unit_order(two_process_run, tmp_path):
    """RunDir.merge: complete units from the file and from the parts, torn and partial units dropped."""
    from robustvae.experiments.rundir import RunDir
    from robustvae.records import read_attack_records

    ref = tmp_path / "ref"
    assert main(["attack", str(two_process_run), *ATTACK, "--out", str(ref), "--device", "cpu"]) == 0
    rows = _records(ref / "records.jsonl")
    units = list(dict.fromkeys(r["unit"] for r in rows))
    by_unit = {u: [r for r in rows if r["unit"] == u] for u in units}
    out = tmp_path / "killed"
    (out / ".parts").mkdir(parents=True)
    dump = lambda rs: "".join(json.dumps(r) + "\n" for r in rs)  # noqa: E731
    # the merged file has units 0 and 2; rank 0's part unit 1 and half of unit 3; rank 1's unit 3 and a torn line
    (out / "records.jsonl").write_text(dump(by_unit[units[0]] + by_unit[units[2]]))
    (out / ".parts" / "records.rank-0.jsonl").write_text(dump(by_unit[units[1]] + by_unit[units[3]][:2]))
    (out / ".parts" / "records.rank-1.jsonl").write_text(dump(by_unit[units[3]]) + '{"unit": "torn')

    expected = {u: len(by_unit[u]) for u in units}
    merged = RunDir(out).merge("records.jsonl", expected, read_attack_records)
    expect = [r for u in units[:4] for r in by_unit[u]]
    assert merged == expect and _records(out / "records.jsonl") == expect
    assert not (out / ".parts").exists()


# --------------------------------------------------------------------------- bad launches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["train", "attack"])
def test_a_missing_rendezvous_variable_is_named(command, monkeypatch, tmp_path, capsys):
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    args = ["train", "--steps", "1", "--data", "synthetic"] if command == "train" else ["attack", "vdvae-mnist-tiny"]
    assert main([*args, "--out", str(tmp_path / "x"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "MASTER_ADDR" in err and "torchrun" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_an_unreachable_rendezvous_fails_with_a_clear_error(monkeypatch, tmp_path, capsys):
    port = _free_port()  # nothing listens there
    for k, v in {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "ROBUSTVAE_DIST_TIMEOUT_S": "2",
    }.items():
        monkeypatch.setenv(k, v)
    assert main(["train", "--steps", "1", "--data", "synthetic", "--out", str(tmp_path / "x"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("rank 1: error: rank 1 could not join the rendezvous at 127.0.0.1:") and "MASTER_ADDR" in err


@pytest.mark.parametrize("backend, message", [("mpi", "unsupported backend 'mpi'"), ("nccl", "nccl needs CUDA")])
def test_an_unsupported_backend_is_refused(backend, message, monkeypatch, tmp_path, capsys):
    for k, v in {
        "RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }.items():
        monkeypatch.setenv(k, v)
    code = main(
        [
            "train",
            "--steps",
            "1",
            "--data",
            "synthetic",
            "--backend",
            backend,
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "x"),
            "-q",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()
