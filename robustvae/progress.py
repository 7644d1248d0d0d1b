"""One progress display for every long job (training, evaluation, attacks, compression), on stderr.

:func:`make_progress` returns a rich :class:`~rich.progress.Progress` that callers use as
before (``add_task``, ``update``, ``advance``) and that picks its output by itself:

* on a terminal (or in Jupyter): rich's live bar;
* when stderr is not a terminal (``nohup``, a cluster job, a pipe): plain lines instead of
  a bar, at the start, every :data:`PLAIN_INTERVAL_S` seconds or :data:`PLAIN_STEP` of the
  work (whichever comes first, never more than one per :data:`PLAIN_MIN_GAP_S`), and at
  the end, each with the step, the rate, the elapsed time and the ETA;
* with ``log_path``: the same plain lines appended to that file as well (even when quiet).

A task may carry a ``unit`` field (``add_task(..., unit="samples")``) shown with its rate.
:meth:`Progress.note` prints a one-line message through the same channels.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rich import progress as rp
from rich.console import Console

PLAIN_INTERVAL_S = 10.0
PLAIN_STEP = 0.05
PLAIN_MIN_GAP_S = 1.0


def clock(seconds: float) -> str:
    """``h:mm:ss`` (``-:--:--`` when unknown)."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class _Mark:
    """When a task started (time, completed) and when its last plain line was written."""

    t0: float
    done0: float
    t_line: float
    frac_line: float


class Progress(rp.Progress):
    """rich's Progress that also writes plain progress lines to ``plain`` (a stream) and ``log`` (a file)."""

    def __init__(
        self, *columns: Any, plain: TextIO | None = None, log_path: str | os.PathLike | None = None, **kwargs: Any
    ):
        super().__init__(*columns, **kwargs)
        self._plain = plain
        self._log_path = Path(log_path) if log_path is not None else None
        self._marks: dict[rp.TaskID, _Mark] = {}

    # ------------------------------------------------------------------ rich's interface, plus plain lines

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> rp.TaskID:
        tid = super().add_task(description, *args, **kwargs)
        now, task = time.monotonic(), self._tasks[tid]
        self._marks[tid] = _Mark(now, task.completed, now, self._fraction(task))
        self._line(task, "started")
        return tid

    def update(self, task_id: rp.TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._maybe_line(task_id)

    def advance(self, task_id: rp.TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_line(task_id)

    def stop(self) -> None:
        """Stop the bar; a last plain line for every task that did not reach its total."""
        for tid, task in list(self._tasks.items()):
            if task.total is not None and task.completed < task.total and tid in self._marks:
                self._line(task, "stopped")
        super().stop()

    def note(self, text: str) -> None:
        """A one-line message: above the live bar on a terminal, else as a plain line; and in the log file."""
        if not self.disable:
            self.console.print(text, markup=False, highlight=False)
        self._write(f"{_stamp()} {text}")

    # ------------------------------------------------------------------ plain lines

    @staticmethod
    def _fraction(task: rp.Task) -> float:
        return task.completed / task.total if task.total else 0.0

    def _maybe_line(self, task_id: rp.TaskID) -> None:
        if self._plain is None and self._log_path is None:
            return
        task, mark, now = self._tasks[task_id], self._marks.get(task_id), time.monotonic()
        if mark is None:
            return
        frac, gap = self._fraction(task), now - mark.t_line
        finished = task.total is not None and task.completed >= task.total
        step = frac - mark.frac_line >= PLAIN_STEP - 1e-9  # (float fractions: 0.15 - 0.10 < 0.05)
        if finished or gap >= PLAIN_INTERVAL_S or (step and gap >= PLAIN_MIN_GAP_S):
            self._line(task, "done" if finished else "")
            if finished:
                del self._marks[task_id]  # one closing line

    def _line(self, task: rp.Task, state: str) -> None:
        """``<time> <description>: <done>/<total> (<pct>) | <rate> | elapsed | ETA | <info> [state]``."""
        mark = self._marks.get(task.id)
        if mark is None or (self._plain is None and self._log_path is None):
            return
        now = time.monotonic()
        mark.t_line, mark.frac_line = now, self._fraction(task)
        elapsed = now - mark.t0
        rate = (task.completed - mark.done0) / elapsed if elapsed > 0 else 0.0
        left = (task.total - task.completed) / rate if task.total is not None and rate > 0 else float("nan")
        unit = task.fields.get("unit", "")
        total = f"/{task.total:,.0f} ({mark.frac_line:.0%})" if task.total is not None else ""
        if state == "started":
            self._write(
                f"{_stamp()} {task.description}: {task.completed:,.0f}{total}{' ' + unit if unit else ''} [started]"
            )
            return
        parts = [
            f"{task.description}: {task.completed:,.0f}{total}",
            f"{rate:,.1f} {unit}/s".replace(" /s", "/s"),
            f"elapsed {clock(elapsed)}",
            f"ETA {clock(left if state != 'done' else 0.0)}",
        ]
        info = str(task.fields.get("info", "") or "")
        self._write(f"{_stamp()} " + " | ".join(parts + ([info] if info else [])) + (f" [{state}]" if state else ""))

    def _write(self, line: str) -> None:
        if self._plain is not None:
            print(line, file=self._plain, flush=True)
        if self._log_path is not None:
            from robustvae import io

            io.append_text(self._log_path, line + "\n")  # never through a link (the file's folder is the root)


LOG_NAME = "log.txt"  # the progress lines of a run, in its output directory (train, attack, certify)


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def make_progress(quiet: bool = False, log_path: str | os.PathLike | None = None) -> Progress:
    """The progress display: a rich bar on a terminal, plain lines on stderr otherwise (none when ``quiet``).

    ``log_path``: a file the plain lines are appended to as well (its folder must exist),
    written even when ``quiet``.
    """
    console = Console(stderr=True)
    fancy = console.is_interactive or console.is_jupyter
    return Progress(
        rp.TextColumn("[bold]{task.description}"),
        rp.BarColumn(),
        rp.MofNCompleteColumn(),
        rp.TimeElapsedColumn(),
        rp.TimeRemainingColumn(),
        rp.TextColumn("{task.fields[info]}"),
        console=console,
        disable=quiet or not fancy,
        transient=False,
        plain=None if quiet or fancy else sys.stderr,
        log_path=log_path,
    )
