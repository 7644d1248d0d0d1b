"""A generated bad-input sweep over the command line (used by tests/test_bad_input_sweep.py and by hand).

For every option of every command (read from the typer app, nothing listed by hand
except the base invocation each command needs), the option is given NaN, inf, a
negative number, zero and a wrong type in turn, on top of a valid base invocation.
Each case must end either in a clean error (exit 2, one line on stderr, no traceback)
or, where the value is valid, in a clean success; nothing outside ``--out`` may be
created or changed. Outcomes:

* ``clean``: exit 2 with one ``error:`` line;
* ``ok``: exit 0 with a value that is valid for the option;
* ``accepted_invalid``: exit 0 with a value the option should refuse (NaN, inf, a
  wrong type, or a negative/zero number where only positive ones make sense);
* ``multi_line``: exit 2, but more than one line on stderr (a usage box);
* ``traceback``: an exception escaped, or another exit code;
* ``side_effect``: something outside ``--out`` (and a file output's ``.log`` beside it) was created or changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

VALUES = ("nan", "inf", "-1", "0", "abc")
# numeric options where a zero (or negative) value is valid
ZERO_OK = {"--eps", "--temperature", "-t", "--seed", "--eot"}  # --eot 0: the dither off (the default)
NEGATIVE_OK: set[str] = set()
SKIP_COMMANDS = {"zoo fetch"}  # needs the network
SKIP_OPTIONS = {"--help", "--version", "--device-none"}


@dataclass
class Case:
    command: str
    option: str
    value: str
    numeric: bool


@dataclass
class Outcome:
    case: Case
    kind: str
    code: int | None
    detail: str


def commands():
    """(name, click command) of every command, subcommands of groups included."""
    import typer

    from robustvae.cli import app

    root = typer.main.get_command(app)
    for name, cmd in sorted(root.commands.items()):
        if hasattr(cmd, "commands"):
            for sub, scmd in sorted(cmd.commands.items()):
                yield f"{name} {sub}", scmd
        else:
            yield name, cmd


def _numeric(p) -> bool:
    import typing

    tp = p.type_descriptor.annotation
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is not None else [tp]
    return any(a in (int, float) for a in args)


def cases(only: set[str] | None = None) -> list[Case]:
    out = []
    for name, cmd in commands():
        if name in SKIP_COMMANDS or (only is not None and name not in only):
            continue
        for p in cmd.params:
            if not hasattr(p, "is_flag") or p.is_flag or p.opts[0] in SKIP_OPTIONS:
                continue
            numeric = _numeric(p)
            for v in VALUES:
                out.append(Case(name, p.opts[0], v, numeric))
    return out


def expected_valid(case: Case) -> bool:
    """Whether the value is one the option should accept (only decided for numeric options)."""
    if not case.numeric:
        return True  # paths and names: a clean error or a clean success are both fine
    if case.value in ("nan", "inf", "abc"):
        return False
    if case.value == "0":
        return case.option in ZERO_OK
    return case.option in NEGATIVE_OK


class Fixtures:
    """A trained tiny run, an image folder, a finished attack run, under ``root/inputs``."""

    def __init__(self, root: Path):
        from robustvae.cli import main

        self.root = root
        self.inputs = root / "inputs"
        run = self.inputs / "run"
        with _quiet():
            assert (
                main(
                    [
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
                        str(run),
                    ]
                )
                == 0
            )
            self.images = self.inputs / "images"
            self.images.mkdir(parents=True)
            import numpy as np
            from PIL import Image

            Image.fromarray((np.arange(28 * 28).reshape(28, 28) % 256).astype("uint8")).save(self.images / "a.png")
            self.attack = self.inputs / "attack"
            assert (
                main(
                    [
                        "attack",
                        str(run),
                        "--points",
                        "1",
                        "--restarts",
                        "1",
                        "--steps",
                        "1",
                        "--layers",
                        "1",
                        "--out",
                        str(self.attack),
                        "-q",
                    ]
                )
                == 0
            )
            self.dct = self.inputs / "dct"
            assert (
                main(
                    [
                        "train",
                        "--preset",
                        "dctvae-mnist-tiny",
                        "--data",
                        "synthetic",
                        "--quiet",
                        "--batch-size",
                        "8",
                        "--steps",
                        "2",
                        "--out",
                        str(self.dct),
                    ]
                )
                == 0
            )
        (self.inputs / "foreign.pt").write_bytes(b"not a checkpoint")
        self.run = run

    def base(self, command: str, out: Path) -> list[str]:
        r, o = str(self.run), str(out)
        return {
            "train": [
                "train",
                "--preset",
                "vdvae-mnist-tiny",
                "--data",
                "synthetic",
                "--quiet",
                "--batch-size",
                "8",
                "--steps",
                "1",
                "--out",
                o,
            ],
            "eval": ["eval", r, "-k", "2", "--limit", "4", "--batch-size", "4", "-q", "--out", str(out / "e.json")],
            "sample": ["sample", r, "--n", "2", "--out", str(out / "s.png")],
            "attack": [
                "attack",
                r,
                "--points",
                "1",
                "--restarts",
                "1",
                "--steps",
                "1",
                "--layers",
                "1",
                "-q",
                "--out",
                o,
            ],
            "compress": ["compress", r, "--images", str(self.images), "--layers", "1", "-q", "--out", o],
            "report": ["report", str(self.attack), "--out", o],
            "demo": [
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
                o,
            ],
            "certify": ["certify", str(self.dct), "--points", "1", "--eps", "0.1", "--no-optimal", "-q", "--out", o],
            "zoo list": ["zoo", "list"],
            "zoo import": [
                "zoo",
                "import",
                str(self.inputs / "foreign.pt"),
                "--preset",
                "kuzina-dctvae-mnist-tiny",
                "--out",
                o,
            ],
        }[command]


IMAGE_COMMANDS = ("attack", "eval", "certify", "compress")  # the commands that take --images
BAD_IMAGE_REASONS = {  # file -> what its one-line error must say (any of these: compress reads some differently)
    "bool.npy": ("holds bool pixels",),
    "bytes-as-floats.npy": ("floats must be in [0, 1]",),
    "cut.npy": ("cannot be read as a .npy array",),
    "empty-folder": ("no PNG/JPEG images in",),
    "empty.npy": ("holds no images",),
    "flat.npy": ("holds an array of shape (2, 784)",),
    "inf.npy": ("NaN or infinite",),
    "nan.npy": ("NaN or infinite",),
    "int64.npy": ("holds int64 pixels",),
    "list.pt": ("not a tensor",),
    "negative.npy": ("from -0.1 to -0.1",),
    "objects.npy": ("which robustvae does not unpickle",),
    "pickled.pt": ("holds pickled objects",),
    "rgb-nhwc.npy": ("shape (2, 28, 28, 3)",),
    "rgb.npy": ("shape (2, 3, 28, 28)",),
    "small-pngs": ("is 20x20 pixels",),
    "small.npy": ("shape (2, 1, 20, 20)", "is 20x20 pixels"),
    "table.csv": ("unknown kind of file", "cannot be read as an image"),
    "two.npz": ("holds 2 arrays (a, b)",),
}


def _bad_image_files(folder: Path) -> dict[str, Path]:
    """One file per way a user's image file can be wrong for the 1x28x28 fixtures (too small even for compress)."""
    import pickle

    import numpy as np
    import torch
    from PIL import Image

    class _Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    folder.mkdir(parents=True)
    arrays = {
        "small.npy": np.zeros((2, 1, 20, 20), np.uint8),
        "rgb.npy": np.zeros((2, 3, 28, 28), np.uint8),
        "rgb-nhwc.npy": np.zeros((2, 28, 28, 3), np.uint8),
        "flat.npy": np.zeros((2, 784), np.uint8),
        "empty.npy": np.zeros((0, 1, 28, 28), np.uint8),
        "int64.npy": np.zeros((2, 1, 28, 28), np.int64),
        "bool.npy": np.zeros((2, 1, 28, 28), bool),
        "bytes-as-floats.npy": np.full((2, 1, 28, 28), 200.0, np.float32),
        "negative.npy": np.full((2, 1, 28, 28), -0.1, np.float32),
        "nan.npy": np.full((2, 1, 28, 28), np.nan, np.float32),
        "inf.npy": np.full((2, 1, 28, 28), np.inf),
    }
    for name, arr in arrays.items():
        np.save(folder / name, arr)
    np.save(folder / "objects.npy", np.array([_Evil()], dtype=object), allow_pickle=True)
    np.savez(folder / "two.npz", a=np.zeros((1, 1, 28, 28)), b=np.zeros((1, 1, 28, 28)))
    (folder / "pickled.pt").write_bytes(pickle.dumps(_Evil()))
    torch.save([torch.zeros(1, 1, 28, 28)], folder / "list.pt")
    (folder / "cut.npy").write_bytes(b"\x93NUMPY\x01\x00")
    (folder / "table.csv").write_text("0,1\n")
    pngs = folder / "small-pngs"
    pngs.mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(pngs / "a.png")
    (folder / "empty-folder").mkdir()
    return {p.name: p for p in sorted(folder.iterdir())}


def image_cases(fx: Fixtures) -> list[Case]:
    """Every bad image file given to every command that takes --images: each must be a one-line error."""
    files = _bad_image_files(fx.inputs / "bad-images")
    return [Case(command, "--images", str(path), False) for command in IMAGE_COMMANDS for path in files.values()]


def argv_for(fx: Fixtures, case: Case, out: Path) -> list[str]:
    """The base invocation with the option under test set to the case's value (replacing a base value)."""
    argv = fx.base(case.command, out)
    aliases = {case.option}
    for name, cmd in commands():
        if name == case.command:
            for p in cmd.params:
                if case.option in p.opts:
                    aliases = set(p.opts)
    for i, a in enumerate(argv):
        if a in aliases:
            argv = argv[:i] + argv[i + 2 :]
            break
    return [*argv, case.option, case.value]


@contextlib.contextmanager
def _quiet():
    err, outb = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(outb):
        yield err


def snapshot(root: Path, skip: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        d = Path(dirpath)
        if d == skip or skip in d.parents:
            dirnames[:] = []
            continue
        for f in files:
            p = d / f
            if p == skip:
                continue
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "?"
        for dn in dirnames:
            out[str((d / dn).relative_to(root)) + "/"] = "dir"
    return out


def run_case(fx: Fixtures, case: Case, index: int) -> Outcome:
    from robustvae.cli import main

    work = fx.root / "cases" / f"c{index}"
    work.mkdir(parents=True)
    out = work / "out"
    argv = argv_for(fx, case, out)
    if case.option in ("--out", "-o"):
        out = work / case.value
    before = snapshot(fx.root, out)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with _quiet() as err:
            try:
                code = main(argv)
                exc = None
            except BaseException as e:  # noqa: BLE001 - the sweep reports every escape
                code, exc = None, e
    finally:
        os.chdir(cwd)
    after = snapshot(fx.root, out)
    text = err.getvalue()
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if exc is not None or "Traceback" in text:
        return Outcome(case, "traceback", code, f"{type(exc).__name__}: {exc}" if exc else lines[-1][:200])
    changed = sorted(
        k
        for k in set(before) | set(after)
        if before.get(k) != after.get(k) and not k.startswith(str(work.relative_to(fx.root)) + "/")
    )
    companion = out.with_suffix(".log").resolve()  # a file output's progress log beside it (eval)
    created_in_work = sorted(
        k
        for k in set(after) - set(before)
        if k.startswith(str(work.relative_to(fx.root)) + "/")
        and not (fx.root / k.rstrip("/")).resolve().is_relative_to(out.resolve())
        and (fx.root / k).resolve() != companion
    )
    if changed or created_in_work:
        return Outcome(case, "side_effect", code, ", ".join((changed + created_in_work)[:3]))
    if code == 2:
        if len(lines) == 1 and lines[0].startswith("error:"):
            return Outcome(case, "clean", code, lines[0][:200])
        return Outcome(case, "multi_line", code, f"{len(lines)} lines on stderr: " + " | ".join(lines[:3])[:200])
    if code == 0:
        return Outcome(case, "ok" if expected_valid(case) else "accepted_invalid", code, "")
    return Outcome(case, "traceback", code, f"exit {code}: " + " | ".join(lines[-2:])[:200])


def sweep(root: Path, only: set[str] | None = None, log=None) -> list[Outcome]:
    fx = Fixtures(root)
    results = []
    for i, case in enumerate(cases(only)):
        res = run_case(fx, case, i)
        results.append(res)
        if log is not None:
            print(f"{res.kind:17s} {case.command} {case.option} {case.value}: {res.detail}", file=log, flush=True)
    return results


def totals(results: list[Outcome]) -> dict[str, int]:
    out = {"cases": len(results)}
    for kind in ("clean", "ok", "accepted_invalid", "multi_line", "traceback", "side_effect"):
        out[kind] = sum(r.kind == kind for r in results)
    return out


if __name__ == "__main__":  # python tests/bad_input_sweep.py ROOT [command ...]
    import json
    import tempfile

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    os.environ.setdefault("ROBUSTVAE_DATA", str(root.parent / f"{root.name}-data"))
    res = sweep(root, set(sys.argv[2:]) or None, log=sys.stdout)
    print(json.dumps(totals(res)))
