"""README stays true: its Python example runs, and it opens with the demo and the test command."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from robustvae import zoo
from robustvae.registry import build_model, get_preset

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_opens_with_two_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert "robustvae" in first_block[0] and "pytest" in first_block[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert first_block[1].split("&&")[-1].strip().replace("python ", "python3 ") in ci


def test_readme_python_example_runs(tmp_path):
    cfg = get_preset("vdvae-mnist-tiny")
    run = tmp_path / "run"
    zoo.atomic_save(zoo.make_checkpoint(cfg, build_model(cfg.model)), run / "best.pt")
    code = re.search(r"## Python API\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    scope: dict = {}
    exec(code.replace('"runs/mnist"', repr(str(run))), scope)  # noqa: S102 - our own README
    assert scope["r1"].shape == (8, 1, 28, 28) and torch.isfinite(scope["nll"]).all()
