"""Hardening of run directories, record readers, the report's checks and compress (issue 16).

Each test reproduces one hostile case: a garbage line in the middle of a records file,
a second writer, symbolic links in ``--out``, orphaned temporary files, a lone shard,
NaN scores without a flag, a NaN reconstruction, a huge or bomb image, hostile names.
"""

from __future__ import annotations

import json
import math
import re
import os
import stat
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from robustvae.cli import main
from robustvae.errors import RobustVAEError
from robustvae.experiments.rundir import RunDir
from robustvae.io import read_jsonl, safe_name, write_json

TINY = ["--preset", "vdvae-mnist-tiny", "--data", "synthetic", "--quiet", "--batch-size", "8"]
ATTACK = ["--points", "2", "--restarts", "1", "--steps", "1", "--layers", "1,2", "-q"]


def _one_line_error(capsys, argv, fragment):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    assert main(["train", *TINY, "--steps", "2", "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def attacked(trained, tmp_path_factory):
    """One finished attack run of ``trained`` (ATTACK settings); tests copy it before changing it."""
    out = tmp_path_factory.mktemp("attacked") / "a"
    assert main(["attack", str(trained), *ATTACK, "--out", str(out)]) == 0
    return out


def _copy(run: Path, dest: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, dest))


# --------------------------------------------------------------------------- record readers


def test_a_garbage_line_in_the_middle_is_an_error_naming_file_and_line_and_nothing_is_cut(
    tmp_path, trained, attacked, capsys
):
    out = _copy(attacked, tmp_path / "a")
    rec = out / "records.jsonl"
    lines = rec.read_bytes().splitlines(keepends=True)
    assert len(lines) > 10
    bad = b"".join(lines[:5] + [b"{garbage\n"] + lines[5:])
    rec.write_bytes(bad)
    capsys.readouterr()
    _one_line_error(capsys, ["report", str(out), "--out", str(tmp_path / "r")], "line 6 is not valid JSON")
    assert not (tmp_path / "r").exists()
    # resuming the attack refuses too, and leaves the file byte for byte as it was (no truncation)
    _one_line_error(capsys, ["attack", str(trained), *ATTACK, "--out", str(out)], "line 6")
    assert rec.read_bytes() == bad


@pytest.mark.parametrize(
    "row,field",
    [
        ({"unit": 3}, "unit"),
        ({"k": "2"}, "k"),
        ({"msssim": "high"}, "msssim"),
        ({"skl": ["a"]}, "skl.0"),
        ({"unit": None}, "unit"),
    ],
)
def test_a_record_with_a_wrong_type_names_file_line_and_field(tmp_path, attacked, row, field):
    from robustvae.records import read_attack_records

    out = _copy(attacked, tmp_path / "a")
    rec = out / "records.jsonl"
    rows = [json.loads(x) for x in rec.read_text().splitlines()]
    rows[3].update(row)
    rec.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RobustVAEError, match=rf"records.jsonl line 4: field '{re.escape(field)}'"):
        read_attack_records(rec)


def test_a_row_without_unit_and_a_non_object_line_are_errors(tmp_path):
    from robustvae.records import read_attack_records

    p = tmp_path / "records.jsonl"
    p.write_text('{"model": "m"}\n')
    with pytest.raises(RobustVAEError, match="line 1: field 'unit' is missing"):
        read_attack_records(p)
    p.write_text("[1, 2]\n{}\n")
    with pytest.raises(RobustVAEError, match="line 1 is not a JSON object"):
        read_jsonl(p)


def test_a_torn_last_line_is_tolerated_said_once_and_cut_only_when_repairing(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
        assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    assert len([w for w in caught if "torn" in str(w.message)]) == 1
    assert p.read_bytes().endswith(b'"b"')  # not repaired: nothing cut
    read_jsonl(p, repair=True)
    assert p.read_bytes() == b'{"a": 1}\n{"a": 2}\n'


def test_a_corrupt_gallery_file_is_a_one_line_error(tmp_path, attacked, capsys):
    out = _copy(attacked, tmp_path / "a")
    gallery = sorted((out / "gallery").glob("*.npz"))
    assert gallery
    gallery[0].write_bytes(b"PK\x03\x04 not a zip")
    capsys.readouterr()
    _one_line_error(capsys, ["report", str(out), "--out", str(tmp_path / "r")], f"gallery file {gallery[0]}")


# --------------------------------------------------------------------------- the run directory


def test_out_that_is_a_file_or_under_a_file_is_refused_before_anything_is_written(tmp_path, trained, capsys):
    f = tmp_path / "file"
    f.write_text("mine")
    for cmd in (["attack", str(trained), *ATTACK], ["train", *TINY, "--steps", "1"], ["report", str(trained)]):
        _one_line_error(capsys, [*cmd, "--out", str(f)], "is a file")
        _one_line_error(capsys, [*cmd, "--out", str(f / "sub")], "is a file")
    assert f.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: permissions cannot be tested as root")
def test_an_unwritable_out_is_refused(tmp_path, trained, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _one_line_error(capsys, ["attack", str(trained), *ATTACK, "--out", str(ro / "a")], "not writable")
    finally:
        ro.chmod(0o700)


def test_unwritable_parent_check_is_decided_from_the_nearest_existing_folder(tmp_path, monkeypatch):
    """The check itself, independent of who runs the tests: os.access says no -> a one-line refusal."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(RobustVAEError, match=f"{tmp_path} is not writable"):
        RunDir(tmp_path / "new" / "deeper").check_usable()
    assert not (tmp_path / "new").exists()


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_writer_gets_a_one_line_error_and_a_killed_holder_releases_the_lock(tmp_path, trained, capsys):
    out = tmp_path / "a"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _one_line_error(capsys, ["attack", str(trained), *ATTACK, "--out", str(out)], "another robustvae process")
        assert not (out / "records.jsonl").exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    assert main(["attack", str(trained), *ATTACK, "--out", str(out)]) == 0


def test_the_lock_is_reentrant_within_one_process_and_released_after(tmp_path):
    run = RunDir(tmp_path / "d")
    with run.locked():
        with run.locked():  # the demo reports into its own locked folder
            pass
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX|fcntl.LOCK_NB)",
                str(tmp_path / "d" / ".lock"),
            ],
            capture_output=True,
        )
        assert probe.returncode != 0  # still held by the outer block
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX|fcntl.LOCK_NB)",
            str(tmp_path / "d" / ".lock"),
        ]
    )
    assert probe.returncode == 0


def test_symbolic_links_in_out_are_refused_and_nothing_outside_is_touched(tmp_path, trained, attacked, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.npz").write_bytes(b"keep")
    (outside / "figure10.png").write_bytes(b"keep")
    out = tmp_path / "a"
    out.mkdir()
    (out / "gallery").symlink_to(outside)
    _one_line_error(capsys, ["attack", str(trained), *ATTACK, "--out", str(out)], "is a symbolic link")
    # report: a linked file among the files it would replace
    _copy(attacked, tmp_path / "b")
    rep = tmp_path / "r"
    rep.mkdir()
    (rep / "figure10.png").symlink_to(outside / "figure10.png")
    capsys.readouterr()
    _one_line_error(capsys, ["report", str(tmp_path / "b"), "--out", str(rep)], "already holds a report")
    _one_line_error(capsys, ["report", str(tmp_path / "b"), "--out", str(rep), "--force"], "is a symbolic link")
    # demo --force: a linked subfolder is refused before anything is deleted
    demo = tmp_path / "demo"
    (demo / "runs").mkdir(parents=True)
    (demo / "runs" / "attack").symlink_to(outside)
    (outside / "records.jsonl").write_text("keep")
    _one_line_error(capsys, ["demo", "--out", str(demo), "--force", "-q"], "is a symbolic link")
    assert sorted(p.name for p in outside.iterdir()) == ["figure10.png", "precious.npz", "records.jsonl"]
    assert all(p.read_bytes() in (b"keep",) for p in outside.iterdir())


def test_writes_refuse_a_link_instead_of_following_it(tmp_path):
    target = tmp_path / "target.json"
    target.write_text("keep")
    link = tmp_path / "run.json"
    link.symlink_to(target)
    with pytest.raises(RobustVAEError, match="symbolic link"):
        write_json(link, {"a": 1})
    assert target.read_text() == "keep" and link.is_symlink()
    from robustvae.io import append_jsonl

    link2 = tmp_path / "records.jsonl"
    link2.symlink_to(target)
    with pytest.raises(RobustVAEError, match="symbolic link"):
        append_jsonl(link2, [{"a": 1}])
    assert target.read_text() == "keep"


def test_orphaned_temporary_files_are_removed_and_other_files_kept(tmp_path):
    d = tmp_path / "run"
    (d / "gallery").mkdir(parents=True)
    orphans = [d / ".last.pt.k2j3h4.tmp", d / ".run.json.x1.tmp", d / "gallery" / ".u-1.npz.abc.tmp"]
    for p in orphans:
        p.write_bytes(b"half")
    (d / "notes.tmp").write_text("mine")
    with RunDir(d).locked():
        pass
    assert not any(p.exists() for p in orphans) and (d / "notes.tmp").exists()


def test_files_get_the_users_normal_permissions(tmp_path):
    from robustvae.registry import build_model, get_preset
    from robustvae.zoo import atomic_save, make_checkpoint

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "run.json", {})
        cfg = get_preset("vdvae-mnist-tiny")
        atomic_save(make_checkpoint(cfg, build_model(cfg.model)), tmp_path / "last.pt")
        os.umask(0o027)
        write_json(tmp_path / "other.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "last.pt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "other.json").stat().st_mode) == 0o640


# --------------------------------------------------------------------------- report checks


def test_a_lone_shard_fails_every_planned_unit_present_and_both_shards_pass(tmp_path, trained):
    from robustvae import api

    for i in (1, 2):
        assert main(["attack", str(trained), *ATTACK, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}")]) == 0
    lone = api.report([tmp_path / "s1"], tmp_path / "r1").checks
    row = lone[lone.check == "every planned unit present"]
    assert len(row) == 1 and not row.passed.iloc[0]
    assert "shard(s) 1/2 of 2 given" in row.detail.iloc[0] and "first missing" in row.detail.iloc[0]
    both = api.report([tmp_path / "s1", tmp_path / "s2"], tmp_path / "r2").checks
    rows = both[both.check == "every planned unit present"]
    assert len(rows) >= 1 and rows.passed.all()


def test_non_finite_scores_are_counted_from_values_not_from_the_flag(tmp_path, attacked):
    from robustvae.io import write_jsonl
    from robustvae.reporting.aggregate import checks, nonfinite_rows, summarise
    from robustvae.reporting.load import load_runs

    out = _copy(attacked, tmp_path / "a")
    rows = read_jsonl(out / "records.jsonl")
    atk = [i for i, r in enumerate(rows) if r["kind"] == "attack"]
    rows[atk[0]]["msssim"] = math.nan  # hand-made: the flag still says finite
    rows[atk[1]]["delta_linf"] = math.nan
    rows[atk[1]]["delta_l2"] = math.inf
    assert not rows[atk[0]]["nonfinite"] and not rows[atk[1]]["nonfinite"]
    write_jsonl(out / "records.jsonl", rows)
    runs = load_runs([out])
    unrelated = runs.records[runs.records.kind == "unrelated"]
    assert len(unrelated) and unrelated.delta_linf.isna().all()  # not applicable to them: NaN by design, not counted
    assert int(nonfinite_rows(runs.records).sum()) == 2
    table = summarise(runs.records)
    assert int(table.nonfinite.sum()) == 2
    from robustvae.reporting.figures import figure10

    assert "2 row(s) with non-finite scores left out" in figure10(table).get_suptitle()  # the figure says so
    c = checks(runs, table)
    assert not c[c.check == "no non-finite rows"].passed.all()
    budget = c[c.check == "budget respected"]
    assert not budget.passed.all() and "non-finite size" in " ".join(budget.detail)


# --------------------------------------------------------------------------- compress


def _png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")  # "...png" has no suffix to go by
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_huge_and_bomb_images_are_one_line_errors(tmp_path, trained, gen, capsys):
    big = _png(tmp_path / "big" / "b.png", np.zeros((60, 70), np.uint8))
    base = ["compress", str(trained), "--layers", "1", "-q", "--out", str(tmp_path / "o")]
    _one_line_error(
        capsys, [*base, "--images", str(big), "--max-pixels", "4000"], "more than the limit of 4,000 pixels"
    )
    for side, fragment in (
        (3000, "3000x3000 pixels, more than the limit of 4,000,000"),  # refused from its header
        (100_000, "decompression bomb"),
    ):  # Pillow's own guard, as one line
        bomb = tmp_path / f"bomb{side}" / "bomb.png"
        bomb.parent.mkdir()
        ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
        bomb.write_bytes(
            b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + _chunk(b"IEND", b"")
        )
        _one_line_error(capsys, [*base, "--images", str(bomb)], fragment)
    _one_line_error(capsys, [*base, "--images", str(big), "--max-pixels", "0"], "--max-pixels")
    assert not (tmp_path / "o").exists()


def test_hostile_image_names_stay_inside_out_and_draw_as_text(tmp_path, trained, gen):
    imgs = tmp_path / "imgs"
    pixels = (torch.rand(28, 28, generator=gen) * 255).to(torch.uint8).numpy()
    files = [_png(imgs / "$\\frac{a$.png", pixels), _png(imgs / "x" / "...png", pixels)]
    out = tmp_path / "o"
    assert (
        main(
            [
                "compress",
                str(trained),
                "--layers",
                "1",
                "-q",
                "--out",
                str(out),
                "--images",
                str(files[0]),
                "--images",
                str(files[1]),
            ]
        )
        == 0
    )
    written = [p for p in tmp_path.rglob("*") if p.is_file() and imgs not in p.parents]
    assert written and all(out in p.parents for p in written if p.name != ".lock")
    assert safe_name("..") == "_.." and safe_name(".") == "_." and safe_name("") == "_"


def test_figures_draw_names_as_plain_text():
    from matplotlib.figure import Figure

    from robustvae.reporting.figures import new_figure, png_bytes

    fig = new_figure(3, 2)
    ax = fig.subplots()
    ax.set_title("$\\frac{a$")
    ax.plot([1, 10], [1, 2], label="$\\foo$")
    ax.set_xscale("log")  # its tick labels are matplotlib's own math and stay so
    ax.legend()
    assert png_bytes(fig)[:4] == b"\x89PNG"
    plain = Figure()
    plain.subplots().set_title("$\\frac{a$")
    with pytest.raises(ValueError):  # the failure this guards against
        png_bytes(plain)


def test_a_nan_reconstruction_is_not_scored_and_no_jpeg_is_matched(tmp_path, gen):
    import robustvae
    from robustvae.config import CompressConfig
    from robustvae.registry import build_model, get_preset
    from robustvae.zoo import LoadedModel

    cfg = get_preset("vdvae-mnist-tiny")
    model = build_model(cfg.model).eval()
    real = model.reconstruct

    def broken(x, k, *args, **kwargs):
        out = real(x, k, *args, **kwargs)
        return torch.full_like(out, math.nan) if k == 2 else out

    model.reconstruct = broken
    pixels = (torch.rand(28, 28, generator=gen) * 255).to(torch.uint8).numpy()
    img = _png(tmp_path / "imgs" / "a.png", pixels)
    res = robustvae.compress(
        [LoadedModel.in_memory(model, cfg)], [img], CompressConfig(layers="1,2"), tmp_path / "o", device="cpu"
    )
    recs = res.records.set_index("k")
    assert math.isfinite(recs.loc[1, "psnr"]) and recs.loc[1, "jpeg_quality"] is not None
    assert math.isnan(recs.loc[2, "psnr"]) and math.isnan(recs.loc[2, "msssim"])
    assert pd.isna(recs.loc[2, "jpeg_quality"])
    from robustvae.reporting.tables import display_compression, summary_table

    table = summary_table(res.records)
    assert table.set_index("k").loc[2, "nonfinite"] == 1 and table.set_index("k").loc[1, "nonfinite"] == 0
    assert "non-finite (not scored)" in display_compression(table)
    summary = robustvae.report([tmp_path / "o"], tmp_path / "r").summary  # the report draws and counts it too
    assert (tmp_path / "r" / "index.html").is_file() and summary["compression"]


def test_eval_out_that_is_a_folder_and_sample_without_an_image_suffix_are_one_line_errors(tmp_path, trained, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    _one_line_error(
        capsys, ["eval", str(trained), "-k", "2", "--limit", "4", "-q", "--out", str(folder)], "Is a directory"
    )
    assert list(folder.iterdir()) == []  # no temporary file left behind
    _one_line_error(capsys, ["sample", str(trained), "--n", "2", "-o", str(tmp_path / "x.xyz")], "image file extension")
    assert not (tmp_path / "x.xyz").exists()
