"""The throughput benchmark runs and reports self-consistent numbers (no timing assertions)."""

from __future__ import annotations

import json

from benchmarks.train_throughput import main


def test_train_throughput_reports_ratios(tmp_path, capsys):
    out = tmp_path / "t.json"
    res = main(["--preset", "vdvae-mnist-tiny", "--batch-size", "4", "--repeats", "1", "--out", str(out)])
    row = res["rows"][0]
    assert row["flops_per_image"] > 0 and row["images_per_s"] > 0
    assert abs(row["fraction_of_limit"] - row["achieved_flops_per_s"] / res["dense_conv_flops_per_s"]) < 1e-12
    assert json.loads(out.read_text())["rows"][0]["preset"] == "vdvae-mnist-tiny"
    assert "of limit" in capsys.readouterr().out


def test_attack_throughput_batched_equals_one_at_a_time(tmp_path, capsys):
    from benchmarks.attack_throughput import main as attack_main

    res = attack_main(["--preset", "vdvae-mnist-tiny", "--points", "2", "--restarts", "2", "--steps", "3",
                       "--out", str(tmp_path / "a.json")])
    assert res["attack"]["max_abs_difference"] < 1e-4 and res["attack"]["speedup"] > 0
    assert res["ms_ssim"]["max_abs_difference"] < 1e-4
    assert "speed-up" in capsys.readouterr().out
