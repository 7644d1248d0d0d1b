"""Every file robustvae writes goes through robustvae.io (the one door that refuses symbolic links).

The source walk parses every module of the package (ast) and fails on any direct write
outside robustvae/io.py: ``write_text``/``write_bytes``, ``open`` (builtin, ``Path.open``,
``os.fdopen``, ``io.open``, ...) with a writing mode, ``os.open`` with writing flags, ``shutil``
copies/moves/removals, ``os`` removals/renames/folder creation, ``Path.unlink/rmdir/mkdir/touch/
rename/replace/symlink_to``, ``torch.save``/``np.save*``/``savefig``/PIL ``.save``/pandas ``to_*`` to
anything but an in-memory buffer or a file object from ``robustvae.io.atomic_file``, and downloads
to a path. The walker is itself tested on snippets that do each of these.
"""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

import robustvae
from robustvae import io
from robustvae.errors import RobustVAEError

PACKAGE = Path(robustvae.__file__).parent
WRITER = PACKAGE / "io.py"

WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}
OS_WRITES = {
    "remove",
    "unlink",
    "rmdir",
    "removedirs",
    "rename",
    "renames",
    "replace",
    "mkdir",
    "makedirs",
    "truncate",
    "symlink",
    "link",
    "mkfifo",
    "mknod",
    "chmod",
    "chown",
    "utime",
}
SHUTIL_WRITES = {"copy", "copy2", "copyfile", "copytree", "copyfileobj", "move", "rmtree", "copymode", "copystat"}
PATH_WRITES = {
    "write_text",
    "write_bytes",
    "unlink",
    "rmdir",
    "mkdir",
    "touch",
    "symlink_to",
    "hardlink_to",
    "link_to",
    "chmod",
    "lchmod",
}
SAVERS = {"save", "savez", "savez_compressed", "savefig", "imsave", "imwrite", "dump"}
PANDAS_WRITERS = {
    "to_csv",
    "to_json",
    "to_parquet",
    "to_pickle",
    "to_feather",
    "to_excel",
    "to_latex",
    "to_html",
    "to_markdown",
    "to_hdf",
    "to_stata",
    "to_xml",
    "to_string",
}
DOWNLOADS = {"download_url_to_file", "urlretrieve"}
OPENERS = {"open", "fdopen"}


def _mode_writes(node: ast.AST | None) -> bool:
    """Whether an ``open`` mode argument may write (anything not a literal counts as writing)."""
    if node is None:
        return False
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return any(c in node.value for c in "wax+")
    return True


def _flag_names(node: ast.AST) -> set[str]:
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)} | {
        n.id for n in ast.walk(node) if isinstance(n, ast.Name)
    }


class _Finder(ast.NodeVisitor):
    """Direct writes in one module; in-memory buffers and atomic_file handles are fine targets for savers."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self.safe_targets: set[str] = set()  # names bound to BytesIO() / StringIO() / io.atomic_file(...)
        self.io_names: set[str] = set()  # names bound to the robustvae.io module
        self.modules: set[str] = set()  # names bound by imports (a call on one is a module function, not a method)
        self.temp_dirs: set[str] = set()  # names bound to io.temporary_dir(): private folders of downloads

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module == "robustvae":
            self.io_names |= {a.asname or a.name for a in node.names if a.name == "io"}
        self.modules |= {a.asname or a.name for a in node.names}
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.io_names |= {a.asname for a in node.names if a.name == "robustvae.io" and a.asname}
        self.modules |= {a.asname or a.name.split(".")[0] for a in node.names}
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        if _is_buffer(node.value):
            self.safe_targets |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        self.generic_visit(node)

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            call = item.context_expr
            if (
                isinstance(call, ast.Call)
                and _callee(call) == "atomic_file"
                and isinstance(item.optional_vars, ast.Name)
            ):
                self.safe_targets.add(item.optional_vars.id)
            if _is_buffer(call) and isinstance(item.optional_vars, ast.Name):
                self.safe_targets.add(item.optional_vars.id)
            if (
                isinstance(call, ast.Call)
                and _callee(call) == "temporary_dir"
                and isinstance(item.optional_vars, ast.Name)
            ):
                self.temp_dirs.add(item.optional_vars.id)
        self.generic_visit(node)

    def _safe(self, node: ast.AST | None) -> bool:
        return isinstance(node, ast.Name) and node.id in self.safe_targets

    def _in_temp_dir(self, node: ast.AST | None) -> bool:
        return node is not None and bool(_flag_names(node) & self.temp_dirs)

    def visit_Call(self, node: ast.Call) -> None:
        name = _callee(node)
        owner = _owner(node)
        kw = {k.arg: k.value for k in node.keywords}
        args = node.args
        problem = None
        if name == "open" and owner == "os":
            flags = args[1] if len(args) > 1 else kw.get("flags")
            named = _flag_names(flags) if flags is not None else set()
            if not any(n.startswith("O_") for n in named) or named & WRITE_FLAGS:
                problem = "os.open with writing flags"
        elif name in OPENERS:
            mode = args[1] if len(args) > 1 else kw.get("mode")
            if owner not in (None, "os", "io", "builtins", "gzip", "bz2", "lzma", "codecs", "Image") and name == "open":
                mode = args[0] if args else kw.get("mode")  # Path.open(mode)
            if _mode_writes(mode):
                problem = f"{name}(..., mode) that writes"
        elif owner == "os" and name in OS_WRITES:
            problem = f"os.{name}"
        elif owner == "shutil" and name in SHUTIL_WRITES:
            problem = f"shutil.{name}"
        elif name in PATH_WRITES and owner is not None and owner not in self.io_names:
            problem = f".{name}()"
        elif (
            name in ("rename", "replace")
            and owner not in ("os", "str", None)
            and len(args) == 1
            and not node.keywords
            and not (isinstance(args[0], ast.Constant) and isinstance(args[0].value, str))
        ):
            problem = f"Path.{name}()"  # pandas .rename('x') and str.replace(a, b) look different
        elif name in SAVERS and owner not in self.io_names:
            target = kw.get("fname", kw.get("file", kw.get("f", kw.get("fp"))))
            if name == "save" and owner == "torch" or name == "dump":
                target = args[1] if len(args) > 1 else kw.get("f", target)
            elif args:
                target = args[0]
            if not self._safe(target):
                problem = f"{name}() to a path"
        elif name in PANDAS_WRITERS and (owner not in self.modules or owner == "pd"):
            target = args[0] if args else kw.get("path_or_buf", kw.get("buf", kw.get("path")))
            if target is not None and not self._safe(target):
                problem = f".{name}() to a path"
        elif name in DOWNLOADS and not self._in_temp_dir(args[1] if len(args) > 1 else kw.get("dst")):
            problem = f"{name}() to a path outside a private temporary folder"
        if problem:
            self.found.append((node.lineno, problem))
        self.generic_visit(node)


def _callee(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def _owner(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Attribute):
        v = f.value
        return v.id if isinstance(v, ast.Name) else v.attr if isinstance(v, ast.Attribute) else "<expr>"
    return None


def _is_buffer(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and _callee(node) in ("BytesIO", "StringIO")


def direct_writes(source: str) -> list[tuple[int, str]]:
    finder = _Finder()
    finder.visit(ast.parse(source))
    return finder.found


@pytest.mark.parametrize(
    "snippet",
    [
        "p.write_text('x')",
        "Path('a').write_bytes(b'')",
        "open(p, 'w')",
        "open(p, 'ab')",
        "open(p, mode='x')",
        "open(p, m)",
        "p.open('w')",
        "os.fdopen(fd, 'wb')",
        "os.open(p, os.O_WRONLY | os.O_CREAT)",
        "os.open(p, flags)",
        "shutil.copy(a, b)",
        "shutil.copyfile(a, b)",
        "shutil.move(a, b)",
        "shutil.rmtree(p)",
        "p.unlink()",
        "p.rmdir()",
        "p.mkdir(parents=True)",
        "os.remove(p)",
        "os.replace(a, b)",
        "os.makedirs(p)",
        "p.rename(q)",
        "p.touch()",
        "p.symlink_to(q)",
        "torch.save(obj, path)",
        "torch.save(obj, f)",
        "np.save(path, a)",
        "np.savez_compressed(p, a=a)",
        "fig.savefig(path, dpi=90)",
        "image.save(path)",
        "df.to_csv(path, index=False)",
        "torch.hub.download_url_to_file(url, dst)",
    ],
)
def test_the_walker_finds_each_kind_of_direct_write(snippet):
    assert direct_writes(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "open(p)",
        "open(p, 'rb')",
        "p.read_text()",
        "os.open(p, os.O_RDONLY)",
        "df.rename('x')",
        "s.replace('a', 'b')",
        "dataclasses.replace(c, k=1)",
        "df.to_csv(index=False)",
        "buf = io.BytesIO()\nfig.savefig(buf, format='png')",
        "with atomic_file(path) as f:\n    torch.save(obj, f)\n    np.savez_compressed(f, a=a)\n    img.save(f, format='PNG')",
        "from robustvae import io\nio.write_text(p, 'x')\nio.write_bytes(p, b'')",
        "from robustvae.io import write_bytes\nwrite_bytes(p, b'')",
        "Image.open(path)",
        "from x import tables\ntables.to_latex(df)",
        "with io.temporary_dir() as tmp:\n    torch.hub.download_url_to_file(url, str(tmp / 'f'))",
    ],
)
def test_the_walker_leaves_reads_buffers_and_the_writer_alone(snippet):
    assert direct_writes(snippet) == [], snippet


def test_every_write_in_the_package_goes_through_the_writer_module():
    modules = sorted(p for p in PACKAGE.rglob("*.py") if p != WRITER)
    assert len(modules) > 60
    found = [
        f"{p.relative_to(PACKAGE.parent)}:{line}: {what}"
        for p in modules
        for line, what in direct_writes(p.read_text())
    ]
    assert not found, "write through robustvae.io instead:\n" + "\n".join(found)


# --------------------------------------------------------------------------- the writer itself


@pytest.fixture
def outside(tmp_path):
    d = tmp_path / "outside"
    d.mkdir()
    (d / "precious").write_text("keep")
    return d


def _writes(path, root):
    """Every kind of write the module offers, aimed at ``path``."""

    def atomic():
        with io.atomic_file(path, root=root) as f:
            f.write(b"x")

    return {
        "write_bytes": lambda: io.write_bytes(path, b"x", root=root),
        "write_text": lambda: io.write_text(path, "x", root=root),
        "write_json": lambda: io.write_json(path, {"a": 1}, root=root),
        "write_jsonl": lambda: io.write_jsonl(path, [{"a": 1}], root=root),
        "append_text": lambda: io.append_text(path, "x\n", root=root),
        "append_jsonl": lambda: io.append_jsonl(path, [{"a": 1}], root=root),
        "atomic_file": atomic,
        "copy_file": lambda: io.copy_file(__file__, path, root=root),
        "remove": lambda: io.remove(path, root=root),
    }


@pytest.mark.parametrize("kind", list(_writes("x", None)))
def test_a_link_at_the_target_is_refused_and_its_target_kept(tmp_path, outside, kind):
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").symlink_to(outside / "precious")
    with pytest.raises(RobustVAEError, match=r"out/f is a symbolic link"):
        _writes(out / "f", out)[kind]()
    assert (outside / "precious").read_text() == "keep" and (out / "f").is_symlink()


@pytest.mark.parametrize("kind", list(_writes("x", None)))
def test_a_linked_folder_below_the_root_is_refused(tmp_path, outside, kind):
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "b").symlink_to(outside)
    with pytest.raises(RobustVAEError, match=r"out/a/b is a symbolic link"):
        _writes(out / "a" / "b" / "precious", out)[kind]()
    assert sorted(p.name for p in outside.iterdir()) == ["precious"] and (outside / "precious").read_text() == "keep"
    with pytest.raises(RobustVAEError, match="symbolic link"):
        io.make_dirs(out / "a" / "b" / "new", root=out)
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]


def test_the_root_itself_may_be_a_link_the_user_chose(tmp_path, outside):
    link = tmp_path / "chosen"
    link.symlink_to(outside)
    io.write_text(link / "new.txt", "hello", root=link)
    assert (outside / "new.txt").read_text() == "hello"


def test_writes_create_folders_give_the_users_permissions_and_leave_no_temporary_files(tmp_path):
    old = os.umask(0o027)
    try:
        io.write_json(tmp_path / "o" / "a" / "b.json", {"x": 1}, root=tmp_path / "o")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o" / "a" / "b.json").stat().st_mode) == 0o640
    assert [p.name for p in (tmp_path / "o" / "a").iterdir()] == ["b.json"]
    with pytest.raises(ValueError, match="not inside its output root"):
        io.write_text(tmp_path / "elsewhere.txt", "x", root=tmp_path / "o")


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path):
    p = tmp_path / "f"
    p.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with io.atomic_file(p) as f:
            f.write(b"new")
            raise ZeroDivisionError("a crash mid-write")
    assert p.read_text() == "old" and [q.name for q in tmp_path.iterdir()] == ["f"]


def _tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): p.read_text() if p.is_file() else "/" for p in sorted(d.rglob("*"))}


def test_replace_outputs_swaps_at_the_end_and_a_failure_leaves_the_old_run(tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "records.csv").write_text("old")
    (out / "images" / "a.png").write_text("old a")
    (out / "mine.txt").write_text("not an output")
    before = _tree(out)
    with pytest.raises(RuntimeError):
        with io.replace_outputs(out, ["records.csv", "images", "run.json"]) as new:
            io.write_text(new / "records.csv", "new", root=new)
            assert (out / "records.csv").read_text() == "old"  # the old run stays in place while the new one is written
            raise RuntimeError("crash")
    assert _tree(out) == before
    with io.replace_outputs(out, ["records.csv", "images", "run.json"]) as new:
        io.write_text(new / "records.csv", "new", root=new)
        io.write_text(new / "images" / "b.png", "new b", root=new)
        io.write_text(new / "run.json", "{}", root=new)
    assert _tree(out) == {
        "images": "/",
        "images/b.png": "new b",
        "mine.txt": "not an output",
        "records.csv": "new",
        "run.json": "{}",
    }


def test_set_aside_restores_the_old_run_on_failure_and_keeps_a_first_runs_progress(tmp_path):
    out = tmp_path / "out"
    (out / "runs" / "a").mkdir(parents=True)
    (out / "runs" / "a" / "last.pt").write_text("old")
    (out / "index.html").write_text("old")
    before = _tree(out)
    with pytest.raises(KeyboardInterrupt):
        with io.set_aside(out, ["runs/a", "index.html", "commands.txt"]):
            assert not (out / "runs" / "a").exists()
            io.write_text(out / "runs" / "a" / "last.pt", "new", root=out)
            io.write_text(out / "commands.txt", "new", root=out)
            raise KeyboardInterrupt
    assert _tree(out) == before
    first = tmp_path / "first"
    with pytest.raises(KeyboardInterrupt):
        with io.set_aside(first, ["runs/a"]):
            io.write_text(first / "runs" / "a" / "last.pt", "progress", root=first)
            raise KeyboardInterrupt
    assert (first / "runs" / "a" / "last.pt").read_text() == "progress"  # nothing to restore: the progress stays


def test_a_killed_replacements_staging_folder_is_removed_and_an_old_run_set_aside_kept(tmp_path):
    from robustvae.experiments.rundir import RunDir

    d = tmp_path / "run"
    (d / ".staging-1234abcd" / "images").mkdir(parents=True)
    (d / ".previous-5678abcd").mkdir()
    (d / ".previous-5678abcd" / "records.csv").write_text("the only copy")
    assert RunDir(d).entries() == [d / ".previous-5678abcd"]  # a staging folder alone is not a run
    with RunDir(d).locked():
        pass
    assert not (d / ".staging-1234abcd").exists() and (d / ".previous-5678abcd" / "records.csv").exists()
