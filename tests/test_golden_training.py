"""Training reproduces the metrics and weights recorded at git 88ee658 (tests/golden/make_golden_88ee658.py).

The same two tiny runs (6 steps, batch 16, one CPU thread) are made with the current
code; the logged metrics and, per state-dict key, the sum and absolute sum of the
final weights must match the recorded ones.

The recorded run was made on another CPU, whose kernels round float32 differently. The tolerance
is derived from float32 rounding (tests/tolerance.py): the run is made a second time under
``float32_jitter``, and a value may differ from the recorded one by ``SAFETY`` (8) times the largest
change the jitter made in its group, plus 8 roundings of the value. A logged metric's group is its
field (every row's ``loss_nats``); a weight sum's group is its kind (sum or absolute sum), its change
measured per square root of the tensor's size (a sum of n independent changes grows as sqrt(n)). Not
relative to the sum: a weight whose gradient is rounding noise still takes Adam steps of the full
learning rate, in a direction rounding decides (a bias of dctvae's prior sums to 1.1e-4 in absolute
value after 6 steps on the recording CPU, 2.0e-4 on an AVX2 one). Keys, row counts, steps and
flags are exact.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from robustvae import zoo
from robustvae.registry import get_preset
from robustvae.training import Trainer
from tolerance import RoundingTolerance, float32_jitter

pytestmark = pytest.mark.numerical  # CI runs these again under ATEN_CPU_CAPABILITY=default

GOLDEN = Path(__file__).parent / "golden"
CPU = torch.device("cpu")


@pytest.fixture
def one_thread():
    """The golden files were made with torch.set_num_threads(1); restore the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _golden_run(preset: str, out: Path) -> dict:
    cfg = get_preset(preset)
    cfg = dataclasses.replace(
        cfg,
        train=dataclasses.replace(
            cfg.train, steps=6, batch_size=16, warmup_steps=2, log_every=2, checkpoint_every=4, val_batches=2
        ),
    )
    Trainer.prepare_dir(out, resume=False, force=True)
    Trainer(cfg, out, CPU, quiet=True).fit()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        m.pop("elapsed_s", None)
    sd = zoo.read_checkpoint(out / "last.pt")["model"]
    return {
        "metrics": metrics,
        "weights_sum": {k: float(v.double().sum()) for k, v in sd.items()},
        "weights_abs_sum": {k: float(v.double().abs().sum()) for k, v in sd.items()},
    }


def _sizes(out: Path) -> dict[str, int]:
    return {k: v.numel() for k, v in zoo.read_checkpoint(out / "last.pt")["model"].items()}


def _scale(sizes: dict[str, int]):
    """Weight sums change in units of the square root of their tensor's size; logged metrics in absolute terms."""
    return lambda path: math.sqrt(sizes[path[1]]) if path[0].startswith("weights") else 1.0


def _group(path: tuple) -> str:
    return path[0] if path[0].startswith("weights") else path[-1]


@pytest.mark.parametrize("preset", ["vdvae-mnist-tiny", "dctvae-mnist-tiny"])
def test_training_matches_the_golden_run(preset, tmp_path, one_thread):
    want = json.loads((GOLDEN / f"train-{preset}.json").read_text())
    got = _golden_run(preset, tmp_path / preset)
    with float32_jitter(1):
        jittered = _golden_run(preset, tmp_path / "jittered")
    assert len(got["metrics"]) == len(want["metrics"]) and got["weights_sum"].keys() == want["weights_sum"].keys()
    tol = RoundingTolerance(got, [jittered], group=_group, scale=_scale(_sizes(tmp_path / preset)))
    tol.assert_close(got, want, preset, exact=("lr", "epoch"))  # the schedule and the step count: Python arithmetic
    print(
        f"{preset}: worst |new - golden| / tolerance {tol.worst[0]:.3g} at {tol.worst[1]} "
        f"(|diff| {tol.worst[2]:.3g}, tolerance {tol.worst[3]:.3g})"
    )
