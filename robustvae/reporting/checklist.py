"""The rows of a report's checks table, collected in one place so that every check reads the same way.

A check row holds ``check`` (its name), ``scope`` (the curve, k or file it is about),
``passed``, ``value`` and ``limit`` (the number behind it and the line it is held to) and
``detail``: what was found, said differently when the check passes and when it fails
(``attack did measurable damage: ...`` against ``no measurable damage: ...``), so a line
of the table, of ``checks.md`` or of ``robustvae report --strict``'s stderr stands alone.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

COLUMNS = ["check", "scope", "passed", "value", "limit", "detail"]


class CheckList:
    """Check rows as they are found; :meth:`frame` is the checks table."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, check: str, scope: str, passed: bool, value: float, limit: float, found: str, missed: str) -> None:
        """One check: ``found`` is its text when it passes, ``missed`` when it fails (both say what was measured)."""
        self.rows.append(
            {
                "check": check,
                "scope": scope,
                "passed": bool(passed),
                "value": float(value),
                "limit": float(limit),
                "detail": found if passed else missed,
            }
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


def failed_lines(checks: list[dict[str, Any]]) -> list[str]:
    """One line per failed check (of ``summary.json``'s ``checks``): ``FAIL <check> | <scope> | <what was found>``."""
    return [f"FAIL {c['check']} | {c['scope']} | {c['detail']}" for c in checks if not c["passed"]]
