"""The link sweep (tests/link_sweep.py): a symbolic link planted at each file and folder every command writes changes
nothing outside the output root, and every command ends cleanly (one error line, or a success that did not follow it).

The default suite plants links at a representative path of each kind of writer (an appended log, an atomically
replaced JSON, a checkpoint, a folder of a run, a staged --force replacement, a lock file); the whole sweep, every path
of every command variant (the demo included), is marked slow.
"""

from __future__ import annotations

import pytest

import link_sweep as sweep

REPRESENTATIVE = {  # an appended log, a folder of a run, a staged --force replacement
    ("eval", "e.log"),
    ("attack", "gallery"),
    ("zoo import --force", "imported.json"),
}


def _assert_clean(results):
    bad = [r for r in results if r.kind not in ("refused", "ok")]
    assert not bad, "\n".join(f"{r.kind}: {r.variant}: {r.path}: {r.detail}" for r in bad[:20])


def test_links_at_representative_written_paths_change_nothing_outside(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTVAE_DATA", str(tmp_path / "data"))
    variants = {v for v, _ in REPRESENTATIVE}
    results = sweep.sweep(tmp_path / "root", variants, with_slow=False, paths=lambda v, p: (v, p) in REPRESENTATIVE)
    assert {(r.variant, r.path) for r in results} == REPRESENTATIVE  # each was written, hence planted
    _assert_clean(results)
    assert all(r.kind == "refused" for r in results)  # links are refused, not replaced


@pytest.mark.slow
def test_links_at_every_written_path_of_every_command_change_nothing_outside(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTVAE_DATA", str(tmp_path / "data"))
    results = sweep.sweep(tmp_path / "root")
    assert sweep.totals(results)["links_planted"] > 100
    _assert_clean(results)
