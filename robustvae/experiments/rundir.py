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
  keeping complete units only;
* **one writer**: :meth:`RunDir.locked` holds an exclusive ``flock`` on ``.lock`` for
  the whole run (a second process gets a one-line error; the kernel releases the lock
  when the process ends, however it ends), removes temporary files that a killed
  writer left behind, and refuses a directory holding symbolic links, so nothing is
  ever written or deleted through one. Files get the user's normal permissions.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from robustvae.errors import RobustVAEError
from robustvae import io
from robustvae.io import LOCK, STAGING_PREFIX, TMP_SUFFIX, read_jsonl

PARTS = ".parts"
_HELD: dict[str, tuple[int, int]] = {}  # resolved directory -> (lock file descriptor, depth) held by this process


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

    def check_usable(self) -> None:
        """``--out`` can hold a run: a directory (or a new one) that this user may write; decided before any write."""
        if self.path.exists() and not self.path.is_dir():
            raise RobustVAEError(f"--out {self.path} is a file; pass a directory")
        existing = next(p for p in (self.path, *self.path.absolute().parents) if p.exists())
        if not existing.is_dir():
            raise RobustVAEError(f"--out {self.path}: {existing} is a file, not a folder; pass another --out")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise RobustVAEError(f"--out {self.path}: {existing} is not writable by this user; pass another --out")

    def entries(self) -> list[Path]:
        """What the directory holds, leaving out robustvae's lock file, temporary files and staging folders."""
        if not self.path.is_dir():
            return []
        return [
            p
            for p in self.path.iterdir()
            if p.name != LOCK and not _is_tmp(p) and not p.name.startswith(STAGING_PREFIX)
        ]

    def check_fresh(self, force: bool) -> None:
        """A fresh run: refuse a file, an unwritable place, or a non-empty directory without ``force``."""
        self.check_usable()
        if self.entries() and not force:
            raise RobustVAEError(
                f"{self.path} already exists and is not empty; pass --force to replace an earlier run there, "
                f"or use another --out"
            )

    @contextlib.contextmanager
    def locked(self, enabled: bool = True) -> Iterator[RunDir]:
        """Hold the directory's lock for a run (see the module docstring); re-entrant within one process.

        ``enabled=False`` (a process other than rank 0 under torchrun) holds nothing.
        """
        if not enabled:
            yield self
            return
        self.check_usable()
        io.make_dirs(self.path)
        key = str(self.path.resolve())
        if key in _HELD:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth + 1)
        else:
            fd = io.lock_file(self.path)
            _HELD[key] = (fd, 1)
        try:
            if _HELD[key][1] == 1:
                self.check_links()
                self.remove_orphans()
            yield self
        finally:
            fd, depth = _HELD[key]
            if depth > 1:
                _HELD[key] = (fd, depth - 1)
            else:
                del _HELD[key]
                os.close(fd)  # releases the flock

    def check_links(self) -> None:
        """Refuse a directory holding symbolic links (anything written or deleted through one could land outside)."""
        for dirpath, dirnames, filenames in os.walk(self.path):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if p.is_symlink():
                    raise io.link_error(p)

    def remove_orphans(self) -> list[Path]:
        """Delete what a killed writer left: temporary files (``.<name>.<random>.tmp``) and the staging folder of an
        unfinished ``--force`` replacement (:func:`robustvae.io.replace_outputs`); only with the lock held. An earlier
        run set aside (``.previous-*``) is kept: it may be the only copy."""
        found = [
            p
            for d in (self.path, self.path / "gallery", self.path / PARTS)
            if d.is_dir()
            for p in d.iterdir()
            if _is_tmp(p) and p.is_file()
        ]
        found += [
            p for p in self.path.iterdir() if p.name.startswith(STAGING_PREFIX) and p.is_dir() and not p.is_symlink()
        ]
        for p in found:
            io.remove(p, root=self.path)
        return found

    def clear(self, outputs: Sequence[str]) -> None:
        """Remove the named outputs of an earlier run (files or folders directly in the directory), nothing else."""
        for name in outputs:
            io.remove(self.path / name, root=self.path)

    def check_resumable(self, info_name: str, settings: dict[str, Any]) -> None:
        """A resumed run: refuse a directory whose ``info_name`` holds other settings, naming the first difference."""
        path = self.path / info_name
        if not path.exists():
            return
        old = self.read_json(info_name)["settings"]
        new = json.loads(json.dumps(settings))
        if old != new:
            raise RobustVAEError(
                f"{self.path} holds a run with other settings ({first_difference(old, new)}); "
                f"use another --out or the same settings"
            )

    # ------------------------------------------------------------------ files

    def read_json(self, name: str) -> dict[str, Any] | None:
        """The run file ``name`` (``run.json``: settings and progress), checked; None when it does not exist.

        Its ``settings`` must be a table and its progress fields well typed
        (:class:`robustvae.validation.RunProgress`); anything else is a one-line error.
        """
        from robustvae.validation import RunProgress, read_json

        path = self.path / name
        return read_json(path, RunProgress, "move it away or use another --out") if path.exists() else None

    def write_json(self, name: str, obj: Any) -> None:
        """Write a JSON file of the run atomically."""
        io.write_json(self.path / name, obj, root=self.path)

    # ------------------------------------------------------------------ records

    def part(self, records_name: str, rank: int) -> Path:
        """The part file that process ``rank`` appends to under torchrun."""
        return self.path / PARTS / f"{records_name[: -len('.jsonl')]}.rank-{rank}.jsonl"

    def append(self, path: Path, rows: list[dict[str, Any]]) -> None:
        """Append rows to a file of the run with one write + fsync (a unit's rows land together or not at all)."""
        io.append_jsonl(path, rows, root=self.path)

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
        _say_dropped(self.path / records_name, old, complete, expected)
        if parts or merged != old:
            io.write_jsonl(self.path / records_name, merged, root=self.path)
        for p in parts:
            io.remove(p, root=self.path)
        if parts and not any(parts_dir.iterdir()):
            io.remove(parts_dir, root=self.path)
        return merged


def _say_dropped(
    path: Path, old: list[dict[str, Any]], complete: dict[str, list[dict[str, Any]]], expected: dict[str, int]
) -> None:
    """A notice for rows of the records file that a merge leaves out (units cut short: they run again)."""
    kept = {id(r) for rows in complete.values() for r in rows}
    left: dict[str, int] = {}
    for r in old:
        if id(r) not in kept:
            left[r["unit"]] = left.get(r["unit"], 0) + 1
    if left:
        import warnings

        units = ", ".join(f"{u} ({n} of {expected.get(u, 0)} rows)" for u, n in list(left.items())[:3])
        more = f" and {len(left) - 3} more" if len(left) > 3 else ""
        warnings.warn(
            f"{path}: {sum(left.values())} row(s) of unit(s) cut short by a crash are left out and run again: "
            f"{units}{more}",
            stacklevel=3,
        )


def _is_tmp(p: Path) -> bool:
    return p.name.startswith(".") and (p.name.endswith(TMP_SUFFIX) or p.name.endswith(".tmp.npz"))
