"""``robustvae demo``: the whole pipeline, offline, on one CPU thread.

Trains a small VDVAE and a small DCT-VAE on real MNIST digits that ship with a PyPI
package (``mnist-offline``), evaluates both on the same test images (importance-sampled
NLL, KL and active units per layer), attacks the top k = 1 .. L layers of each with
restarts (the ensemble ``auto``, auto-v2: the default attack), and writes the full report. Each stage calls the Python API
(:mod:`robustvae.api`) and is echoed as the CLI command a user would type for it
(``train``, ``eval``, ``attack``, ``report``); the commands and their wall times go
into the report's notes (``commands.txt``).

Layout of ``out``: ``demo.json`` (the settings and the stages done, for ``resume``),
``runs/<preset>/`` (trained models), ``runs/eval-test.json``, ``runs/attack/`` (records),
and the report itself at the top (``index.html``, ...). An ``out`` that is not empty is
refused unless ``force``, which replaces only what the demo writes (:func:`outputs`); the
earlier demo is set aside and comes back whole if the new one fails or is stopped.

An interrupted demo (Ctrl-C) continues with ``resume``: finished stages are kept, a
model's training continues from its ``last.pt``, the attack from its records (finished
units are not run again), an interrupted evaluation runs again, and the report is made
again. The interrupt message names the command that continues it.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from robustvae import io
from robustvae.errors import Interrupted, RobustVAEError

DEMO_PRESETS = ("vdvae-mnist-demo", "dctvae-mnist-demo")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the defaults take 6 minutes of CPU time on one thread (README: The demo), tests shrink them."""

    presets: tuple[str, ...] = DEMO_PRESETS
    data: str = "mnist-offline"
    train_steps: int | None = None  # None: the presets' own step counts
    iw_samples: int = 100
    eval_limit: int = 200
    points: int = 20  # 20 points (the protocol has 50: the auto-v2 ensemble's solver takes about 2 s per DCT-VAE
    # point, and the demo keeps its time budget); the protocol's restarts and steps (Appendix H)
    restarts: int = 5
    attack_steps: int = 50
    eps: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("iw_samples", "eval_limit", "points", "restarts", "attack_steps"):
            if getattr(self, name) < 1:
                raise RobustVAEError(
                    f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}"
                )
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
    stages = [
        (
            f"train {p}",
            [
                "train",
                "--preset",
                p,
                "--data",
                s.data,
                *steps,
                "--seed",
                str(s.seed),
                "--device",
                device,
                "--out",
                str(runs / p),
                "--force",
                *q,
            ],
        )
        for p in s.presets
    ]
    stages.append(
        (
            "evaluate",
            [
                "eval",
                *models,
                "--iw-samples",
                str(s.iw_samples),
                "--limit",
                str(s.eval_limit),
                "--seed",
                str(s.seed),
                "--device",
                device,
                "--out",
                str(runs / "eval-test.json"),
                *q,
            ],
        )
    )
    stages.append(
        (
            "attack",
            [
                "attack",
                *models,
                "--layers",
                "all",
                "--points",
                str(s.points),
                "--restarts",
                str(s.restarts),
                "--steps",
                str(s.attack_steps),
                "--eps",
                str(s.eps),
                "--seed",
                str(s.seed),
                "--device",
                device,
                "--out",
                str(runs / "attack"),
                *q,
            ],
        )
    )
    stages.append(
        (
            "report",
            [
                "report",
                str(runs / "attack"),
                "--eval",
                str(runs / "eval-test.json"),
                "--notes",
                str(out / "commands.txt"),
                "--title",
                "robustvae demo: VDVAE vs DCT-VAE on offline MNIST",
                "--out",
                str(out),
                "--force",
            ],
        )
    )
    return stages


STATE = "demo.json"  # the demo's settings and the stages it finished, in ``out``
STATE_FORMAT = "robustvae-demo/1"


def outputs(out: Path, s: DemoSettings) -> list[str]:
    """What a demo writes into ``out`` (relative names; ``--force`` replaces these and nothing else)."""
    from robustvae.reporting.make import REPORT_FILES

    names = [*REPORT_FILES, "commands.txt", STATE, *(p.name for p in out.glob("gallery-*.png"))]
    return names + [f"runs/{p}" for p in s.presets] + ["runs/eval-test.json", "runs/attack"]


def run_demo(
    out: str | Path = "reports/demo",
    settings: DemoSettings | Mapping[str, Any] | None = None,
    *,
    device: str = "auto",
    force: bool = False,
    resume: bool = False,
    quiet: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train, evaluate, attack and report into ``out``; return the report's summary.

    ``resume`` continues an interrupted demo in ``out`` with its saved settings
    (``settings``, when given, must equal them; a mapping of some fields, e.g. the
    options given on the command line, must agree with them). ``threads``: torch's CPU threads for
    the demo; by default 1 unless ``OMP_NUM_THREADS`` is set
    (:func:`robustvae.device.cpu_threads`, whose ``THREADS_REASON`` says why).
    """
    from robustvae.device import cpu_threads

    with cpu_threads(threads):
        return _run(out, settings, device, force, resume, quiet)


def _stages(s: DemoSettings, out: Path, device: str, quiet: bool) -> list[Callable[[], Any]]:
    """The API calls behind :func:`commands`, in the same order."""
    from robustvae import api
    from robustvae.config import AttackConfig

    runs = out / "runs"

    def train(preset: str) -> Callable[[], Any]:
        cfg = api.train_config(preset, data=s.data, steps=s.train_steps, seed=s.seed)

        def call() -> Any:
            if (runs / preset / "last.pt").is_file():  # an interrupted (or finished) training of this demo
                return api.train(None, runs / preset, resume=True, device=device, quiet=quiet)
            return api.train(cfg, runs / preset, force=True, device=device, quiet=quiet)

        return call

    def evaluate() -> None:
        results = [
            api.evaluate(
                runs / p, iw_samples=s.iw_samples, limit=s.eval_limit, seed=s.seed, device=device, quiet=quiet
            ).record
            for p in s.presets
        ]
        io.write_json(runs / "eval-test.json", {"results": results}, root=out)

    cfg = AttackConfig(layers="all", points=s.points, restarts=s.restarts, steps=s.attack_steps, eps=s.eps, seed=s.seed)
    attack = [str(runs / p) for p in s.presets]
    return [train(p) for p in s.presets] + [
        evaluate,
        lambda: api.attack(
            attack,
            cfg,
            runs / "attack",
            device=device,
            quiet=quiet,
            command=["robustvae", *commands(s, out, device, quiet)[len(s.presets) + 1][1]],
        ),
        lambda: api.report(
            [runs / "attack"],
            out,
            evals=[runs / "eval-test.json"],
            notes=[out / "commands.txt"],
            title="robustvae demo: VDVAE vs DCT-VAE on offline MNIST",
            force=True,
        ),
    ]


def _run(
    out: str | Path,
    settings: DemoSettings | Mapping[str, Any] | None,
    device: str,
    force: bool,
    resume: bool,
    quiet: bool,
) -> dict[str, Any]:
    from robustvae import api

    out = Path(out)
    if resume and force:
        raise RobustVAEError("--resume and --force contradict each other; pick one")
    # refuses a file, an unwritable place and symbolic links in out before anything is deleted or written
    with api.claim_output(out, force=force or resume, what="demo", resumable=True):
        if resume:
            state = _read_state(out)
            s = _saved_settings(out, state, settings)
            return _stages_run(out, s, device, quiet, state)
        s = settings if isinstance(settings, DemoSettings) else DemoSettings(**(settings or {}))
        state = {"format": STATE_FORMAT, "settings": dataclasses.asdict(s), "stages": {}}
        names = outputs(out, s)
        earlier = any((out / n).exists() for n in names)
        try:
            # an earlier demo is set aside (its files name their own paths, so the new one runs in place) and comes
            # back whole if this one fails or is stopped
            with io.set_aside(out, names):
                _write_state(out, state)
                return _stages_run(out, s, device, quiet, state)
        except Interrupted as e:
            if not earlier:
                raise
            raise Interrupted(
                str(e).split("; continue with")[0] + f"; the earlier demo in {out} is back as it was "
                f"(--force replaces it only when the new demo finishes)"
            ) from None


def _read_state(out: Path) -> dict[str, Any]:
    """``demo.json`` of an earlier demo in ``out``; a one-line error when there is none or it does not read."""
    import json

    path = out / STATE
    if not path.is_file():
        raise RobustVAEError(f"nothing to resume in {out} (no {STATE}: no demo was started there); drop --resume")
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        state = None
    if (
        not isinstance(state, dict)
        or state.get("format") != STATE_FORMAT
        or not isinstance(state.get("settings"), dict)
        or not isinstance(state.get("stages"), dict)
    ):
        raise RobustVAEError(f"{path} is not a demo state file robustvae wrote; start afresh with --force")
    return state


def _saved_settings(out: Path, state: dict[str, Any], given: DemoSettings | Mapping[str, Any] | None) -> DemoSettings:
    """The settings an interrupted demo ran with; settings given with --resume must agree with them."""
    saved = dict(state["settings"])
    saved["presets"] = tuple(saved.get("presets", ()))
    try:
        s = DemoSettings(**saved)
    except TypeError:
        raise RobustVAEError(
            f"{out / STATE} holds settings of another robustvae version; start afresh with --force"
        ) from None
    wanted = dataclasses.asdict(given) if isinstance(given, DemoSettings) else dict(given or {})
    for field, value in wanted.items():
        value = tuple(value) if isinstance(value, list) else value
        if field not in saved or getattr(s, field) != value:
            raise RobustVAEError(
                f"--resume continues the demo in {out} with its saved settings ({field} "
                f"{getattr(s, field, None)!r} there, {value!r} now); drop the option, or start afresh with --force"
            )
    return s


def _write_state(out: Path, state: dict[str, Any]) -> None:
    io.write_json(out / STATE, state, root=out)


def _stages_run(out: Path, s: DemoSettings, device: str, quiet: bool, state: dict[str, Any]) -> dict[str, Any]:
    """Run the stages not finished yet (every stage when starting afresh), always the report last."""
    console = Console(stderr=True, quiet=quiet)
    stages = commands(s, out, device, quiet)
    shown = {k: "+".join(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(s).items()}
    log = [f"robustvae demo ({', '.join(f'{k}={v}' for k, v in shown.items())}) ran:", ""]
    done = state["stages"]
    t_all = time.perf_counter()
    result = None
    for i, ((what, argv), call) in enumerate(zip(stages, _stages(s, out, device, quiet)), 1):
        line = "robustvae " + shlex.join(argv)
        if what == "report":  # the notes shown in the report: every command and its wall time
            total = sum(d.get("seconds", 0.0) for d in done.values())
            log += [line, "", f"train + eval + attack: {total:.1f} s wall time"]
            io.write_text(out / "commands.txt", "\n".join(log) + "\n", root=out)
        entry = done.get(what, {})
        if entry.get("status") == "done" and what != "report":
            console.rule(f"[bold]demo {i}/{len(stages)}: {what} (done before; kept)")
            log.append(_log_line(line, what, entry))
            continue
        console.rule(f"[bold]demo {i}/{len(stages)}: {what}" + (" (resumed)" if entry else ""))
        console.print(line, highlight=False, soft_wrap=True, markup=False)
        t0 = time.perf_counter()
        try:
            result = call()
        except (KeyboardInterrupt, Interrupted) as e:
            entry.update(
                status="interrupted",
                seconds=entry.get("seconds", 0.0) + time.perf_counter() - t0,
                parts=entry.get("parts", 0) + 1,
            )
            done[what] = entry
            _write_state(out, state)
            raise Interrupted(_interrupted(out, what, i, len(stages), e)) from None
        entry.update(
            status="done", seconds=entry.get("seconds", 0.0) + time.perf_counter() - t0, parts=entry.get("parts", 0) + 1
        )
        done[what] = entry
        _write_state(out, state)
        log.append(_log_line(line, what, entry))
    console.print(f"demo done in {time.perf_counter() - t_all:.1f} s: open {out / 'index.html'}")
    return result.summary


def _log_line(line: str, what: str, entry: dict[str, Any]) -> str:
    """A stage's command and wall time for ``commands.txt`` (summed over the runs of an interrupted stage)."""
    parts = entry.get("parts", 1)
    resumed = f", in {parts} parts (interrupted, continued with --resume)" if parts > 1 else ""
    return f"{line}\n    # {what}: {entry.get('seconds', 0.0):.1f} s{resumed}"


def _interrupted(out: Path, what: str, i: int, n: int, e: BaseException) -> str:
    """The message of an interrupted demo: where it stopped, what is kept, the command that continues it."""
    inner = str(e).removesuffix("; continue with --resume") if isinstance(e, Interrupted) else ""
    kept = {"attack": "the records of finished units are kept", "evaluate": "the evaluation runs again"}.get(
        what, "" if inner else "finished stages are kept"
    )
    detail = "; ".join(x for x in (inner, kept) if x)
    return (
        f"demo interrupted during stage {i}/{n} ({what}){': ' + detail if detail else ''}; continue with: "
        f"robustvae demo --out {shlex.quote(str(out))} --resume"
    )
