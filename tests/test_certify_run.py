"""`robustvae certify` end to end, its records, resume, errors and report section; the codec's exposed quantiser;
the per-model API names; the authors' (kuzina) codec through the same analysis."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from robustvae import zoo
from robustvae.certify import (
    certified_radius,
    coefficient_ranges,
    context_radius,
    context_ranges,
    optimal_context_attack,
)
from robustvae.cli import main
from robustvae.config import DataConfig
from robustvae.data import eval_images, load_dataset
from robustvae.models.context import DCTContext, DownsampleContext
from robustvae.models.kuzina.context import KuzinaDCTContext
from robustvae.registry import build_model, get_preset
from test_cli import _one_line_error, _run


_DATA: dict[str, object] = {}


def _fitted(preset: str, data: str):
    """An untrained model of a preset whose context scale is fitted on the training split of ``data``."""
    if data not in _DATA:
        _DATA[data] = load_dataset(DataConfig(data))
    ds = _DATA[data]
    torch.manual_seed(0)
    cfg = get_preset(preset)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name=data))
    model = build_model(cfg.model).eval()
    model.fit_data(ds.train.images)
    return cfg, model, eval_images(ds, "test", True)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny DCT-VAE (codec fitted on synthetic digits, which load fast) and a tiny VDVAE as checkpoint files."""
    d = tmp_path_factory.mktemp("ckpt")
    cfg, model, _ = _fitted("dctvae-mnist-tiny", "synthetic")
    zoo.atomic_save(zoo.make_checkpoint(cfg, model), d / "dct.pt")
    vcfg = get_preset("vdvae-mnist-tiny")
    zoo.atomic_save(zoo.make_checkpoint(vcfg, build_model(vcfg.model)), d / "vd.pt")
    return d / "dct.pt", d / "vd.pt"


@pytest.fixture(scope="module")
def kuzina():
    _, model, x = _fitted("kuzina-dctvae-mnist-tiny", "synthetic")
    return model, x[:6]


def _records(path):
    return [json.loads(line) for line in (path / "records.jsonl").read_text().splitlines()]


EXACT = ("unit", "model", "point", "test_index", "eps", "radius", "certified", "changeable", "reachable_levels")


def _stable(rows):
    """The fields that do not depend on the solver's time limit (a MILP cut short may end elsewhere)."""
    return [{k: r[k] for k in EXACT} for r in rows]


# --------------------------------------------------------------------------- the command


def test_certify_cli_records_resume_and_report(checkpoints, tmp_path, capsys):
    dct, _ = checkpoints
    out = tmp_path / "cert"
    argv = [
        "certify",
        str(dct),
        "--eps",
        "0.0005,0.05",
        "--points",
        "2",
        "--time-limit",
        "1",
        "--device",
        "cpu",
        "-q",
        "--out",
        str(out),
    ]
    code, stdout, err = _run(capsys, argv)
    assert code == 0, err
    assert "| dctvae-mnist-tiny" in stdout and "certified" in stdout and "4 records" in stdout
    assert "certify: 2/2 (100%)" in (out / "log.txt").read_text()  # progress lines beside the records, also with -q
    rows = _records(out)
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "certify" and info["status"] == "complete" and info["settings"]["certify"]["points"] == 2
    assert [(r["point"], r["eps"]) for r in rows] == [(p, e) for p in range(2) for e in (0.0005, 0.05)]
    # the records agree with the library on the same points (the attack sweep's selection)
    from robustvae.experiments.attack import select_points
    from robustvae.experiments.models import load_models

    (lm,) = load_models([str(dct)], torch.device("cpu"))
    pts = select_points(lm, info_cfg(info), None)
    x = pts.images[:2]
    radius = certified_radius(lm.model, x, "linf")
    for r in rows:
        assert r["test_index"] == int(pts.indices[r["point"]])
        assert r["radius"] == pytest.approx(float(radius[r["point"]]), rel=1e-12)
        assert r["certified"] == (r["eps"] < r["radius"])
        if r["certified"]:  # a certificate: the optimal attack changes nothing, the k = 1 reconstruction is identical
            assert r["optimal_decoded_l2"] == 0 and r["k1_identical"] and r["max_joint_changes"] == 0
            assert r["msssim_k1"] == pytest.approx(1.0, abs=1e-5)  # float32 MS-SSIM of identical images
        else:
            assert r["max_joint_changes"] >= r["optimal_changed"] >= 1 and not r["k1_identical"]
            assert r["delta_linf"] <= r["eps"] and r["changeable"] >= r["max_joint_changes"]
    # resume: a torn tail and a lost unit are redone, and the result equals the uninterrupted run
    full = _stable(rows)
    lines = (out / "records.jsonl").read_text().splitlines()
    (out / "records.jsonl").write_text("\n".join(lines[:1]) + "\n" + lines[1][:20])  # point 0 cut short
    code, _, err = _run(capsys, argv)
    assert code == 0, err
    assert _stable(_records(out)) == full
    # other settings in the same --out are refused; --force starts over
    code, _, err = _run(capsys, argv[:-2] + ["--points", "1", "--out", str(out)])
    _one_line_error(code, err, "holds a run with other settings")
    other = tmp_path / "attack-run"  # another experiment's directory is refused, even with --force
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"settings": {}, "kind": "compress"}))
    code, _, err = _run(capsys, argv[:-2] + ["--out", str(other), "--force"])
    _one_line_error(code, err, "holds a compress run")
    assert (other / "run.json").exists()
    # the report: a certification section, alone
    code, _, err = _run(capsys, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert code == 0, err
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    html = (tmp_path / "rep" / "index.html").read_text()
    assert 'id="certify"' in html and "certificate, not a measurement" in html
    assert summary["certify"]["radius"][0]["points"] == 2 and (tmp_path / "rep" / "certify.png").stat().st_size > 0
    fractions = [t["certified"] for t in summary["certify"]["table"]]
    assert fractions == [np.mean([r["certified"] for r in rows if r["eps"] == e]) for e in (0.0005, 0.05)]


def info_cfg(info):
    from robustvae.config import CertifyConfig

    c = info["settings"]["certify"]
    return CertifyConfig(**{**c, "eps": tuple(c["eps"])})


@pytest.mark.slow
def test_report_gap_to_a_gradient_attack_on_the_same_points(checkpoints, tmp_path, capsys):
    dct, _ = checkpoints
    cert, att = tmp_path / "cert", tmp_path / "att"
    assert (
        main(
            [
                "certify",
                str(dct),
                "--eps",
                "0.1",
                "--points",
                "2",
                "--time-limit",
                "2",
                "--device",
                "cpu",
                "-q",
                "--out",
                str(cert),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "attack",
                str(dct),
                "--attack",
                "pgd",
                "--eps",
                "0.1",
                "--points",
                "2",
                "--restarts",
                "1",
                "--steps",
                "3",
                "--device",
                "cpu",
                "-q",
                "--out",
                str(att),
            ]
        )
        == 0
    )  # the paper's PGD (the default is the ensemble)
    capsys.readouterr()
    code, _, err = _run(capsys, ["report", str(att), str(cert), "--out", str(tmp_path / "rep")])
    assert code == 0, err
    (gap,) = json.loads((tmp_path / "rep" / "summary.json").read_text())["certify"]["gradient_gap"]
    crow = [json.loads(s) for s in (cert / "records.jsonl").read_text().splitlines()]
    arow = [json.loads(s) for s in (att / "records.jsonl").read_text().splitlines() if '"kind": "attack"' in s]
    assert gap["points"] == 2
    assert gap["optimal_msssim_k1"] == pytest.approx(np.mean([r["msssim_k1"] for r in crow]))
    assert gap["gradient_msssim_k1"] == pytest.approx(np.mean([r["msssim"] for r in arow]))
    assert "Figure 10" in (tmp_path / "rep" / "index.html").read_text()  # the attack part is still there
    # the ensemble beside it: per-point gaps, the side-by-side table and the check, recomputed from the records
    ens = tmp_path / "ens"
    assert (
        main(
            [
                "attack",
                str(dct),
                "--attack",
                "auto",
                "--eps",
                "0.1",
                "--points",
                "2",
                "--restarts",
                "1",
                "--steps",
                "3",
                "--device",
                "cpu",
                "-q",
                "--out",
                str(ens),
            ]
        )
        == 0
    )
    capsys.readouterr()
    code, _, err = _run(capsys, ["report", str(att), str(ens), str(cert), "--out", str(tmp_path / "rep2")])
    assert code == 0, err
    summary = json.loads((tmp_path / "rep2" / "summary.json").read_text())
    version = json.loads((ens / "run.json").read_text())["ensemble"]["version"]
    opt = {r["test_index"]: r["msssim_k1"] for r in crow}
    worst: dict[int, float] = {}
    for s in (ens / "records.jsonl").read_text().splitlines():
        r = json.loads(s)
        if r["kind"] == "attack" and r["k"] == 1:
            worst[r["test_index"]] = min(worst.get(r["test_index"], 1.0), r["msssim"])
    pts = [p for p in summary["certify"]["optimality_gap"]["points"] if p["attack"] == version]
    assert {p["test_index"]: p["gap"] for p in pts} == pytest.approx({t: worst[t] - opt[t] for t in opt})
    (side,) = summary["certify"]["optimality_gap"]["table"]
    assert side[f"{version}: gap mean"] == pytest.approx(np.mean([worst[t] - opt[t] for t in opt]))
    assert "pgd on skl: gap mean" in side
    (check,) = [c for c in summary["checks"] if c["check"] == "ensemble reaches the optimum"]
    assert check["value"] == pytest.approx(np.mean(list(worst.values())) - np.mean(list(opt.values())))
    assert check["passed"] == (check["value"] <= 0.02) and version in check["scope"]
    assert (tmp_path / "rep2" / "optimality-gap.png").exists() and "Optimality gap" in (
        tmp_path / "rep2" / "index.html"
    ).read_text()


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--eps", "0.1,abc"], "--eps expects comma-separated budgets"),
        (["--eps", "-0.1"], "every eps must be finite and >= 0"),
        (["--eps", ","], "eps needs at least one budget"),
        (["--norm", "l3"], "unknown norm 'l3'"),
        (["--points", "0"], "points must be at least 1"),
        (["--time-limit", "0"], "time_limit must be positive"),
    ],
)
def test_bad_certify_input_is_one_line_and_exit_2(checkpoints, extra, fragment, tmp_path, capsys):
    code, _, err = _run(capsys, ["certify", str(checkpoints[0]), "--out", str(tmp_path / "o"), *extra])
    _one_line_error(code, err, fragment)
    assert not (tmp_path / "o").exists()


def test_a_model_without_a_context_layer_is_a_one_line_error(checkpoints, tmp_path, capsys):
    code, _, err = _run(capsys, ["certify", str(checkpoints[1]), "--out", str(tmp_path / "o"), "--device", "cpu"])
    _one_line_error(code, err, "has no quantised context layer")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- the codec's quantiser, the API names


@pytest.mark.parametrize("cls", [DCTContext, DownsampleContext, KuzinaDCTContext])
@pytest.mark.parametrize("bits", [1, 2, 3])
def test_exposed_boundaries_reproduce_the_codecs_levels(cls, bits):
    codec = cls(1, 8, 3, bits)
    gen = torch.Generator().manual_seed(bits)
    u = torch.rand(4000, generator=gen) * 2.4 - 1.2
    edges = codec.boundaries
    assert len(edges) == codec.levels - 1 and bool((edges.diff() > 0).all())
    u = u[(u.double()[:, None] - edges[None]).abs().min(1).values > 1e-6]  # away from the edges (either way there)
    by_hand = torch.searchsorted(edges, u.double().clamp(-1, 1))
    assert torch.equal(codec.level_of(u.clamp(-1, 1)), by_hand)
    q = codec.quantise(u.clamp(-1, 1))  # the codec's own deterministic output
    assert torch.equal(q, codec.level_values[by_hand].float())


def test_api_names_agree_with_the_library(kuzina):
    cfg, model, x = _fitted("dctvae-mnist-tiny", "synthetic")
    x = x[:4]
    r1, r2 = context_ranges(model, x, 0.01, "l2"), coefficient_ranges(model.codec, x, 0.01, "l2")
    assert torch.equal(r1.lo, r2.lo) and torch.equal(r1.hi, r2.hi) and torch.equal(r1.certified, r2.certified)
    assert torch.equal(context_radius(model, x, "linf"), certified_radius(model.codec, x, "linf"))
    # the scale and boundaries reproduce the clean levels by hand
    v = model.codec.coefficients(x.double()) / model.codec.scale.double()
    assert torch.equal(torch.searchsorted(model.codec.boundaries, v.clamp(-1, 1).contiguous()), r1.clean_level)
    kmodel, _ = kuzina
    kmodel.dither = True
    with pytest.raises(ValueError, match="dithered"):
        context_radius(kmodel, x, "linf")
    kmodel.dither = False


# --------------------------------------------------------------------------- the authors' codec


def test_kuzina_codec_ranges_radius_and_attack_through_the_same_contract(kuzina):
    model, x = kuzina
    codec = model.codec
    eps = 0.02
    r = coefficient_ranges(model, x, eps, "linf")
    # the extremes are attained at the box vertex that follows the signs of the weights, computed by the codec itself
    from robustvae.certify.affine import affine_context

    w = affine_context(codec).weights[0].numpy()  # (K, P)
    xb = x.double().flatten(1).numpy()
    for b in range(x.shape[0]):
        up = np.where(w > 0, np.minimum(eps, 1 - xb[b]), np.maximum(-eps, -xb[b]))  # (K, P)
        imgs = torch.from_numpy(xb[b][None] + up).view(-1, 1, 28, 28)
        hi = (codec.coefficients(imgs).reshape(len(up), -1).diagonal() / codec.scale.double().flatten()).numpy()
        assert np.allclose(hi, r.hi[b].flatten().numpy(), rtol=1e-10, atol=1e-10)
    # random vertices of the ball never leave the reachable levels, as the codec computes them in float32
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        d = (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1) * eps
        xa = (x + d).clamp(0, 1)
        lv = codec.level_of(codec.normalise(xa)).view_as(r.reach_lo)
        assert bool(((lv >= r.reach_lo) & (lv <= r.reach_hi)).all())
    # just below the radius every point is certified; the optimal attack's levels are the codec's own
    rad = certified_radius(model, x, "linf")
    assert bool(coefficient_ranges(model, x, float(rad.min()) * (1 - 1e-6), "linf").point_certified.all())
    res = optimal_context_attack(model, x[:2], 0.05, "linf", "count", time_limit=2)
    assert torch.equal(codec.level_of(codec.normalise(res.x_adv)).view_as(res.levels), res.levels)
    assert float((res.x_adv.double() - x[:2].double()).abs().max()) <= 0.05 and int(res.changed.min()) >= 1
    # the authors' coefficients switch map when every pixel reaches 1/2: no certificate at or beyond that budget
    assert torch.allclose(codec.affine_radius(x, "linf"), torch.full((x.shape[0],), 0.5, dtype=torch.float64))
    assert not bool(coefficient_ranges(model, x, 0.5, "linf").certified.any())


def test_shards_together_equal_the_whole_run(checkpoints, tmp_path, capsys):
    base = [
        "certify",
        str(checkpoints[0]),
        "--eps",
        "0.001,0.01",
        "--points",
        "3",
        "--no-optimal",
        "--device",
        "cpu",
        "-q",
    ]
    assert main([*base, "--out", str(tmp_path / "all")]) == 0
    for i in (1, 2):
        assert main([*base, "--shard", f"{i}/2", "--out", str(tmp_path / "sh")]) == 0
    capsys.readouterr()
    whole = _stable(_records(tmp_path / "all"))
    parts = [
        json.loads(s)
        for i in (1, 2)
        for s in (tmp_path / "sh" / f"records-shard-{i}-of-2.jsonl").read_text().splitlines()
    ]
    assert sorted(_stable(parts), key=lambda r: (r["point"], r["eps"])) == whole
    assert "msssim_k1" not in whole[0] and "msssim_k1" not in parts[0]  # --no-optimal: no attack fields
    from robustvae.reporting.certify import read_certify_records

    assert len(read_certify_records([tmp_path / "sh"])) == len(whole)  # the report reads the shards together
