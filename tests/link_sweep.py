"""A sweep that plants a symbolic link at each file and folder every command writes (used by tests/test_link_sweep.py
and by hand).

For every command variant (fresh runs, ``--force`` replacements and resumed runs), the command is first run once on
tiny inputs to learn what it writes under its output root; then, for each of those paths, a fresh output root gets
the same starting state with that one path replaced by a link to a file (or folder) outside, and the command runs
again. Nothing outside the output root may change (every file outside is hashed before and after), and the command
must end cleanly: exit 2 with one ``error:`` line, or exit 0. Outcomes:

* ``refused``: exit 2 with one error line, nothing outside changed;
* ``ok``: exit 0, nothing outside changed (the link was not followed);
* ``outside_changed``: a file or folder outside the output root was created, changed or removed;
* ``traceback``, ``multi_line``: an escape, or an error of more than one line.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bad_input_sweep as inputs
import file_sweep as files

Prepare = Callable[["Fixtures", Path], None]


@dataclass(frozen=True)
class Variant:
    """One way of running a command: its argv for an output root, and the state the root starts from."""

    name: str
    argv: Callable[["Fixtures", Path], list[str]]
    prepare: Prepare | None = None  # builds the starting state of the output root (a run to resume or replace)
    slow: bool = False


@dataclass
class Outcome:
    variant: str
    path: str
    kind: str
    detail: str


class Fixtures(files.Fixtures):
    """The file sweep's inputs (made when first needed), a checkpoint of the authors' code for ``zoo import``, and the
    starting states of the variants."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.base_out = root / "bases"  # the starting states, made once per variant

    @functools.cached_property
    def theirs(self) -> Path:
        from test_kuzina_zoo import _model, _save

        return _save(self.inputs / "theirs.pth", _model())


def _attack_argv(fx: Fixtures, out: Path) -> list[str]:
    return [
        "attack",
        str(fx.run),
        "--points",
        "1",
        "--restarts",
        "1",
        "--steps",
        "1",
        "--layers",
        "1,2",
        "-q",
        "--out",
        str(out),
    ]


def _half_attack(fx: Fixtures, out: Path) -> None:
    """An attack run cut after its first unit (the resume appends the second)."""
    files._run(_attack_argv(fx, out))
    rec = out / "records.jsonl"
    rows = [json.loads(x) for x in rec.read_text().splitlines()]
    first = rows[0]["unit"]
    rec.write_text("".join(json.dumps(r) + "\n" for r in rows if r["unit"] == first))


def _train_argv(fx: Fixtures, out: Path, *more: str) -> list[str]:
    return [
        "train",
        "--preset",
        "vdvae-mnist-tiny",
        "--data",
        "synthetic",
        "--quiet",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--out",
        str(out),
        *more,
    ]


def _compress_argv(fx: Fixtures, out: Path, *more: str) -> list[str]:
    return ["compress", str(fx.run), "--images", str(fx.images), "--layers", "1", "-q", "--out", str(out), *more]


def _demo_argv(fx: Fixtures, out: Path, *more: str) -> list[str]:
    return [
        "demo",
        "--preset",
        "vdvae-mnist-tiny",
        "--train-steps",
        "1",
        "--points",
        "1",
        "--restarts",
        "1",
        "--attack-steps",
        "1",
        "--iw-samples",
        "1",
        "--eval-limit",
        "2",
        "-q",
        "--out",
        str(out),
        *more,
    ]


def _zoo_argv(fx: Fixtures, out: Path, *more: str) -> list[str]:
    return ["zoo", "import", str(fx.theirs), "--preset", "kuzina-dctvae-mnist-tiny", "--out", str(out), *more]


def _report_argv(fx: Fixtures, out: Path, *more: str) -> list[str]:
    return ["report", str(fx.attack), "--out", str(out), *more]


VARIANTS = [
    Variant("train", lambda fx, o: _train_argv(fx, o)),
    Variant("train --force", lambda fx, o: _train_argv(fx, o, "--force"), lambda fx, o: files._run(_train_argv(fx, o))),
    Variant(
        "train --resume",
        lambda fx, o: ["train", "--resume", "--steps", "3", "--quiet", "--out", str(o)],
        lambda fx, o: files._run(_train_argv(fx, o)),
    ),
    Variant(
        "eval",
        lambda fx, o: [
            "eval",
            str(fx.run),
            "-k",
            "2",
            "--limit",
            "4",
            "--batch-size",
            "4",
            "-q",
            "--out",
            str(o / "e.json"),
        ],
    ),
    Variant("sample --force", lambda fx, o: ["sample", str(fx.run), "--n", "2", "--out", str(o / "s.png"), "--force"]),
    Variant("attack", _attack_argv),
    Variant("attack (resume)", _attack_argv, _half_attack),
    Variant(
        "certify",
        lambda fx, o: ["certify", str(fx.dct), "--points", "1", "--eps", "0.1", "--no-optimal", "-q", "--out", str(o)],
    ),
    Variant(
        "compress --force",
        lambda fx, o: _compress_argv(fx, o, "--force"),
        lambda fx, o: files._run(_compress_argv(fx, o)),
    ),
    Variant(
        "report --force", lambda fx, o: _report_argv(fx, o, "--force"), lambda fx, o: files._run(_report_argv(fx, o))
    ),
    Variant(
        "zoo import --force", lambda fx, o: _zoo_argv(fx, o, "--force"), lambda fx, o: files._run(_zoo_argv(fx, o))
    ),
    Variant(
        "demo --force",
        lambda fx, o: _demo_argv(fx, o, "--force"),
        lambda fx, o: files._run(_demo_argv(fx, o)),
        slow=True,
    ),
]


def _entries(root: Path) -> list[str]:
    """Every file and folder under ``root`` (relative paths), folders before what they hold."""
    out = []
    for dirpath, dirnames, names in os.walk(root):
        d = Path(dirpath)
        dirnames.sort()
        out += [str((d / n).relative_to(root)) for n in dirnames + sorted(names)]
    return sorted(out, key=lambda p: (p.count(os.sep), p))


def _start(fx: Fixtures, v: Variant, out: Path) -> None:
    """The variant's starting state in ``out`` (a copy of the one made once)."""
    if v.prepare is None:
        return
    base = fx.base_out / v.name.replace(" ", "_")
    if not base.exists():
        v.prepare(fx, base)
    shutil.copytree(base, out, symlinks=True)


def written(fx: Fixtures, v: Variant, index: int) -> list[str]:
    """What the variant writes (or holds and rewrites) under its output root, found by running it once."""
    out = fx.root / "discover" / f"v{index}" / "out"
    out.parent.mkdir(parents=True)
    _start(fx, v, out)
    files._run(v.argv(fx, out))
    return [p for p in _entries(out) if not Path(p).name.startswith(".staging-")]


def plant(out: Path, rel: str, outside: Path, is_dir: bool) -> None:
    """Replace ``out/rel`` by a link to ``outside`` (a folder link for a folder), its parents real folders."""
    p = out / rel
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(outside / "folder" if is_dir else outside / "file", target_is_directory=is_dir)


def _snapshot(fx: Fixtures, work: Path, out: Path) -> dict[str, str]:
    """Hashes of everything a case could touch outside its output root: its own folder and the shared inputs."""
    return {
        **{f"inputs/{k}": v for k, v in inputs.snapshot(fx.inputs, out).items()},
        **{f"work/{k}": v for k, v in inputs.snapshot(work, out).items()},
    }


def run_case(fx: Fixtures, v: Variant, rel: str, is_dir: bool, index: int) -> Outcome:
    from robustvae.cli import main

    work = fx.root / "cases" / f"c{index}"
    out = work / "out"
    outside = work / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "file").write_bytes(b"precious")
    (outside / "folder" / "inside").write_bytes(b"precious too")
    out.parent.mkdir(parents=True, exist_ok=True)
    _start(fx, v, out)
    plant(out, rel, outside, is_dir)
    before = _snapshot(fx, work, out)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with inputs._quiet() as err:
            try:
                code, exc = main(v.argv(fx, out)), None
            except BaseException as e:  # noqa: BLE001 - the sweep reports every escape
                code, exc = None, e
    finally:
        os.chdir(cwd)
    after = _snapshot(fx, work, out)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    lines = [ln for ln in err.getvalue().strip().splitlines() if ln.strip() and not ln.startswith("note: ")]
    if changed:
        return Outcome(v.name, rel, "outside_changed", ", ".join(changed[:3]))
    if exc is not None or "Traceback" in err.getvalue():
        return Outcome(v.name, rel, "traceback", f"{type(exc).__name__}: {exc}" if exc else lines[-1][:200])
    if code == 2:
        kind = "refused" if len(lines) == 1 and lines[0].startswith("error:") else "multi_line"
        return Outcome(v.name, rel, kind, " | ".join(lines[:2])[:200])
    if code == 0:
        return Outcome(v.name, rel, "ok", "")
    return Outcome(v.name, rel, "traceback", f"exit {code}: " + " | ".join(lines[-2:])[:200])


def sweep(
    root: Path,
    only: set[str] | None = None,
    with_slow: bool = True,
    log=None,
    paths: Callable[[str, str], bool] | None = None,
) -> list[Outcome]:
    """Every variant (``only``: these names), every path it writes (``paths(variant, rel)``: a filter)."""
    fx = Fixtures(root)
    results = []
    for i, v in enumerate(VARIANTS):
        if (only is not None and v.name not in only) or (v.slow and not with_slow):
            continue
        discover = fx.root / "discover" / f"v{i}" / "out"
        for j, rel in enumerate(written(fx, v, i)):
            if paths is not None and not paths(v.name, rel):
                continue
            res = run_case(fx, v, rel, (discover / rel).is_dir(), i * 1000 + j)
            results.append(res)
            if log is not None:
                print(f"{res.kind:16s} {v.name}: {rel}: {res.detail}", file=log, flush=True)
    return results


def totals(results: list[Outcome]) -> dict[str, int]:
    out = {"links_planted": len(results), "variants": len({r.variant for r in results})}
    for kind in ("refused", "ok", "outside_changed", "traceback", "multi_line"):
        out[kind] = sum(r.kind == kind for r in results)
    return out


if __name__ == "__main__":  # python tests/link_sweep.py ROOT [variant ...]
    import tempfile

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    os.environ.setdefault("ROBUSTVAE_DATA", str(root.parent / f"{root.name}-data"))
    sys.path.insert(0, str(Path(__file__).parent))
    res = sweep(root, set(sys.argv[2:]) or None, log=sys.stdout)
    print(json.dumps(totals(res)))
