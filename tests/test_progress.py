"""Progress without a terminal: plain lines with step, rate and ETA on stderr and in a log file."""

from __future__ import annotations

from robustvae.progress import clock, make_progress


def test_plain_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    log = tmp_path / "log.txt"
    with make_progress(False, log) as progress:  # pytest's captured stderr is not a terminal
        task = progress.add_task("work", total=40, info="", unit="steps")
        for _ in range(40):
            progress.update(task, advance=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].endswith("work: 0/40 (0%) steps [started]") and err[-1].endswith("[done]")
    assert "40/40 (100%)" in err[-1] and "ETA 0:00:00" in err[-1] and "steps/s" in err[-1]
    assert log.read_text().strip().splitlines() == err  # the same lines in the log file


def test_quiet_writes_only_the_log(tmp_path, capsys):
    with make_progress(True, tmp_path / "log.txt") as progress:
        task = progress.add_task("quiet", total=2, info="")
        progress.update(task, advance=2)
    assert capsys.readouterr().err == "" and "[done]" in (tmp_path / "log.txt").read_text()
    assert clock(3725) == "1:02:05" and clock(float("nan")) == "-:--:--"
