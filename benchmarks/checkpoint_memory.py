"""Peak memory of ``robustvae eval`` on a checkpoint whose stored config is giant over the tensors of a tiny model.

    python -m benchmarks.checkpoint_memory [--width 200000] [--limit-gib 8] [--before PATH] [--out FILE]

A tiny VDVAE is trained for 2 steps; its ``best.pt`` is copied with ``model.channels`` and ``model.hidden`` set to
``--width`` (the tensors stay those of the tiny model). ``robustvae eval`` runs on it in a fresh subprocess, under an
address-space limit of ``--limit-gib`` (RLIMIT_AS: the machine is never at risk), and the child's peak resident set
(``VmHWM``, its own high-water mark; torch allocates outside Python's heap, so tracemalloc cannot see it) is reported with its exit code
and last stderr line. ``--before PATH`` runs the same with the robustvae package found in PATH (e.g. an export of an
earlier commit: ``git archive <rev> | tar -x -C PATH``), so the table compares the two. A baseline, the same process
importing the CLI and exiting, says what the interpreter and torch take by themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
code = 0
try:
    if len(sys.argv) > 2:
        from robustvae.cli import main
        code = main(sys.argv[2:])
    else:
        import robustvae.cli  # noqa: F401 - the baseline: imports only
finally:  # also when the command ends in a traceback
    # VmHWM: this program's own peak; execve starts it afresh, ru_maxrss would keep the forking parent's
    print("PEAK_KIB", next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM")), flush=True)
sys.exit(code)
"""


def giant_checkpoint(work: Path, width: int) -> Path:
    """A tiny trained model's best.pt with its config's channels and hidden set to ``width``."""
    import torch

    from robustvae.cli import main

    run = work / "run"
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
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["config"]["model"]["channels"] = ckpt["config"]["model"]["hidden"] = width
    path = work / f"giant-{width}.pt"
    torch.save(ckpt, path)
    return path


def measure(package_root: Path, limit: int, argv: list[str]) -> dict:
    """Run the probe with ``package_root`` first on the path; its peak RSS (MiB), exit code and last stderr line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(package_root)}
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(limit), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        cwd=package_root,
    )  # python -c puts the working folder first on the path
    peak = [ln for ln in r.stdout.splitlines() if ln.startswith("PEAK_KIB")]
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    return {
        "exit": r.returncode,
        "peak_mib": round(int(peak[0].split()[1]) / 1024, 1) if peak else None,
        "stderr_lines": len(lines),
        "last_line": lines[-1][:240] if lines else "",
        "traceback": "Traceback" in r.stderr,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=200_000)
    p.add_argument("--limit-gib", type=float, default=8.0)
    p.add_argument("--before", type=Path, default=None, help="a folder holding an earlier robustvae package")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    limit = int(a.limit_gib * 2**30)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("ROBUSTVAE_DATA", str(work / "data"))
        ckpt = giant_checkpoint(work, a.width)
        cmd = ["eval", str(ckpt), "-k", "2", "--limit", "4", "--batch-size", "4", "-q", "--out", str(work / "e.json")]
        res = {
            "command": "python -m benchmarks.checkpoint_memory " + " ".join(argv or sys.argv[1:]),
            "width": a.width,
            "address_space_limit_gib": a.limit_gib,
            "baseline (import only)": measure(ROOT, limit, []),
            "this tree": measure(ROOT, limit, cmd),
        }
        if a.before is not None:
            res[f"before ({a.before})"] = measure(a.before, limit, cmd)
    print(json.dumps(res, indent=1))
    if a.out is not None:
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
