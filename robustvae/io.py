"""The one door for every file robustvae writes (and its JSON-lines reader).

Every write in the package goes through this module (a test walks the source and
fails on any other ``write_text``, ``open(..., "w")``, ``torch.save`` to a path, ...).
The rule it enforces: **nothing is written, appended, copied or removed through a
symbolic link**. Each function takes the output ``root`` (the ``--out`` folder the
user named; by default the target's own folder): the target and every path
component between ``root`` and the target must not be a link, else a one-line
:class:`~robustvae.errors.RobustVAEError` names it. The folders are walked with
``O_NOFOLLOW`` directory descriptors, so a link planted while robustvae runs is
refused too, not followed. ``root`` itself may be a link: the user chose it.

API (paths are ``str`` or ``os.PathLike``; ``root`` is keyword-only everywhere):

* :func:`atomic_file` ``(path, *, root)``: a context manager yielding a binary file;
  on success it is fsynced and renamed over ``path`` (a crash never leaves half a
  file). Write anything into it: ``torch.save(obj, f)``, ``fig.savefig(f, format=...)``,
  ``np.savez_compressed(f, ...)``, ``image.save(f, format="PNG")``.
* :func:`write_bytes`, :func:`write_text`, :func:`write_json`, :func:`write_jsonl`:
  whole files, atomically.
* :func:`append_text`, :func:`append_jsonl`: one ``write`` + ``fsync`` each (a crash
  can at worst leave a torn last line, which :func:`read_jsonl` drops).
* :func:`copy_file` ``(src, dst, *, root)``: ``dst`` written atomically.
* :func:`remove` ``(path, *, root)``: a file or a folder tree; a missing one is fine.
* :func:`make_dirs` ``(path, *, root)``: ``mkdir -p`` that refuses links below root.
* :func:`replace_outputs` ``(root, names)``: a context manager for ``--force``; the new
  outputs are written into the staging folder it yields, beside the old ones, and
  swapped in only when the block succeeds. A failure leaves the old run as it was.
* :func:`set_aside` ``(root, names)``: for a run that must write in place (its files
  record their own paths): the old outputs are moved into a hidden folder first,
  deleted when the block succeeds and moved back when it fails.
* :func:`lock_file` ``(folder)``: an exclusive ``flock`` on ``folder/.lock``.
* :func:`temporary_dir`: a private temporary folder (downloads).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from robustvae.errors import RobustVAEError

PathLike = str | os.PathLike
TMP_SUFFIX = ".tmp"  # temporary files are ".<name>.<random>.tmp" beside their target (RunDir removes orphans)
STAGING_PREFIX = ".staging-"  # replace_outputs: the new outputs, until they are swapped in
ASIDE_PREFIX = ".previous-"  # set_aside / replace_outputs: the old outputs, until the new ones are in place
LOCK = ".lock"


def user_mode() -> int:
    """The permissions a new file gets from the user's umask (``0o666 & ~umask``), not mkstemp's private 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def link_error(path: PathLike) -> RobustVAEError:
    """The one-line refusal of a symbolic link in an output folder."""
    return RobustVAEError(
        f"{path} is a symbolic link; robustvae does not write or delete through links in its output "
        f"directories: remove it, or use another --out"
    )


# --------------------------------------------------------------------------- walking without following links


def _split(path: PathLike, root: PathLike | None) -> tuple[Path, list[str]]:
    """(root, components from root to the target) of ``path``; the target must lie under root."""
    path = Path(os.path.abspath(path))
    base = path.parent if root is None else Path(os.path.abspath(root))
    try:
        rel = path.relative_to(base)
    except ValueError:
        raise ValueError(f"{path} is not inside its output root {base}") from None
    parts = list(rel.parts)
    if not parts or ".." in parts:
        raise ValueError(f"{path} must name an entry inside its output root {base}")
    return base, parts


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _open_root(root: Path, create: bool) -> int:
    if create:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            pass  # a file where the folder should be: said below
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except NotADirectoryError:
        raise RobustVAEError(f"{root} is a file, not a folder; pass another --out") from None


def _descend(fd: int, name: str, shown: Path, create: bool) -> int:
    """The folder ``name`` inside the folder ``fd`` (created when missing and ``create``); never through a link."""
    for _ in range(2):
        try:
            return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=fd)
        except OSError as e:
            if _is_link(name, fd):
                raise link_error(shown) from None
            if e.errno == errno.ENOTDIR:
                raise RobustVAEError(f"{shown} is a file, not a folder; move it away or use another --out") from None
            raise
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)


@contextlib.contextmanager
def _parent(path: PathLike, root: PathLike | None, create: bool = True) -> Iterator[tuple[int, str, Path]]:
    """(descriptor of the target's folder, the target's name, the target) with every folder below root checked."""
    base, parts = _split(path, root)
    fd = _open_root(base, create)
    shown = base
    try:
        for name in parts[:-1]:
            shown = shown / name
            nfd = _descend(fd, name, shown, create)
            os.close(fd)
            fd = nfd
        target = shown / parts[-1]
        if _is_link(parts[-1], fd):
            raise link_error(target)
        yield fd, parts[-1], target
    finally:
        os.close(fd)


def _fsync_dir(fd: int) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot sync a folder; the rename itself stands
        os.fsync(fd)


# --------------------------------------------------------------------------- whole files


@contextlib.contextmanager
def atomic_file(path: PathLike, *, root: PathLike | None = None) -> Iterator[BinaryIO]:
    """Write ``path`` atomically: a fresh temporary file beside it, fsync, rename (see the module docstring).

    The file gets the user's normal permissions (:func:`user_mode`). On any error the
    temporary file is removed and ``path`` is left as it was.
    """
    with _parent(path, root) as (dfd, name, target):
        if stat.S_ISDIR(_lstat_mode(name, dfd)):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(target))
        tmp = f".{name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # replaces a link planted meanwhile, never follows it
            _fsync_dir(dfd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def _lstat_mode(name: str, dir_fd: int) -> int:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return 0


def write_bytes(path: PathLike, data: bytes, *, root: PathLike | None = None) -> None:
    """Replace a file atomically with ``data`` (:func:`atomic_file`)."""
    with atomic_file(path, root=root) as f:
        f.write(data)


def write_text(path: PathLike, text: str, *, root: PathLike | None = None) -> None:
    """Replace a text file (UTF-8) atomically (:func:`atomic_file`)."""
    write_bytes(path, text.encode(), root=root)


def write_json(path: PathLike, obj: Any, *, root: PathLike | None = None) -> None:
    """Write JSON atomically (:func:`atomic_file`)."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n", root=root)


def write_jsonl(path: PathLike, rows: list[dict[str, Any]], *, root: PathLike | None = None) -> None:
    """Replace a JSON-lines file atomically (:func:`atomic_file`)."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows), root=root)


def copy_file(src: PathLike, dst: PathLike, *, root: PathLike | None = None) -> None:
    """Copy the file ``src`` to ``dst`` (written atomically; ``src`` is only read)."""
    with open(src, "rb") as s, atomic_file(dst, root=root) as d:
        shutil.copyfileobj(s, d)


# --------------------------------------------------------------------------- appends


def append_text(path: PathLike, text: str, *, root: PathLike | None = None) -> None:
    """Append ``text`` with one write + fsync (the file is created with the user's permissions when missing)."""
    if not text:
        return
    with _parent(path, root) as (dfd, name, target):
        try:
            fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666, dir_fd=dfd)
        except OSError:
            if _is_link(name, dfd):
                raise link_error(target) from None
            raise
        with os.fdopen(fd, "ab") as f:
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())


def append_jsonl(path: PathLike, rows: list[dict[str, Any]], *, root: PathLike | None = None) -> None:
    """Append ``rows`` as JSON lines with one write + fsync (a unit's rows land together or not at all)."""
    append_text(path, "".join(json.dumps(r) + "\n" for r in rows), root=root)


def _truncate(path: PathLike, size: int, *, root: PathLike | None = None) -> None:
    """Cut a file to ``size`` bytes (a torn tail), never through a link."""
    with _parent(path, root, create=False) as (dfd, name, _):
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=dfd)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- folders and removal


def make_dirs(path: PathLike, *, root: PathLike | None = None) -> Path:
    """Create the folder ``path`` and its parents (``mkdir -p``), refusing a link anywhere below ``root``."""
    base, parts = _split(path, root) if root is not None else (Path(os.path.abspath(path)), [])
    fd = _open_root(base, True)
    shown = base
    try:
        for name in parts:
            shown = shown / name
            nfd = _descend(fd, name, shown, True)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    return Path(path)


def remove(path: PathLike, *, root: PathLike | None = None) -> bool:
    """Remove a file or a folder tree (never through a link); True when something was removed."""
    try:
        with _parent(path, root, create=False) as (dfd, name, target):
            mode = _lstat_mode(name, dfd)
            if not mode:
                return False
            if stat.S_ISDIR(mode):  # the descriptor-based rmtree: never follows a link inside
                if sys.version_info >= (3, 11):
                    shutil.rmtree(name, dir_fd=dfd)
                else:
                    shutil.rmtree(target)
            else:
                os.unlink(name, dir_fd=dfd)
            return True
    except FileNotFoundError:
        return False


def _move(src: Path, dst: Path, root: Path) -> None:
    """Rename ``src`` to ``dst`` (both below ``root``; no link on either way, the destination's folder created)."""
    with _parent(src, root, create=False) as (sfd, sname, _), _parent(dst, root) as (dfd, dname, _):
        os.replace(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)


def _check_below(root: Path, name: str) -> bool:
    """Whether ``root/name`` exists; refuses a link there or on the way (``name`` may hold subfolders)."""
    with _parent(root / name, root, create=False) as (dfd, last, _):
        return bool(_lstat_mode(last, dfd))


def _exists_below(root: Path, name: str) -> bool:
    try:
        return _check_below(root, name)
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def set_aside(root: PathLike, names: Sequence[str]) -> Iterator[Path]:
    """Move the outputs ``names`` (files or folders, relative to ``root``) into a hidden folder for the block.

    Yields that folder. When the block succeeds the old outputs are deleted; when it
    fails (an exception, Ctrl-C) after setting something aside, whatever the block wrote
    under those names is removed and the old outputs are moved back, so the earlier run
    is left as it was. With nothing set aside (a first run), a failed block's outputs
    stay (a run that can resume keeps its progress). Killed outright, the old outputs
    stay in ``root/.previous-<random>``.
    """
    root = Path(root)
    make_dirs(root)
    present = [n for n in dict.fromkeys(names) if _exists_below(root, n)]
    aside = root / f"{ASIDE_PREFIX}{secrets.token_hex(4)}"
    moved: list[str] = []
    try:
        for n in present:
            _move(root / n, aside / n, root)
            moved.append(n)
        yield aside
    except BaseException:
        for n in dict.fromkeys(names) if moved else ():  # what the block wrote under these names
            remove(root / n, root=root)
        for n in moved:
            _move(aside / n, root / n, root)
        remove(aside, root=root)
        raise
    remove(aside, root=root)


@contextlib.contextmanager
def replace_outputs(root: PathLike, names: Sequence[str]) -> Iterator[Path]:
    """Write a new run beside the old one and swap it in at the end (``--force``).

    Yields a fresh staging folder inside ``root``: write the new outputs there under
    their final names (relative paths among ``names``). When the block succeeds, the old
    outputs ``names`` are set aside, the staged ones moved into place and the old ones
    deleted; a failure anywhere (also during the swap) leaves the old outputs as they
    were and removes the staging folder.
    """
    root = Path(root)
    make_dirs(root)
    stage = root / f"{STAGING_PREFIX}{secrets.token_hex(4)}"
    make_dirs(stage, root=root)
    try:
        yield stage
        staged = [n for n in dict.fromkeys(names) if _exists_below(stage, n)]
        with set_aside(root, names):
            for n in staged:
                _move(stage / n, root / n, root)
    finally:
        remove(stage, root=root)


# --------------------------------------------------------------------------- lock, temporary folders


def lock_file(folder: PathLike) -> int:
    """An exclusive, non-blocking flock on ``folder/.lock`` (created when missing, never through a link).

    Returns the descriptor (closing it releases the lock); a one-line error when another process holds it.
    """
    folder = Path(folder)
    with _parent(folder / LOCK, folder) as (dfd, name, target):
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666, dir_fd=dfd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RobustVAEError(
            f"another robustvae process is writing to {folder} (it holds {target}); wait for it to finish, "
            f"or use another --out"
        ) from None
    return fd


@contextlib.contextmanager
def temporary_dir() -> Iterator[Path]:
    """A private temporary folder (mode 0700), removed with everything in it at the end of the block."""
    with tempfile.TemporaryDirectory(prefix="robustvae-") as d:
        yield Path(d)


def download(url: str, path: PathLike) -> None:
    """Download ``url`` into ``path``, a new file in a folder of :func:`temporary_dir` (torch.hub's progress bar);
    callers check it (sha256, contents) before importing it anywhere."""
    import torch

    torch.hub.download_url_to_file(url, str(path), hash_prefix=None, progress=True)


# --------------------------------------------------------------------------- reading JSON lines


def read_jsonl(
    path: PathLike, repair: bool = False, check: Callable[[dict[str, Any]], str | None] | None = None
) -> list[dict[str, Any]]:
    """All rows of a JSON-lines file of objects; a torn (unterminated) last line is left out (cut when ``repair``).

    Rows are appended with one write each, newline included, so only an unterminated
    last line can come from a crash. Every newline-terminated line must read: one that
    does not parse, is not a JSON object, or that ``check`` faults (it returns what is
    wrong, naming the field) is an error naming the file and line, and nothing is cut
    or dropped. A torn tail is said once per file (a warning).
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.splitlines(keepends=True)
    rows, good = [], 0
    for i, line in enumerate(lines, 1):
        if not line.endswith(b"\n"):  # only ever the last line: a torn write, the crash lost that write only
            _say_torn(path, i, repair)
            break
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RobustVAEError(
                f"{path} line {i} is not valid JSON (and is not a torn last line); fix or remove that line"
            ) from None
        if not isinstance(row, dict):
            raise RobustVAEError(f"{path} line {i} is not a JSON object; fix or remove that line")
        problem = check(row) if check is not None else None
        if problem:
            raise RobustVAEError(f"{path} line {i}: {problem}; fix or remove that line")
        rows.append(row)
        good += len(line)
    if repair and good != len(raw):
        _truncate(path, good)
    return rows


_TORN_SAID: set[str] = set()


def _say_torn(path: Path, line: int, repair: bool) -> None:
    """Warn once per file that its torn last line (a crash mid-write) is left out (and cut when repairing)."""
    import warnings

    key = str(path.resolve())
    if key not in _TORN_SAID:
        _TORN_SAID.add(key)
        what = "cut from the file" if repair else "left out (the next run there cuts it)"
        warnings.warn(
            f"{path} line {line} is torn (a crash mid-write, no newline at its end); it is {what}", stacklevel=3
        )


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
