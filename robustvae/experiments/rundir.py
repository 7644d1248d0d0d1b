"""The run directory of an experiment: output policy, provenance, atomic writes, append-only records, shard merge.

Every experiment writes through a :class:`RunDir`:

* **policy**, decided before anything is written: ``--out`` must be a directory; an
  experiment that starts afresh (compression) refuses a non-empty one unless
  ``force``, and then removes only the outputs it names; an experiment that resumes
  (the attack sweep) refuses a directory holding a run with other settings, naming
  the first difference;
* **provenance**: :func:`provenance` (versions of the packages that shape results,
  git commit) for ``run.json``;
* **atomic writes** of JSON (temporary file + rename) and **append-only records**
  (one write + fsync per unit; a torn last line is cut before appending);
* **parts and merge**: under torchrun each process appends to its own part file,
  and :meth:`RunDir.merge` folds the parts into the records file in unit order,
  keeping complete units only.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustvae.errors import RobustVAEError
from robustvae.io import append_jsonl, read_jsonl, write_json, write_jsonl

PARTS = ".parts"


def git_commit() -> str | None:
    """The commit of the robustvae checkout, when it is one."""
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Versions of Python and of the packages that shape results (plus ``extra`` packages)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("robustvae", "torch", "torchattacks", "pytorch-msssim", "numpy", *extra):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def provenance(extra_packages: Sequence[str] = ()) -> dict[str, Any]:
    """What ``run.json`` records about the software: ``versions`` and ``git_commit``."""
    return {"versions": versions(extra_packages), "git_commit": git_commit()}


def first_difference(a: Any, b: Any, path: str = "") -> str:
    """Where two JSON-like settings first differ, as ``key.sub: old there, new now``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
    return f"{path}: {a!r} there, {b!r} now"


class RunDir:
    """An experiment's output directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ policy

    def check_fresh(self, force: bool) -> None:
        """A fresh run: refuse a file, or a non-empty directory without ``force``."""
        if self.path.exists() and not self.path.is_dir():
            raise RobustVAEError(f"--out {self.path} is a file; pass a directory")
        if self.path.is_dir() and any(self.path.iterdir()) and not force:
            raise RobustVAEError(
                f"{self.path} already exists and is not empty; pass --force to replace an earlier run there, "
                f"or use another --out"
            )

    def clear(self, outputs: Sequence[str]) -> None:
        """Remove the named outputs of an earlier run (files or folders directly in the directory), nothing else."""
        for name in outputs:
            p = self.path / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()

    def check_resumable(self, info_name: str, settings: dict[str, Any]) -> None:
        """A resumed run: refuse a directory whose ``info_name`` holds other settings, naming the first difference."""
        path = self.path / info_name
        if not path.exists():
            return
        try:
            old = json.loads(path.read_text())["settings"]
        except (ValueError, KeyError, TypeError):
            raise RobustVAEError(f"{path} is unreadable; move it away or use another --out") from None
        new = json.loads(json.dumps(settings))
        if old != new:
            raise RobustVAEError(
                f"{self.path} holds a run with other settings ({first_difference(old, new)}); "
                f"use another --out or the same settings"
            )

    # ------------------------------------------------------------------ files

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON file of the run, or None when it does not exist."""
        path = self.path / name
        return json.loads(path.read_text()) if path.exists() else None

    def write_json(self, name: str, obj: Any) -> None:
        """Write a JSON file of the run atomically."""
        write_json(self.path / name, obj)

    # ------------------------------------------------------------------ records

    def part(self, records_name: str, rank: int) -> Path:
        """The part file that process ``rank`` appends to under torchrun."""
        return self.path / PARTS / f"{records_name[: -len('.jsonl')]}.rank-{rank}.jsonl"

    @staticmethod
    def append(path: Path, rows: list[dict[str, Any]]) -> None:
        """Append rows with one write + fsync (a unit's rows land together or not at all)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(path, rows)

    def merge(self, records_name: str, expected: dict[str, int], read=read_jsonl) -> list[dict[str, Any]]:
        """Fold the part files of ``records_name`` into it: complete units only, in ``expected``'s order.

        ``expected`` maps unit id -> rows a complete unit has. A unit cut short by a
        crash is dropped (it runs again); a unit complete in several files is kept
        once. The records file is replaced atomically before the parts are deleted, so
        a crash in between loses nothing. ``read(path, repair=...)`` reads a records file.
        """
        parts_dir = self.path / PARTS
        parts = sorted(parts_dir.glob(f"{records_name[: -len('.jsonl')]}.rank-*.jsonl"))
        old = read(self.path / records_name, repair=True)  # a torn last line is cut before anything is appended
        complete: dict[str, list[dict[str, Any]]] = {}
        for rows in [old] + [read(p) for p in parts]:
            grouped: dict[str, list[dict[str, Any]]] = {}
            for r in rows:
                grouped.setdefault(r["unit"], []).append(r)
            for uid, rs in grouped.items():
                if uid not in complete and len(rs) == expected.get(uid):
                    complete[uid] = rs
        merged = [r for uid in expected if uid in complete for r in complete[uid]]
        if parts or merged != old:
            write_jsonl(self.path / records_name, merged)
        for p in parts:
            p.unlink()
        if parts and not any(parts_dir.iterdir()):
            parts_dir.rmdir()
        return merged
