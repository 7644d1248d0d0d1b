"""Crash-safe file writing: append-only JSON lines and atomic replacement.

Appends go out with one ``write`` followed by ``fsync``, so a crash can at worst leave
a torn last line, which :func:`read_jsonl` drops (and ``repair=True`` cuts from the
file). Whole files are replaced atomically: a temporary file beside the target, then
a rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from robustvae.errors import RobustVAEError


TMP_SUFFIX = ".tmp"  # temporary files are ".<name>.<random>.tmp" beside their target (RunDir removes orphans)


def user_mode() -> int:
    """The permissions a new file gets from the user's umask (``0o666 & ~umask``), not mkstemp's private 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write ``path`` atomically: a fresh temporary file beside it (never an existing file or link), fsync, rename.

    The rename replaces ``path`` itself, so a symbolic link at ``path`` is replaced, not
    followed. The file gets the user's normal permissions (:func:`user_mode`). On any
    error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, user_mode())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` as JSON lines with one write + fsync (never through a symbolic link)."""
    if not rows:
        return
    text = "".join(json.dumps(r) + "\n" for r in rows)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, user_mode())
    except OSError as e:
        if Path(path).is_symlink():
            raise RobustVAEError(f"{path} is a symbolic link; robustvae does not write through links in its output "
                                 f"directories: remove it or use another --out") from None
        raise e
    with os.fdopen(fd, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, repair: bool = False,
               check: Callable[[dict[str, Any]], str | None] | None = None) -> list[dict[str, Any]]:
    """All rows of a JSON-lines file of objects; a torn **last** line is ignored (and cut when ``repair``).

    Only the last line can be torn by a crash (rows are appended with one write each).
    Anything else that does not read, a line in the middle or a line that is not a JSON
    object, or a row that ``check`` faults (it returns what is wrong, naming the field),
    is an error naming the file and line: nothing after it is silently dropped, and
    nothing but a torn tail is ever cut. A torn tail is said once per file (a warning).
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
            _say_torn(path, i, repair)
            break  # a torn last line: the crash it comes from lost that write only
        if not isinstance(row, dict):
            raise RobustVAEError(f"{path} line {i} is not a JSON object; fix or remove that line")
        problem = check(row) if check is not None else None
        if problem:
            raise RobustVAEError(f"{path} line {i}: {problem}; fix or remove that line")
        rows.append(row)
        good += len(line)
    if repair and good != len(raw):
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


_TORN_SAID: set[str] = set()


def _say_torn(path: Path, line: int, repair: bool) -> None:
    """Warn once per file that its torn last line (a crash mid-write) is left out (and cut when repairing)."""
    import warnings

    key = str(path.resolve())
    if key not in _TORN_SAID:
        _TORN_SAID.add(key)
        what = "cut from the file" if repair else "left out (the next run there cuts it)"
        warnings.warn(f"{path} line {line} is torn (a crash mid-write); it is {what}", stacklevel=3)


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file atomically (:func:`atomic_file`)."""
    write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (:func:`atomic_file`)."""
    write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace a file atomically with ``data`` (:func:`atomic_file`: a link at ``path`` is replaced, not followed)."""
    with atomic_file(path) as f:
        f.write(data)


def safe_name(name: str) -> str:
    """A file-name-safe version of a label or unit id (anything but letters, digits, ``-_.`` becomes ``_``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return "_" + safe if not safe or safe.startswith(".") else safe  # never "", ".", ".." or a hidden file


def unique_names(names: Sequence[str]) -> list[str]:
    """:func:`safe_name` of each name, made distinct by ``-2``, ``-3``, ... in the order given (deterministic).

    Names differ after :func:`safe_name` (``c d`` and ``c_d`` both become ``c_d``) and on
    case-insensitive file systems (macOS, Windows) ``A`` and ``a`` are one file, so names
    are compared case-folded: ``["c d", "c_d", "C_D"]`` -> ``["c_d", "c_d-2", "C_D-3"]``.
    """
    taken: set[str] = set()
    out = []
    for name in names:
        base = safe_name(name)
        candidate, i = base, 1
        while candidate.casefold() in taken:
            i += 1
            candidate = f"{base}-{i}"
        taken.add(candidate.casefold())
        out.append(candidate)
    return out
