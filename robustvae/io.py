"""Crash-safe file writing: append-only JSON lines and atomic replacement.

Appends go out with one ``write`` followed by ``fsync``, so a crash can at worst leave
a torn last line, which :func:`read_jsonl` drops (and ``repair=True`` cuts from the
file). Whole files are replaced atomically: a temporary file beside the target, then
a rename.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from robustvae.errors import RobustVAEError


def append_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` as JSON lines with one write + fsync."""
    if not rows:
        return
    text = "".join(json.dumps(r) + "\n" for r in rows)
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, repair: bool = False) -> list[dict[str, Any]]:
    """All rows of a JSON-lines file of objects; a torn **last** line is ignored (and cut when ``repair``).

    Only the last line can be torn by a crash (rows are appended with one write each).
    Anything else that does not read, a line in the middle or a line that is not a JSON
    object, is an error naming the file and line: nothing after it is silently dropped,
    and nothing but a torn tail is ever cut.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.splitlines(keepends=True)
    rows, good = [], 0
    for i, line in enumerate(lines, 1):
        last = i == len(lines)
        try:
            row = json.loads(line) if line.endswith(b"\n") or not last else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
            if not last:
                raise RobustVAEError(f"{path} line {i} is not valid JSON (and is not a torn last line); "
                                     f"fix or remove that line") from None
        if row is None:
            break  # a torn last line: the crash it comes from lost that write only
        if not isinstance(row, dict):
            raise RobustVAEError(f"{path} line {i} is not a JSON object; fix or remove that line")
        rows.append(row)
        good += len(line)
    if repair and good != len(raw):
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file atomically (temporary file + fsync + rename)."""
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
