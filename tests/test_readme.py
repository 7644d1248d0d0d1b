"""README stays true: its Python example runs, and it opens with the demo and the test command."""

from __future__ import annotations

import re
from pathlib import Path


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
