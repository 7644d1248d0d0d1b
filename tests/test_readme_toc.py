"""The README's first screen and its links: the CPU-wheel advice right after the two opening commands, a table of
contents whose every in-page link names a heading, and a Cite section."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_in_page_link_names_a_heading():
    text = README.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#{1,4} (.+)$", text, re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert len(links) >= 20 and not set(links) - anchors, sorted(set(links) - anchors)
    contents = next(line for line in text.splitlines() if line.startswith("**Contents:**"))
    assert "](#cite)" in text and "## Cite" in text and "[Status](#status)" in contents


def test_cpu_wheel_advice_follows_the_two_opening_commands():
    text = README.read_text()
    after = text.split("```", 2)[2].lstrip("`\n").split("\n\n")[0]  # the first paragraph after the opening block
    assert "No GPU?" in after and "--index-url" in after and "download.pytorch.org/whl/cpu" in after
