"""Numbers that the docs quote from the reference report (reports/mnist-cpu) equal the report's summary.json, at the
precision quoted: regenerating the report without updating the docs fails here, naming the quote and the new value."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = ROOT / "reports" / "mnist-cpu" / "summary.json"
NUMBER = r"(\d+(?:\.\d+)?)"


class NotInReport(Exception):
    """The summary holds no such number (a report made before that part existed)."""


def _summary() -> dict:
    return json.loads(SUMMARY.read_text())


def worst(model: str, k: int, attack: str) -> Callable[[dict], float]:
    """Mean over points of the worst case over restarts of ``model`` at k under ``attack`` ("pgd", the paper's PGD on
    skl, or an ensemble version such as "auto-v2")."""
    label = "pgd on skl" if attack == "pgd" else attack

    def get(s: dict) -> float:
        rows = [r for r in s["table"] if r.get("model_label", r["model"]) == model and r["k"] == k]
        if not any(r.get("attack") == label for r in rows):  # a report made before these attacks were side by side
            raise NotInReport(f"{SUMMARY} holds no {label} curves; regenerate it with reports/make_mnist_cpu.sh")
        (row,) = [r for r in rows if r.get("attack") == label]
        return row["worst"]

    return get


def nll(model: str) -> Callable[[dict], float]:
    return lambda s: next(m["nll_nats"] for m in s["models"] if m["label"] == model)


def certify(table: str, column: str, attack: str | None = None) -> Callable[[dict], float]:
    """A column of the report's certify ``table`` for dctvae-mnist at eps 0.1 (``attack``: the row of that attack,
    for the tables that compare attacks with the optimum)."""

    def get(s: dict) -> float:
        rows = [r for r in s["certify"][table] if r["model"] == "dctvae-mnist" and r.get("eps", 0.1) == 0.1]
        if attack is not None:
            if not any(r.get("attack") == attack for r in rows):
                raise NotInReport(f"{SUMMARY} compares no {attack} run with the optimum; regenerate it")
            rows = [r for r in rows if r.get("attack") == attack]
        (row,) = rows
        return row[column]

    return get


def negated(f: Callable[[dict], float]) -> Callable[[dict], float]:
    return lambda s: -f(s)


def carried(model: str, k: int) -> Callable[[dict], float]:
    """The KL of layers 1..k of ``model`` (nats), from the report's layer diagnostics."""
    return lambda s: sum(d["kl_nats"] for d in s["layers"] if d["model"] == model and d["layer"] <= k)


def ratio(a: Callable[[dict], float], b: Callable[[dict], float]) -> Callable[[dict], float]:
    return lambda s: a(s) / b(s)


FINDINGS, CERTIFY, PROTOCOL = "reports/mnist-cpu-findings.md", "docs/certify.md", "docs/protocol.md"
# (file, pattern around the quoted numbers (each NUMBER a group), what each group must equal)
QUOTES: list[tuple[str, str, list[Callable[[dict], float]]]] = [
    (FINDINGS, rf"vdvae-mnist\s+{NUMBER} nats, dctvae-mnist {NUMBER} nats", [nll("vdvae-mnist"), nll("dctvae-mnist")]),
    (
        FINDINGS,
        rf"at k = 1 / 2 is\s+{NUMBER} / {NUMBER} against VDVAE's {NUMBER} / {NUMBER}",
        [
            worst("dctvae-mnist", 1, "pgd"),
            worst("dctvae-mnist", 2, "pgd"),
            worst("vdvae-mnist", 1, "pgd"),
            worst("vdvae-mnist", 2, "pgd"),
        ],
    ),
    (
        FINDINGS,
        rf"falls to {NUMBER} / {NUMBER}\s+\(VDVAE: {NUMBER} / {NUMBER}\)",
        [
            worst("dctvae-mnist", 1, "auto-v2"),
            worst("dctvae-mnist", 2, "auto-v2"),
            worst("vdvae-mnist", 1, "auto-v2"),
            worst("vdvae-mnist", 2, "auto-v2"),
        ],
    ),
    (
        FINDINGS,
        rf"auto-v1 reached {NUMBER} / {NUMBER} at k = 1 / 2, {NUMBER} above",
        [
            worst("dctvae-mnist", 1, "auto-v1"),
            worst("dctvae-mnist", 2, "auto-v1"),
            certify("gradient_gap", "gap", "auto-v1"),
        ],
    ),
    (FINDINGS, rf"its mean is {NUMBER} below the optimal", [negated(certify("gradient_gap", "gap", "auto-v2"))]),
    (FINDINGS, rf"largest gap on a point is \+{NUMBER}", [certify("gradient_gap", "gap_max", "auto-v2")]),
    (FINDINGS, rf"L-inf radius {NUMBER},", [certify("radius", "radius_median")]),
    (FINDINGS, rf"MS-SSIM to {NUMBER} on the same", [certify("table", "msssim_k1_mean")]),
    (FINDINGS, rf"overstated the context's robustness by {NUMBER}", [certify("gradient_gap", "gap", "auto-v1")]),
    (
        CERTIFY,
        rf"radius is\s+{NUMBER} \(10th percentile {NUMBER}, 90th {NUMBER}\)",
        [certify("radius", "radius_median"), certify("radius", "radius_p10"), certify("radius", "radius_p90")],
    ),
    (
        CERTIFY,
        rf"MS-SSIM to {NUMBER} against {NUMBER} for the earlier attack ensemble auto-v1 and {NUMBER} for\s+auto-v2",
        [
            certify("table", "msssim_k1_mean"),
            certify("gradient_gap", "gradient_msssim_k1", "auto-v1"),
            certify("gradient_gap", "gradient_msssim_k1", "auto-v2"),
        ],
    ),
    (
        PROTOCOL,
        rf"marks k = 1\s+\({NUMBER} against {NUMBER} nats, {NUMBER} times\) and not k = 2 \({NUMBER} against "
        rf"{NUMBER} nats, {NUMBER} times\)",
        [
            carried("vdvae-mnist", 1),
            carried("dctvae-mnist", 1),
            ratio(carried("dctvae-mnist", 1), carried("vdvae-mnist", 1)),
            carried("vdvae-mnist", 2),
            carried("dctvae-mnist", 2),
            ratio(carried("dctvae-mnist", 2), carried("vdvae-mnist", 2)),
        ],
    ),
]


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


@pytest.mark.parametrize("i", range(len(QUOTES)), ids=[f"{f}:{p[:30]}" for f, p, _ in QUOTES])
def test_quoted_reference_numbers_equal_the_reference_report(i):
    assert SUMMARY.is_file(), f"{SUMMARY} is missing: the docs quote it (regenerate with reports/make_mnist_cpu.sh)"
    path, pattern, values = QUOTES[i]
    text = re.sub(r"\s+", " ", (ROOT / path).read_text())  # quotes may break across lines
    m = re.search(re.sub(r"\\s\+", " ", pattern), text)
    assert m, f"{path} no longer quotes {pattern!r}: update the quote (or this test with it)"
    s = _summary()
    for quoted, value in zip(m.groups(), values):
        actual = value(s)  # NotInReport: the committed report predates the quoted part
        assert float(quoted) == round(actual, _decimals(quoted)), (
            f"{path} quotes {quoted} where {SUMMARY} has {actual:.6g} (in {m.group(0)!r})"
        )


def test_a_ratio_the_findings_quote():
    """'60 times smaller than the budget': eps 0.1 over the median radius, to one significant digit."""
    assert SUMMARY.is_file(), f"{SUMMARY} is missing: the findings quote it"
    text = re.sub(r"\s+", " ", (ROOT / FINDINGS).read_text())
    quoted = int(re.search(r"(\d+) times smaller than the budget", text).group(1))
    ratio = 0.1 / certify("radius", "radius_median")(_summary())
    assert quoted == float(f"{ratio:.1g}"), (quoted, ratio)


DEFENCES = ROOT / "reports" / "defences-mnist" / "summary.json"


def test_the_defences_table_in_the_docs_is_the_defences_reports():
    """docs/defences.md's measured table (model, k, then five MS-SSIMs) equals reports/defences-mnist at its precision."""
    assert DEFENCES.is_file(), f"{DEFENCES} is missing: docs/defences.md quotes it (reports/make_defences_mnist.sh)"
    rows = {(r["model"], r["k"]): r for r in json.loads(DEFENCES.read_text())["defences"]["table"]}
    text = (ROOT / "docs" / "defences.md").read_text()
    pattern = r"^\| (\w+-mnist) \| (\d) \| " + r" \| ".join([NUMBER] * 5) + r" \|$"
    lines = re.findall(pattern, text, re.M)
    assert len(lines) == 8, "docs/defences.md no longer has the measured table of 2 models x k = 1..4"
    for model, k, *quoted in lines:
        row = rows[(model, int(k))]
        for q, col in zip(quoted, ["undefended", "nonadaptive", "adaptive", "robust", "nonadaptive_no_attack"]):
            assert float(q) == round(row[col], _decimals(q)), (model, k, col, q, row[col])
