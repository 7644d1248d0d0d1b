"""``robustvae demo``: the whole pipeline, offline, in minutes on a CPU.

Trains a small VDVAE and a small DCT-VAE on real MNIST digits that ship with a PyPI
package (``mnist-offline``), evaluates both on the same test images (importance-sampled
NLL, KL and active units per layer), attacks the top k = 1 .. L layers of each with
restarts, and writes the full report. Each stage calls the Python API
(:mod:`robustvae.api`) and is echoed as the CLI command a user would type for it
(``train``, ``eval``, ``attack``, ``report``); the commands and their wall times go
into the report's notes (``commands.txt``).

Layout of ``out``: ``runs/<preset>/`` (trained models), ``runs/eval-test.json``,
``runs/attack/`` (records), and the report itself at the top (``index.html``, ...).
An ``out`` that is not empty is refused unless ``force``, which replaces only what
the demo writes (:func:`outputs`); the earlier demo is set aside and comes back whole
if the new one fails or is stopped.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from robustvae import io
from robustvae.errors import RobustVAEError
from robustvae.experiments.rundir import RunDir

DEMO_PRESETS = ("vdvae-mnist-demo", "dctvae-mnist-demo")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the defaults fit in a few minutes on a 2-core CPU, tests shrink them."""

    presets: tuple[str, ...] = DEMO_PRESETS
    data: str = "mnist-offline"
    train_steps: int | None = None  # None: the presets' own step counts
    iw_samples: int = 100
    eval_limit: int = 200
    points: int = 50  # the protocol's points, restarts and steps (Appendix H)
    restarts: int = 5
    attack_steps: int = 50
    eps: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("iw_samples", "eval_limit", "points", "restarts", "attack_steps"):
            if getattr(self, name) < 1:
                raise RobustVAEError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.train_steps is not None and self.train_steps < 1:
            raise RobustVAEError(f"--train-steps must be a positive integer, got {self.train_steps}")
        if not self.presets:
            raise RobustVAEError("the demo needs at least one preset")
        from robustvae.config import eps_problem

        if eps_problem("linf", self.eps):
            raise RobustVAEError(eps_problem("linf", self.eps))


def commands(s: DemoSettings, out: Path, device: str, quiet: bool) -> list[tuple[str, list[str]]]:
    """The demo's stages as (what, robustvae argv) pairs, in order."""
    runs = out / "runs"
    q = ["-q"] if quiet else []
    steps = ["--steps", str(s.train_steps)] if s.train_steps is not None else []
    models = [str(runs / p) for p in s.presets]
    stages = [(f"train {p}", ["train", "--preset", p, "--data", s.data, *steps, "--seed", str(s.seed),
                              "--device", device, "--out", str(runs / p), "--force", *q]) for p in s.presets]
    stages.append(("evaluate", ["eval", *models, "--iw-samples", str(s.iw_samples), "--limit", str(s.eval_limit),
                                "--seed", str(s.seed), "--device", device, "--out", str(runs / "eval-test.json"), *q]))
    stages.append(("attack", ["attack", *models, "--layers", "all", "--points", str(s.points), "--restarts",
                              str(s.restarts), "--steps", str(s.attack_steps), "--eps", str(s.eps), "--seed",
                              str(s.seed), "--device", device, "--out", str(runs / "attack"), *q]))
    stages.append(("report", ["report", str(runs / "attack"), "--eval", str(runs / "eval-test.json"), "--notes",
                              str(out / "commands.txt"), "--title", "robustvae demo: VDVAE vs DCT-VAE on offline MNIST",
                              "--out", str(out), "--force"]))
    return stages


def outputs(out: Path, s: DemoSettings) -> list[str]:
    """What a demo writes into ``out`` (relative names; ``--force`` replaces these and nothing else)."""
    from robustvae.reporting.make import REPORT_FILES

    names = [*REPORT_FILES, "commands.txt", *(p.name for p in out.glob("gallery-*.png"))]
    return names + [f"runs/{p}" for p in s.presets] + ["runs/eval-test.json", "runs/attack"]


def run_demo(
    out: str | Path = "reports/demo",
    settings: DemoSettings | None = None,
    *,
    device: str = "auto",
    force: bool = False,
    quiet: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train, evaluate, attack and report into ``out``; return the report's summary.

    ``threads``: torch's CPU threads for the demo; by default 1 unless ``OMP_NUM_THREADS``
    is set. The demo's models are so small that extra threads gain nothing, and on a
    2-core machine that is busy with other work two threads made training 100 times
    slower or worse (OpenMP threads waiting for a core).
    """
    import os

    import torch

    if threads is not None and threads < 1:
        raise RobustVAEError(f"--threads must be a positive integer, got {threads}")
    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = 1
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(out, settings, device, force, quiet)
    finally:
        torch.set_num_threads(before)


def _stages(s: DemoSettings, out: Path, device: str, quiet: bool) -> list[Callable[[], Any]]:
    """The API calls behind :func:`commands`, in the same order."""
    from robustvae import api
    from robustvae.config import AttackConfig

    runs = out / "runs"

    def train(preset: str) -> Callable[[], Any]:
        cfg = api.train_config(preset, data=s.data, steps=s.train_steps, seed=s.seed)
        return lambda: api.train(cfg, runs / preset, force=True, device=device, quiet=quiet)

    def evaluate() -> None:
        results = [api.evaluate(runs / p, iw_samples=s.iw_samples, limit=s.eval_limit, seed=s.seed, device=device,
                                quiet=quiet).record for p in s.presets]
        io.write_json(runs / "eval-test.json", {"results": results}, root=out)

    cfg = AttackConfig(layers="all", points=s.points, restarts=s.restarts, steps=s.attack_steps, eps=s.eps, seed=s.seed)
    attack = [str(runs / p) for p in s.presets]
    return [train(p) for p in s.presets] + [
        evaluate,
        lambda: api.attack(attack, cfg, runs / "attack", device=device, quiet=quiet,
                           command=["robustvae", *commands(s, out, device, quiet)[len(s.presets) + 1][1]]),
        lambda: api.report([runs / "attack"], out, evals=[runs / "eval-test.json"], notes=[out / "commands.txt"],
                           title="robustvae demo: VDVAE vs DCT-VAE on offline MNIST", force=True),
    ]


def _run(out: str | Path, settings: DemoSettings | None, device: str, force: bool, quiet: bool) -> dict[str, Any]:
    s = settings or DemoSettings()
    out = Path(out)
    run_dir = RunDir(out)
    run_dir.check_usable()
    if run_dir.entries() and not force:
        raise RobustVAEError(f"{out} is not empty; pass --force to replace an earlier demo there, or use another --out")
    with run_dir.locked():  # refuses symbolic links anywhere in out before anything is deleted or written
        # an earlier demo is set aside (its files name their own paths, so the new one runs in place) and comes back
        # whole if this one fails or is stopped
        with io.set_aside(out, outputs(out, s)):
            return _stages_run(out, s, device, quiet)


def _stages_run(out: Path, s: DemoSettings, device: str, quiet: bool) -> dict[str, Any]:
    console = Console(stderr=True, quiet=quiet)
    stages = commands(s, out, device, quiet)
    shown = {k: "+".join(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(s).items()}
    log = [f"robustvae demo ({', '.join(f'{k}={v}' for k, v in shown.items())}) ran:", ""]
    t_all = time.perf_counter()
    result = None
    for i, ((what, argv), call) in enumerate(zip(stages, _stages(s, out, device, quiet)), 1):
        line = "robustvae " + shlex.join(argv)
        if what == "report":  # the notes shown in the report: every command and its wall time
            log += [line, "", f"train + eval + attack: {time.perf_counter() - t_all:.1f} s wall time"]
            io.write_text(out / "commands.txt", "\n".join(log) + "\n", root=out)
        console.rule(f"[bold]demo {i}/{len(stages)}: {what}")
        console.print(line, highlight=False, soft_wrap=True, markup=False)
        t0 = time.perf_counter()
        result = call()
        log.append(f"{line}\n    # {what}: {time.perf_counter() - t0:.1f} s")
    console.print(f"demo done in {time.perf_counter() - t_all:.1f} s: open {out / 'index.html'}")
    return result.summary
