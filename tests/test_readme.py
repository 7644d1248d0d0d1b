"""README stays true: its Python and shell examples run in order, and it opens with the demo and the test command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_opens_with_two_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert "robustvae" in first_block[0] and "pytest" in first_block[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert first_block[1].split("&&")[-1].strip().replace("python ", "python3 ") in ci


def test_readme_python_examples_run_in_order(tmp_path, monkeypatch):
    """Every Python block of the README, as written, in the order written, in a fresh working directory."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 3 and "robustvae.train(" in blocks[0]
    monkeypatch.chdir(tmp_path)
    for i, code in enumerate(blocks):
        scope: dict = {}
        exec(compile(code, f"README python block {i + 1}", "exec"), scope)  # noqa: S102 - our own README
    assert (tmp_path / "reports" / "api" / "index.html").is_file()


# The README's shell examples at small sizes: only sizes change (steps, samples, points), never a path or a name.
SIZES = [
    (r"--epochs 35\b", "--steps 2"),
    (r"--iw-samples 1000\b", "--iw-samples 2"),
    (r"--limit 100\b", "--limit 10"),
    (r"--points 50\b", "--points 1"),
    (r"--points 20\b", "--points 2"),
    (r"--restarts 5\b", "--restarts 1"),
    (r"--n 64\b", "--n 4"),
]
EXTRA_SIZES = {  # appended to a command that states no size of its own
    "eval": "--iw-samples 2 --limit 10",
    "attack": "--points 1 --restarts 1 --steps 1",
    "demo": "--train-steps 2 --points 1 --restarts 1 --attack-steps 1 --iw-samples 2 --eval-limit 10",
}


def shell_examples() -> list[str]:
    """Every command of the README's ```bash blocks after the opening one (install and test lines), in order.

    Blocks that need what a fresh clone does not have (a GPU, Kodak images, torchrun placeholders) are ```sh.
    """
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)[1:]
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def small(command: str) -> str:
    for pattern, repl in SIZES:
        command = re.sub(pattern, repl, command)
    words = command.split()
    extra = EXTRA_SIZES.get(words[1], "") if len(words) > 1 else ""
    if words[1:2] == ["eval"] and "--iw-samples" in command:
        extra = ""
    return f"{command} {extra}".strip()


def test_readme_shell_examples_are_found_and_only_resized():
    commands = shell_examples()
    assert len(commands) >= 14 and all(c.startswith("robustvae ") for c in commands), commands
    for c in commands:
        resized = small(c)
        paths = [w for w in c.split() if "/" in w or w.endswith((".png", ".json", ".toml"))]
        assert all(p in resized.split() for p in paths), (c, resized)


@pytest.mark.slow
def test_readme_shell_examples_run_in_order(tmp_path):
    """A fresh clone's view: the repository's attack suites and examples and nothing else, each command in the order
    written, at small sizes; every one exits 0 without a traceback, and what the next ones read exists."""
    shutil.copytree(README.parent / "attacks", tmp_path / "attacks")
    shutil.copytree(README.parent / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "robustvae").write_text(f'#!/bin/sh\nexec {sys.executable} -m robustvae "$@"\n')
    (bindir / "robustvae").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(README.parent), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": "200",
    }
    for command in map(small, shell_examples()):
        res = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert res.returncode == 0 and "Traceback" not in res.stderr, (command, res.stdout[-2000:], res.stderr[-2000:])
    for made in (
        "runs/vdvae-mnist/best.pt",
        "runs/vdvae-mnist/eval-test.json",
        "samples.png",
        "reports/mine/index.html",
        "reports/demo/index.html",
        "runs/compress/records.csv",
        "runs/figure10-mnist/records.jsonl",
        "reports/compress/index.html",
        "reports/certify/index.html",
        "runs/vdvae-mnist/eval-images-digits.json",
        "runs/own-eval.json",
        "runs/own-attack/records.jsonl",
        "runs/own-certify/records.jsonl",
        "runs/own-compress/records.csv",
        "reports/own/index.html",
    ):
        assert (tmp_path / made).is_file(), made
