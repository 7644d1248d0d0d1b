"""A user's own model (``module.path:factory``) and the contract check: the worked example (examples/own_model.py)
against independent references, every contract problem named, every factory failure one line, and the example
through load, eval, attack, certify and compress like a preset."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.distributions as D

import robustvae
from robustvae.errors import RobustVAEError
from robustvae.models import ContractError, check_contract, contract_problems
from robustvae.registry import build_model, get_preset
from robustvae.zoo import factory

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # examples/ is a folder of the repository, not of the package

from examples.own_model import LadderVAE, make, make_with_context  # noqa: E402


@pytest.fixture
def in_repo(monkeypatch):
    """Commands run from the repository's root, where ``examples.own_model`` imports."""
    monkeypatch.chdir(REPO)


def _binary(gen, n=3):
    return torch.rand(n, 1, 28, 28, generator=gen).round()


# --------------------------------------------------------------------------- the contract check


@pytest.mark.parametrize("preset", ["vdvae-mnist-tiny", "dctvae-mnist-tiny", "kuzina-dctvae-mnist-tiny"])
def test_robustvae_s_own_families_satisfy_the_contract(preset):
    assert contract_problems(build_model(get_preset(preset).model)) == []


def test_the_worked_example_satisfies_the_contract():
    for net in (make(), make_with_context(), LadderVAE()):
        assert contract_problems(net) == [] and check_contract(net) is net


class _Broken(LadderVAE):
    """The example with one fault switched on at a time."""

    fault = ""

    def encode(self, x, k=None, sample=False, noise=None):
        if self.fault == "encode raises":
            raise ValueError("boom")
        qs = super().encode(x, k, sample, noise)
        if self.fault == "encode shape":
            qs[0].mean = qs[0].mean.flatten(1)
        if self.fault == "detached":
            qs = [q.detach() for q in qs]
        return qs

    def reconstruct(self, x, k=None, temperature=0.1, noise=None, posterior_sample=False):
        if self.fault == "fresh noise":
            noise = self.make_noise(x.shape[0])
        r = super().reconstruct(x, k, temperature, noise, posterior_sample)
        return r * 4 - 2 if self.fault == "logits" else r


@pytest.mark.parametrize(
    "fault, fragment",
    [
        ("encode raises", "encode(x) raised ValueError: boom"),
        ("encode shape", "encode(x)[0].mean has shape (1, 98), expected (1, 2, 7, 7)"),
        ("detached", "encode(x, k=1)[0] does not depend differentiably on x"),
        (
            "fresh noise",
            "reconstruct(x, k=1, temperature=0.1, noise=make_noise(1)) differs between two calls with the same noise",
        ),
        ("logits", "reconstruct(x, k=0, temperature=0.1, noise=make_noise(1)) leaves [0, 1]"),
    ],
)
def test_the_behavioural_probe_names_the_fault(fault, fragment):
    torch.manual_seed(0)
    net = _Broken().eval()
    net.fault = fault
    problems = contract_problems(net)
    assert any(fragment in p for p in problems), problems
    with pytest.raises(ContractError) as e:
        check_contract(net, "my model")
    msg = str(e.value)
    assert msg.startswith("my model does not satisfy robustvae's model contract") and "\n" not in msg
    assert fragment in msg and msg.endswith("see docs/own-model.md")
    assert not net.training  # the probe leaves the mode as it found it


def test_missing_attributes_methods_and_sizes_are_each_named():
    net = LadderVAE()
    net.elbo = None  # an instance attribute shadows the method
    net.layers = [net.layers[0], "layer two"]
    del net.cfg.binary
    problems = contract_problems(net)
    assert "method 'elbo' is missing" in problems
    assert "layers[1] is a str, not a robustvae.models.LayerInfo" in problems
    assert "cfg.binary is missing (a bool is needed)" in problems

    class Miscounted(LadderVAE):
        num_pixels = 3
        iw_shared_noise = -1

    problems = contract_problems(Miscounted())
    assert "num_pixels is 3, expected 784" in problems and any("iw_shared_noise" in p for p in problems)
    assert contract_problems(torch.nn.Linear(2, 2))[:2] == [
        "attribute 'arch' (a name for the architecture, a str) is missing",
        "attribute 'cfg' is missing (it needs image_channels, image_size, likelihood and binary)",
    ]
    assert contract_problems("model") == ["it is a str, not a torch.nn.Module"]


# --------------------------------------------------------------------------- the worked example, checked


def _normal(g):
    return D.Normal(g.mean, g.std)


def test_the_example_s_kls_and_context_term_match_torch_distributions(gen):
    net = make_with_context()
    x = _binary(gen)
    torch.manual_seed(1)
    kl = net.elbo(x).kl
    torch.manual_seed(1)  # the same posterior draws, through the same top-down pass
    ctx = net.codec(x).value
    _, qs, ps, _ = net._ladder(x, ctx, 3, 2, None, posterior_sample=True)
    ref = [D.kl_divergence(_normal(q), _normal(p)).flatten(1).sum(1) for q, p in zip(qs, ps)]
    levels = net.codec.levels
    idx = ((ctx + 1) * (levels - 1) / 2).round().long()
    assert torch.equal(net.codec.level_values.float()[idx], ctx)  # the context lies on the quantiser's levels
    prior = D.Categorical(logits=net.ctx_logits.expand(3, -1, -1, -1, -1))
    ctx_ref = -prior.log_prob(idx).flatten(1).sum(1)
    # float32 sums of 98 .. 392 terms of size ~1: tolerance a few hundred units in the last place of the total
    torch.testing.assert_close(kl, torch.stack([ctx_ref, *ref], 1), rtol=1e-5, atol=1e-4)


def test_the_example_s_importance_weights_match_a_from_scratch_computation(gen):
    net = make()
    x = _binary(gen, 2)
    K = 3
    noise = [torch.randn(K, 2, *info.shape, generator=gen) for info in net.layers]
    logw = net.log_importance_weights(x, K, noise=noise)
    for s in range(K):  # each sample on its own: z from q driven by its noise, then log p(x, z) - log q(z | x)
        eps = [n[s] for n in noise]
        e14 = net.enc14(x * 2 - 1)
        e7 = net.enc7(e14)
        c7 = torch.zeros(2, net.hidden, 7, 7)
        q1 = D.Normal(*_params(net.q1(torch.cat([c7, e7], 1))))
        p1 = D.Normal(*_params(net.p1(c7)))
        z1 = q1.loc + q1.scale * eps[0]
        s14 = net.up(net.dec7(torch.cat([z1, c7], 1)))
        q2 = D.Normal(*_params(net.q2(torch.cat([s14, e14], 1))))
        p2 = D.Normal(*_params(net.p2(s14)))
        z2 = q2.loc + q2.scale * eps[1]
        px = D.Bernoulli(logits=net.out(s14 + net.z2_proj(z2)))
        ref = (
            px.log_prob(x).flatten(1).sum(1)
            + (p1.log_prob(z1) - q1.log_prob(z1)).flatten(1).sum(1)
            + (p2.log_prob(z2) - q2.log_prob(z2)).flatten(1).sum(1)
        )
        torch.testing.assert_close(logw[s], ref, rtol=1e-5, atol=1e-3)  # |log w| ~ 100 in float32


def _params(t):
    mean, logvar = t.chunk(2, 1)
    logvar = 6 * torch.tanh(logvar / 6)
    return mean, (0.5 * logvar).exp()


def test_the_example_s_elbo_is_the_mean_of_its_importance_weights(gen):
    """E_q[log w] = -(-ELBO): the analytic-KL ELBO and the Monte Carlo log weights estimate the same number."""
    net = make()
    x = _binary(gen, 1)
    with torch.no_grad():
        logw = net.log_importance_weights(x, 2000, noise=[n.unsqueeze(1) for n in net.iw_noise(2000, gen)])[:, 0]
        torch.manual_seed(2)
        nelbo = net.elbo(x.expand(200, -1, -1, -1)).nelbo  # 200 independent draws of the same image
    logw, nelbo = logw.double(), nelbo.double()
    # both are sample means; 5 standard errors of their difference (a seeded test: it fails with prob. < 1e-6)
    se = math.sqrt(logw.var().item() / len(logw) + nelbo.var().item() / len(nelbo))
    assert abs(logw.mean().item() + nelbo.mean().item()) < 5 * se


def test_the_example_s_context_prior_samples_follow_its_probabilities(gen):
    net = make_with_context()
    n = 20000
    with torch.no_grad():
        y = net._prior_context(torch.randn(n, 1, 4, 4, generator=gen))
    levels = net.codec.levels
    idx = ((y + 1) * (levels - 1) / 2).round().long()
    freq = torch.nn.functional.one_hot(idx, levels).double().mean(0)
    p = net.ctx_logits.softmax(-1).double()[0]
    sd = (p * (1 - p) / n).sqrt()
    assert ((freq[0] - p).abs() <= 5 * sd + 1e-12).all()  # binomial frequencies within 5 standard deviations


# --------------------------------------------------------------------------- factories


def test_a_factory_loads_with_its_provenance(in_repo):
    lm = robustvae.load("examples.own_model:make")
    assert (lm.path, lm.config, lm.sha256_of, lm.name) == (
        "examples.own_model:make",
        None,
        "state_dict",
        "examples.own_model:make",
    )
    assert not lm.model.training and lm.sha256 == factory.state_dict_sha256(make())
    other = make()
    with torch.no_grad():
        other.q1.bias[0] += 1e-3
    assert factory.state_dict_sha256(other) != lm.sha256
    with pytest.raises(RobustVAEError, match="no EMA weights"):
        robustvae.load("examples.own_model:make", weights="ema")


def test_factory_failures_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the current directory comes first, as with python -m
    (tmp_path / "mine.py").write_text(
        "import torch\n"
        "def raises():\n    raise RuntimeError('no weights here')\n"
        "def linear():\n    return torch.nn.Linear(2, 2)\n"
        "def number():\n    return 3\n"
        "value = 3\n"
    )
    (tmp_path / "broken.py").write_text("import not_installed_anywhere_xyz\n")
    (tmp_path / "crashes.py").write_text("raise SystemError('at import')\n")
    cases = {
        "no_such_module_xyz:make": "cannot import 'no_such_module_xyz'",
        "mine:absent": "mine has no callable 'absent'",
        "mine:value": "mine has no callable 'value'",
        "mine:raises": "mine:raises() raised RuntimeError: no weights here",
        "mine:linear": "the model mine:linear returns does not satisfy robustvae's model contract",
        "mine:number": "it is a int, not a torch.nn.Module",
        "broken:make": "No module named 'not_installed_anywhere_xyz'",
        "crashes:make": "raised SystemError: at import",
    }
    for spec, fragment in cases.items():
        with pytest.raises(RobustVAEError) as e:
            robustvae.load(spec)
        assert fragment in str(e.value) and "\n" not in str(e.value), (spec, str(e.value))
    assert str(tmp_path) not in sys.path[:1]  # the current directory is not left on sys.path
    assert not factory.is_factory("runs/x") and not factory.is_factory("a:b:c") and factory.is_factory("a.b:c")
    (tmp_path / "a.b:c").mkdir()
    assert not factory.is_factory("a.b:c")  # an existing path is a path


# --------------------------------------------------------------------------- through the commands


def _cli(capsys, argv):
    from robustvae.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, " ".join(out.split()), err


def _error(code, err, fragment):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def test_attack_a_factory_model_on_own_images(in_repo, tmp_path, capsys):
    import json

    out = tmp_path / "a"
    base = [
        "attack",
        "examples.own_model:make",
        "--layers",
        "1",
        "--points",
        "2",
        "--restarts",
        "1",
        "--steps",
        "2",
        "-q",
        "--out",
        str(out),
    ]
    code, text, err = _cli(capsys, [*base, "--images", "examples/digits.npy"])
    assert code == 0, err
    assert "images examples/digits.npy: 16 images of 1x28x28 (NHWC uint8 array" in text
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["dataset"] for r in rows} == {"images:digits.npy"} and {r["label"] for r in rows} == {-1}
    assert {r["test_index"] for r in rows if r["kind"] == "attack"} == {0, 1}  # the first points, in file order
    info = json.loads((out / "run.json").read_text())
    m = info["models"][0]
    assert (m["path"], m["sha256_of"], m["config"], m["arch"]) == (
        "examples.own_model:make",
        "state_dict",
        None,
        "example-ladder",
    )
    assert m["image_set"]["layout"] == "NHWC" and m["image_set"]["images"] == 16
    assert info["settings"]["images"] == {"examples.own_model:make": m["image_set"]["pixels_sha256"]}
    # resuming with other images is refused (the same pixels as floats, but the first image changed)
    import numpy as np

    other = np.load(REPO / "examples" / "digits.npy").astype("float32") / 255
    other[0] = 0
    np.save(tmp_path / "other.npy", other)
    code, text, err = _cli(capsys, [*base, "--images", str(tmp_path / "other.npy")])
    _error(code, err, "holds a run with other settings (images.examples.own_model:make")


def test_a_targeted_attack_on_unlabelled_images_is_one_line(in_repo, tmp_path, capsys):
    """A targeted objective draws targets of another label; a user's image set has none: refused, nothing left."""
    out = tmp_path / "t"
    code, text, err = _cli(
        capsys,
        [
            "attack",
            "examples.own_model:make",
            "--images",
            "examples/digits.npy",
            "--objective",
            "target",
            "--layers",
            "1",
            "--points",
            "2",
            "--restarts",
            "1",
            "--steps",
            "2",
            "-q",
            "--out",
            str(out),
        ],
    )
    _error(code, err, "a user's image set has no labels")
    assert not (out / "records.jsonl").exists()


def test_a_factory_model_evaluates_certifies_and_compresses(in_repo, tmp_path, capsys):
    import json

    # generated 28x28 shapes: the example's image size, without reading a real dataset (mnist-offline: below)
    code, text, err = _cli(
        capsys,
        [
            "eval",
            "examples.own_model:make",
            "--data",
            "synthetic",
            "-k",
            "2",
            "--limit",
            "4",
            "-q",
            "--out",
            str(tmp_path / "e.json"),
        ],
    )
    assert code == 0, err
    res = json.loads((tmp_path / "e.json").read_text())
    assert (res["dataset"], res["checkpoint"], res["sha256_of"], res["images"]) == (
        "synthetic",
        "examples.own_model:make",
        "state_dict",
        4,
    )
    code, text, err = _cli(
        capsys,
        [
            "certify",
            "examples.own_model:make_with_context",
            "--data",
            "synthetic",
            "--points",
            "1",
            "--eps",
            "0.1",
            "--no-optimal",
            "-q",
            "--out",
            str(tmp_path / "c"),
        ],
    )
    assert code == 0, err
    row = json.loads((tmp_path / "c" / "records.jsonl").read_text().splitlines()[0])
    assert row["dataset"] == "synthetic" and row["coefficients"] == 16 and row["context"] == "DCTContext"
    code, text, err = _cli(
        capsys,
        [
            "compress",
            "examples.own_model:make",
            "--data",
            "synthetic",
            "--limit",
            "2",
            "--layers",
            "1,2",
            "-q",
            "--out",
            str(tmp_path / "z"),
        ],
    )
    assert code == 0, err
    run = json.loads((tmp_path / "z" / "run.json").read_text())
    assert run["image_source"]["data"] == "synthetic" and len(run["images"]) == 2
    assert [im["name"].rsplit("-", 1)[0] for im in run["images"]] == ["synthetic-test"] * 2
    # the API takes the images as a tensor too (here NHWC floats)
    x = torch.rand(2, 30, 29, 1, generator=torch.Generator().manual_seed(0))
    res = robustvae.compress([make()], x, robustvae.CompressConfig(layers="1"), tmp_path / "t", device="cpu")
    assert list(res.records.image) == ["image-0", "image-1"] and list(res.records.width) == [29, 29]


def test_a_factory_model_without_images_or_a_file_is_told_what_to_pass(in_repo, tmp_path, capsys):
    spec = "examples.own_model:make"
    code, _, err = _cli(capsys, ["eval", spec, "-q", "--out", str(tmp_path / "e.json")])
    _error(code, err, "has no dataset of its own (a model factory): pass --data NAME")
    code, _, err = _cli(capsys, ["eval", spec, "--data", "synthetic", "-q"])
    _error(code, err, "is not a checkpoint file to write beside: pass --out FILE.json")
    code, _, err = _cli(capsys, ["attack", spec, "--points", "1", "-q", "--out", str(tmp_path / "a")])
    _error(code, err, "has no dataset of its own (a model factory, or a model in memory): pass --data NAME")
    code, _, err = _cli(
        capsys, ["certify", spec, "--data", "synthetic", "--points", "1", "-q", "--out", str(tmp_path / "c")]
    )
    _error(code, err, "has no quantised context layer")
    code, _, err = _cli(
        capsys,
        ["attack", spec, "--data", "synthetic", "--images", "examples/digits.npy", "-q", "--out", str(tmp_path / "b")],
    )
    _error(code, err, "pass --data or --images, not both")
    code, _, err = _cli(
        capsys, ["eval", spec, "--data", "synthetic-rgb", "-q", "--out", str(tmp_path / "o" / "e.json")]
    )
    _error(code, err, "dataset 'synthetic-rgb' has images of shape (3, 32, 32) but the model expects (1, 28, 28)")
    code, _, err = _cli(capsys, ["eval", spec, "--data", "nope", "-q", "--out", str(tmp_path / "o" / "e.json")])
    _error(code, err, "unknown dataset 'nope'")
    code, _, err = _cli(
        capsys,
        [
            "compress",
            spec,
            "--images",
            "examples/digits.npy",
            "--limit",
            "2",
            "--layers",
            "1",
            "-q",
            "--out",
            str(tmp_path / "z"),
        ],
    )
    _error(code, err, "--limit picks images of --data")
    assert not any(tmp_path.iterdir())  # nothing written by any of them


def test_a_factory_model_attacks_like_the_same_model_in_memory(in_repo):
    """The factory path changes the label and the provenance, nothing else: the same numbers as the model itself."""
    cfg = robustvae.AttackConfig(
        optimizer="pgd", layers="1,2", points=2, restarts=2, steps=3, floor_draws=1, noise_draws=1
    )
    images = torch.from_numpy(__import__("numpy").load(REPO / "examples" / "digits.npy"))
    a = robustvae.attack(["examples.own_model:make"], cfg, images=images, device="cpu").records
    b = robustvae.attack([make()], cfg, images=images, device="cpu").records
    assert set(a.model) == {"examples.own_model:make"} and set(b.model) == {"example-ladder"}
    cols = ["k", "kind", "point", "restart", "msssim", "delta_linf"]
    assert a[cols].equals(b[cols])


def test_eval_of_a_checkpoint_on_another_dataset(tmp_path, capsys):
    from robustvae.cli import main

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--preset",
                "vdvae-mnist-tiny",
                "--data",
                "synthetic",
                "-q",
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
    code, text, err = _cli(capsys, ["eval", str(run), "--data", "mnist-offline", "-k", "2", "--limit", "4", "-q"])
    assert code == 0, err
    import json

    res = json.loads((run / "eval-mnist-offline-test.json").read_text())
    assert res["dataset"] == "mnist-offline" and res["images"] == 4 and not (run / "eval-test.json").exists()
    code, text, err = _cli(
        capsys, ["eval", str(run), "--images", str(REPO / "examples" / "digits.npy"), "-k", "2", "--limit", "3", "-q"]
    )
    assert code == 0, err
    res = json.loads((run / "eval-images-digits.json").read_text())
    s = res["image_set"]
    assert (res["dataset"], res["images"], s["selection"], s["split_images"]) == (
        "images:digits.npy",
        3,
        "the first 3 in file order",
        16,
    )
    assert "the first 3 in file order" in text
