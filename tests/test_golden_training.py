"""Training reproduces the metrics and weights recorded at git 88ee658 (tests/golden/make_golden_88ee658.py).

The same two tiny runs (6 steps, batch 16, one CPU thread) are made with the current
code; the logged metrics and, per state-dict key, the sum and absolute sum of the
final weights must match the recorded ones.
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
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=6, batch_size=16, warmup_steps=2,
                                                             log_every=2, checkpoint_every=4, val_batches=2))
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


def _assert_rows_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.keys() == w.keys(), i
        for k, v in w.items():
            if isinstance(v, float):
                if math.isnan(v):
                    assert math.isnan(g[k]), (i, k)
                else:
                    assert g[k] == pytest.approx(v, rel=1e-6), (i, k)
            else:
                assert g[k] == v, (i, k)


@pytest.mark.parametrize("preset", ["vdvae-mnist-tiny", "dctvae-mnist-tiny"])
def test_training_matches_the_golden_run(preset, tmp_path, one_thread):
    want = json.loads((GOLDEN / f"train-{preset}.json").read_text())
    got = _golden_run(preset, tmp_path / preset)
    _assert_rows_equal(got["metrics"], want["metrics"])
    for part in ("weights_sum", "weights_abs_sum"):
        assert got[part].keys() == want[part].keys(), part
        for k, v in want[part].items():
            assert got[part][k] == pytest.approx(v, rel=1e-6, abs=1e-9), (part, k)
