"""Training throughput, kept for older commands: the training rows of ``python -m benchmarks``.

    python benchmarks/train_throughput.py [--preset vdvae-mnist ...] [--batch-size 128] [--device auto]

Writes benchmarks/train_throughput.json unless ``--out`` says otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.__main__ import main as suite  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    args = ["--train-preset" if a == "--preset" else a for a in (sys.argv[1:] if argv is None else argv)]
    return suite(["--only", "train", "--out", str(Path(__file__).with_suffix(".json")), *args])


if __name__ == "__main__":
    main()
