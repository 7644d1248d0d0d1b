"""Result records: append-only JSON lines, safe against crashes, readable by pandas.

Each work unit's rows are written with one ``write`` followed by ``fsync``; a crash can
at worst leave a truncated last line, which :func:`read_records` drops (and
``repair=True`` cuts from the file) so the unit is simply run again.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def append_records(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    text = "".join(json.dumps(r) + "\n" for r in rows)
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_records(path: str | os.PathLike, repair: bool = False) -> list[dict[str, Any]]:
    """All complete rows of a records file; a torn last line is ignored (and cut when ``repair``)."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    rows, good = [], 0
    pos = 0
    for line in raw.splitlines(keepends=True):
        pos += len(line)
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good = pos
    if repair and good != len(raw):
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


def write_records(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Replace a records file atomically (temporary file + fsync + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def safe_name(name: str) -> str:
    """A file-name-safe version of a label or unit id (anything but letters, digits, ``-_.`` becomes ``_``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def git_commit() -> str | None:
    """The commit of the robustvae checkout, when it is one (provenance for run.json)."""
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape results (provenance for run.json)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("robustvae", "torch", "torchattacks", "pytorch-msssim", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out
