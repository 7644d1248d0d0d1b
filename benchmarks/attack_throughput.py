"""Attack and MS-SSIM throughput, kept for older commands: those rows of ``python -m benchmarks``.

    python benchmarks/attack_throughput.py [--checkpoint RUN] [--points 10] [--restarts 5] [--steps 20] [--k L]

Writes benchmarks/attack_throughput.json unless ``--out`` says otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.__main__ import main as suite  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    args = sys.argv[1:] if argv is None else argv
    return suite(["--only", "attack,msssim", "--out", str(Path(__file__).with_suffix(".json")), *args])


if __name__ == "__main__":
    main()
