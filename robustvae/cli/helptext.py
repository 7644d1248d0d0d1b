"""The ``--help`` pages read the same for every command, whoever wrote its options.

Help is rendered with rich markup, so a literal ``[default: ...]`` in an option's help
would be taken for a markup tag and vanish; :func:`tidy` escapes it. Flags take no
value, so they show no metavar (``--resume``, not ``--resume <bool>``), and a flag that
is off unless given says ``[default: off]``.
"""

from __future__ import annotations

import re
from typing import Any

_UNESCAPED_DEFAULT = re.compile(r"(?<!\\)\[default:")


def tidy(command: Any) -> Any:
    """Tidy the help of every option of a click command (typer's own click or click) and its subcommands."""
    for sub in getattr(command, "commands", {}).values():
        tidy(sub)
    for p in command.params:
        if getattr(p, "param_type_name", None) == "option":
            _tidy_option(p)
    return command


def _tidy_option(p: Any) -> None:
    text = _UNESCAPED_DEFAULT.sub(r"\\[default:", p.help or "")
    if p.is_flag:
        p.metavar = ""
        if not p.default and "[default:" not in text and not p.is_eager:
            text = f"{text} \\[default: off]".strip()
    p.help = text or None
