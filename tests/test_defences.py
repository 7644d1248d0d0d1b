"""The HMC defence on real architectures and in the attack sweep: the latent joint against independent paths, the
defended model's contract, records, run.json, the report's Defences section and its check, bad input.

Chain correctness against closed forms lives in test_defences_chain.py.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest
import torch

from robustvae.api import attack as api_attack
from robustvae.cli import main
from robustvae.config import AttackConfig
from robustvae.defences import HMCConfig, HMCDefence, defence_from_options, make_defence
from robustvae.errors import RobustVAEError
from robustvae.registry import build_model, get_preset
from robustvae.reporting import defences as dfn

CPU = torch.device("cpu")
SMALL = HMCConfig(steps=3, leapfrog=2, eot=2)


def _model(preset: str, gen: torch.Generator):
    torch.manual_seed(0)
    m = build_model(get_preset(preset).model)
    if preset.startswith("dct"):
        m.fit_data(torch.rand(64, 1, 28, 28, generator=gen))
    with torch.no_grad():  # away from the zero-initialised prior, so posteriors and priors differ
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return m.eval()


def _binary(n: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, 1, 28, 28, generator=gen) > 0.6).float()


@pytest.mark.parametrize("preset", ["vdvae-mnist-tiny", "dctvae-mnist-tiny"])
def test_latent_joint_decodes_what_reconstruct_decodes(preset, gen):
    """With the top layers at their posterior means and the same noise below, the joint's decoder mean is the
    reconstruction with k layers: the defence's target scores exactly the protocol's rule (float32, same ops)."""
    m, x = _model(preset, gen), _binary(3, gen)
    noise = m.make_noise(3, gen)
    for k in range(1, m.num_layers + 1):
        qs = [q for q, info in zip(m.encode(x, k), m.layers) if not info.deterministic]
        if qs:
            j = m.latent_log_joint(x, [q.mean for q in qs], 0.1, noise)
            torch.testing.assert_close(j.mean, m.reconstruct(x, k, 0.1, noise), rtol=0, atol=0)


def test_latent_joint_is_the_importance_weight_at_a_posterior_sample(gen):
    """k = L: log p(x | z) + log p(z) - log q(z | x) at a posterior sample equals the model's own importance weight
    (another code path: the posterior-sampling top-down pass). Tolerance: float32 sums of ~10^3 terms of ~10^2."""
    m, x = _model("vdvae-mnist-tiny", gen), _binary(2, gen)
    L = m.num_layers
    eps = [torch.randn(2, *info.shape, generator=gen) for info in m.layers]
    qs = m.encode(x, L, sample=True, noise=eps)
    zs = [q.sample(e) for q, e in zip(qs, eps)]
    log_q = sum(q.log_prob(z).flatten(1).sum(1) for q, z in zip(qs, zs))
    ours = m.latent_log_joint(x, zs, 0.1).log_joint - log_q
    theirs = m.log_importance_weights(x, 1, noise=[e[None] for e in eps])[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-3)


def test_defended_model_keeps_the_model_noise_and_the_batch_independence(gen):
    m = _model("vdvae-mnist-tiny", gen)
    d = HMCDefence(SMALL).wrap(m, 0.1)
    noise = d.make_noise(3, torch.Generator().manual_seed(5))
    for a, b in zip(noise[:-1], m.make_noise(3, torch.Generator().manual_seed(5))):
        assert torch.equal(a, b)  # a defended run draws the same prior noise as an undefended one
    assert noise[-1].dtype == torch.int64 and noise[-1].shape == (3,)
    x = _binary(3, gen)
    with torch.no_grad():
        together = d.reconstruct(x, 2, 0.1, noise)
        alone = torch.cat([d.reconstruct(x[i : i + 1], 2, 0.1, [t[i : i + 1] for t in noise]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)  # float32 conv rounding by batch size
    assert d.last.passes == 1 + 3 * 2 + 2 and d.last.accept_rate.shape == (1,)
    assert not torch.equal(together, m.reconstruct(x, 2, 0.1, noise[:-1]))  # the chain moved


def test_dctvae_context_is_left_alone(gen):
    """k = 1 of DCT-VAE is the quantised context alone: the defence does nothing there and costs nothing."""
    m = _model("dctvae-mnist-tiny", gen)
    defence = HMCDefence(SMALL)
    d, x = defence.wrap(m, 0.1), _binary(2, gen)
    noise = d.make_noise(2, gen)
    torch.testing.assert_close(d.reconstruct(x, 1, 0.1, noise), m.reconstruct(x, 1, 0.1, noise[:-1]), rtol=0, atol=0)
    assert d.last is None and defence.passes_per_image(m, 1) == 0 and defence.passes_per_image(m, 2) == 9
    assert d.encode(x, 1)[0].mean.equal(m.encode(x, 1)[0].mean)


def test_a_defended_dctvae_reads_its_models_context_codec(gen):
    """The defence leaves the context alone, so the defended model and the adaptive attack's view expose the model's
    codec: auto-v2's context-levels member seeds from it through the defence (without it the member found no codec
    on the view and fell back to plain APGD without a word)."""
    from robustvae.attacks.context import _codec
    from robustvae.certify.affine import codec_of

    m = _model("dctvae-mnist-tiny", gen)
    defence = HMCDefence(SMALL)
    for wrapped in (defence.wrap(m, 0.1), defence.attack_view(m, 0.1)):
        assert codec_of(wrapped) is m.codec and _codec(wrapped) is m.codec
    vd = defence.wrap(_model("vdvae-mnist-tiny", gen), 0.1)
    assert _codec(vd) is None  # no context: still no codec, not an error


def test_gradient_reaches_the_input_through_the_chain_and_eot_averages_fixed_draws(gen):
    m = _model("vdvae-mnist-tiny", gen)
    defence = HMCDefence(SMALL)
    x = torch.rand(2, 1, 28, 28, generator=gen)
    noise = m.make_noise(2, gen)
    seeds = [[11, 12], [13, 14]]
    view = defence.attack_view(m, 0.1, noise=noise, eot_seeds=seeds)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(view.reconstruct(xr, 2, 0.1, noise).sum(), xr)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # the view's value is the mean over its draws of the defended reconstruction with those chain seeds
    d = defence.wrap(m, 0.1)
    with torch.no_grad():
        draws = [d.reconstruct(x, 2, 0.1, [*noise, torch.tensor(s)]) for s in seeds]
        torch.testing.assert_close(view.reconstruct(x, 2, 0.1, noise), sum(draws) / 2, rtol=0, atol=1e-5)
    means = view.encode(x, 2)
    assert [q.mean.shape for q in means] == [q.mean.shape for q in m.encode(x, 2)]


def _run(tmp_path, name, **kw):
    cfg = AttackConfig(
        optimizer="pgd", layers="1,2", points=2, restarts=1, steps=2, floor_draws=1, noise_draws=1, gallery_points=1
    )
    return api_attack([str(tmp_path / "model")], cfg, tmp_path / name, device="cpu", **kw).records


TINY = HMCConfig(steps=2, leapfrog=1, eot=2)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """A tiny model on generated data attacked three ways: undefended, defended non-adaptive, defended adaptive."""
    from robustvae import zoo

    tmp = tmp_path_factory.mktemp("defended")
    m = _model("vdvae-mnist-tiny", torch.Generator().manual_seed(0))
    cfg = get_preset("vdvae-mnist-tiny").override(["data.name=synthetic"])  # generated data: no file to parse
    zoo.atomic_save(zoo.make_checkpoint(cfg, m), tmp / "model" / "best.pt")
    runs = {
        "plain": _run(tmp, "plain"),
        "def": _run(tmp, "def", defence=HMCDefence(TINY)),
        "adapt": _run(tmp, "adapt", defence=HMCDefence(TINY), adaptive=True),
    }
    return tmp, runs


def test_sweep_records_and_resume_with_a_defence(sweeps):
    tmp, runs = sweeps
    plain, defended, adaptive = runs["plain"], runs["def"], runs["adapt"]
    assert set(defended.model) == {"vdvae-mnist-tiny+hmc"} and set(adaptive.model) == {"vdvae-mnist-tiny+hmc/adaptive"}
    assert "defence" not in plain  # an undefended run's rows are as before
    for df, flag in ((defended, False), (adaptive, True)):
        assert (df.defence == "hmc").all() and (df.adaptive == flag).all()
        assert df.defence_settings.map(lambda s: s["steps"] == 2 and s["eot"] == 2).all()
        scored = df[df.kind.isin(["attack", "no_attack"])]
        assert scored.defence_stats.map(
            lambda s: s["passes"] == 5 and 0 <= s["accept"] <= 1 and s["step_size"] > 0
        ).all()
        att = df[df.kind == "attack"]
        assert att.attack_cost.map(lambda c: c["seconds"] > 0 and c["passes"] >= 1).all()
    # non-adaptive: the very attack of the undefended run (same seeds, same model), scored through the defence
    key = ["k", "point", "restart"]
    a = plain[plain.kind == "attack"].set_index(key).sort_index()
    b = defended[defended.kind == "attack"].set_index(key).sort_index()
    for col in ("delta_linf", "delta_l2", "msssim_input", "final_loss"):
        pd.testing.assert_series_equal(a[col], b[col], check_exact=True)
    # adaptive attacks pay for the chain: more passes per restart than the plain attack
    assert (
        adaptive[adaptive.kind == "attack"].attack_cost.map(lambda c: c["passes"]).min()
        > defended[defended.kind == "attack"].attack_cost.map(lambda c: c["passes"]).max()
    )
    run = json.loads((tmp / "def" / "run.json").read_text())
    assert run["defence"]["defence"] == "hmc" and run["defence"]["passes_per_image"]["vdvae-mnist-tiny+hmc|k=2"] == 5
    assert run["settings"]["defence"]["adaptive"] is False
    # resuming a directory with another defence setting is refused, nothing is lost
    before = (tmp / "def" / "records.jsonl").read_bytes()
    with pytest.raises(RobustVAEError):
        _run(tmp, "def", defence=HMCDefence(HMCConfig(steps=3, leapfrog=1, eot=2)))
    assert (tmp / "def" / "records.jsonl").read_bytes() == before


@pytest.mark.slow
def test_report_has_a_defences_section(sweeps):
    from robustvae.api import report

    tmp, _ = sweeps
    res = report([tmp / "plain", tmp / "def", tmp / "adapt"], tmp / "report")
    checks = res.checks[res.checks.check == dfn.CHECK]
    assert len(checks) == 2
    table = pd.DataFrame(res.summary["defences"]["table"])
    assert list(table.k) == [1, 2] and (table.robust <= table[["nonadaptive", "adaptive"]].min(axis=1) + 1e-12).all()
    assert "Defences" in (tmp / "report" / "index.html").read_text() and (tmp / "report" / "defences.png").is_file()


def _records(worst_plain, worst_adaptive, no_attack=0.9):
    """Synthetic attack and no-attack rows of an undefended, a non-adaptive and an adaptive run of one model."""
    rows = []
    base = dict(dataset="d", norm="linf", eps=0.1, recon="default", checkpoint_sha256="abc", restart=0)
    for kind_name, defence, adaptive, worst in (
        ("m", None, None, [0.5, 0.5]),
        ("m+hmc", "hmc", False, worst_plain),
        ("m+hmc/adaptive", "hmc", True, worst_adaptive),
    ):
        for p, w in enumerate(worst):
            common = dict(
                base,
                model=kind_name,
                defence=defence,
                adaptive=adaptive,
                k=2,
                point=p,
                defence_stats=None
                if defence is None
                else {"accept": 0.9, "step_size": 0.1, "passes": 9.0, "seconds": 0.5},
                attack_cost=None if not adaptive else {"seconds": 2.0, "passes": 100.0},
            )
            rows += [
                dict(common, kind="attack", msssim=w),
                dict(common, kind="attack", msssim=w + 0.05, restart=1),
                dict(common, kind="no_attack", msssim=1.0 if defence is None else no_attack),
            ]
    return pd.DataFrame(rows)


def test_the_check_fails_when_the_adaptive_attack_is_weaker():
    ok = dfn.defence_checks(_records([0.8, 0.7], [0.6, 0.7]))
    assert [c["passed"] for c in ok] == [True] and ok[0]["value"] == pytest.approx(-0.1)
    bad = dfn.defence_checks(_records([0.6, 0.6], [0.7, 0.65]))
    assert [c["passed"] for c in bad] == [False] and bad[0]["value"] == pytest.approx(0.075)
    table = dfn.defence_table(_records([0.8, 0.6], [0.6, 0.7]))
    row = table.iloc[0]
    assert row.robust == pytest.approx(0.6) and row.nonadaptive == pytest.approx(0.7)  # per point the worst of both
    assert row.undefended_no_attack == 1.0 and row.nonadaptive_no_attack == pytest.approx(0.9)
    assert row.adaptive_seconds_per_point == pytest.approx(4.0) and row.adaptive_passes_per_point == 200
    assert row.accept_rate == pytest.approx(0.9) and row.defence_passes_per_image == 9
    assert not dfn.has_defences(_records([0.8], [0.7]).assign(defence=None))


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--adaptive"], "--adaptive applies to a defence"),
        (["--hmc-steps", "3"], "--hmc-steps applies to a defence"),
        (["--defence", "jpeg"], "unknown defence 'jpeg'"),
        (["--defence", "hmc", "--hmc-step-size", "abc"], "--hmc-step-size takes auto or a positive number"),
        (["--defence", "hmc", "--hmc-step-size", "-1"], "--hmc-step-size takes auto or a positive number"),
        (["--defence", "hmc", "--hmc-steps", "0"], "hmc.steps must be at least 1"),
        (["--defence", "hmc", "--hmc-leapfrog", "0"], "hmc.leapfrog must be at least 1"),
        (["--defence", "hmc", "--adaptive", "--eot", "0"], "--eot N >= 1 chain draws"),
        (["--defence", "hmc", "--eot", "3"], "add --adaptive"),
    ],
)
def test_cli_defence_bad_input(tmp_path, capsys, args, fragment):
    code = main(["attack", str(tmp_path / "no-model"), *args, "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and fragment in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_options_build_the_defence():
    d = defence_from_options("hmc", adaptive=True, eot=3, hmc_steps=7, hmc_leapfrog=2, hmc_step_size="0.05")
    assert d.config == HMCConfig(steps=7, leapfrog=2, step_size=0.05, eot=3) and d.config.adapt_steps == 0
    assert defence_from_options("hmc").config == HMCConfig() and HMCConfig().adapt_steps == 10
    assert defence_from_options(None) is None and defence_from_options("none") is None
    assert make_defence("hmc", {"step_size": None}).settings()["adapt"] == 1.0
    with pytest.raises(RobustVAEError, match="unknown config key 'hmc.stepz'"):
        make_defence("hmc", {"stepz": 3})
    assert math.isclose(HMCDefence().settings()["target_accept"], 0.9)


@pytest.mark.slow
def test_adaptive_attack_is_not_weaker_than_the_non_adaptive_one_on_a_trained_model(tmp_path):
    """A tiny VDVAE trained briefly on offline MNIST, fixed seeds: the same attack (PGD on the scored reconstruction,
    ``recon``) through the chain (EOT over 2 draws) does at least as much damage as on the model and scored through
    the defence, at every k (the report's check, tolerance 0.01 of mean worst-case MS-SSIM). About 30 minutes on one
    core: every adaptive step differentiates 3 x 19 chain gradient evaluations."""
    from conftest import tiny_config
    from robustvae.training import Trainer

    out = tmp_path / "model"
    cfg = tiny_config(data="mnist-offline", steps=200, batch_size=32, lr=3e-3, checkpoint_every=1000, val_batches=2)
    Trainer.prepare_dir(out, resume=False, force=False)
    Trainer(cfg, out, CPU, quiet=True).fit()
    acfg = AttackConfig(
        optimizer="pgd", layers="1-3", points=6, restarts=2, steps=20, floor_draws=1, noise_draws=1, objective="recon"
    )
    defence = HMCDefence(HMCConfig(steps=6, leapfrog=3, eot=2))
    runs = [
        api_attack([str(out)], acfg, tmp_path / name, device="cpu", **kw).records
        for name, kw in (
            ("plain", {}),
            ("def", {"defence": defence}),
            ("adapt", {"defence": defence, "adaptive": True}),
        )
    ]
    checks = dfn.defence_checks(pd.concat(runs, ignore_index=True))
    assert len(checks) == 3 and all(c["passed"] for c in checks), [c["detail"] for c in checks]


def test_the_adaptive_attack_starts_where_the_transferred_one_ends(sweeps, monkeypatch):
    """With the gradient through the defence cut (the view encodes a detached copy of x), PGD cannot move from its
    start: the adaptive attack's perturbation is then exactly the non-adaptive one (the same attack on the model,
    the same seeds), and its cost includes that attack's passes on top of the chain's."""
    from robustvae.defences.hmc import AttackView

    tmp, runs = sweeps
    real = AttackView.encode
    monkeypatch.setattr(AttackView, "encode", lambda self, x, *a, **kw: real(self, x.detach(), *a, **kw))
    blind = _run(tmp, "blind", defence=HMCDefence(TINY), adaptive=True)
    key = ["k", "point", "restart"]
    a = runs["def"][runs["def"].kind == "attack"].set_index(key).sort_index()
    b = blind[blind.kind == "attack"].set_index(key).sort_index()
    for col in ("delta_linf", "delta_l2", "msssim_input"):
        pd.testing.assert_series_equal(a[col], b[col], check_exact=True)
    plain = a.attack_cost.map(lambda c: c["passes"])
    assert (b.attack_cost.map(lambda c: c["passes"]) > plain + 2 * TINY.steps * TINY.leapfrog).all()
    run = json.loads((tmp / "blind" / "run.json").read_text())
    assert run["defence"]["adaptive_start"] == "transfer"


def test_the_memory_probe_lets_go_of_its_graph_and_warns_when_one_image_is_over_budget(sweeps):
    """The batch planner's probe counts the tensors a pass saves through a pack hook that returns each tensor itself;
    a node that saves its own output then closes a reference cycle Python cannot collect, and an HMC chain's graph
    stayed alive (1.5 GB per probe on the reference models). The probe's backward releases it: far fewer graph tensors
    outlive it than outlive the same pass without the release. An image over the budget is said, not hidden."""
    import gc
    import warnings

    from robustvae.api import load
    from robustvae.attacks.objectives import LatentObjective
    from robustvae.defences.sweep import DefenceRun
    from robustvae.experiments.attack import bytes_per_sample, plan_units
    from robustvae.experiments.models import Labelled

    def live() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.grad_fn is not None)

    tmp, _ = sweeps
    loaded = load(str(tmp / "model"))
    view = HMCDefence(TINY).attack_view(loaded.model, 0.1)
    cfg = AttackConfig(optimizer="auto", layers="2", points=2, restarts=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notes met by gc.get_objects
        before = live()
        assert bytes_per_sample(view, 2, cfg, CPU) > 0
        kept = live() - before
        objective = LatentObjective(view, 2, "recon")
        x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        ref = objective.reference(x, loaded.model.make_noise(2))
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            objective(x.clone().requires_grad_(True), ref).sum()
        unreleased = live() - before - kept
    assert unreleased > 500 and kept < 0.2 * unreleased, (kept, unreleased)
    labelled = [Labelled("tiny", loaded, None)]
    with pytest.warns(UserWarning, match=r"one image of tiny\+hmc at k=2 needs about .* MiB .* --max-batch-mib 1:"):
        units = plan_units(
            [Labelled("tiny+hmc", loaded, None)],
            dataclasses.replace(cfg, max_batch_mib=1),
            CPU,
            DefenceRun(HMCDefence(TINY), adaptive=True),
        )
    assert [u.stop - u.start for u in units] == [1, 1]  # one image per pass
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        plan_units(labelled, cfg, CPU)  # the undefended tiny model fits the default budget: no warning


def test_the_attacker_keeps_per_row_whichever_candidate_its_own_estimate_scores_lower(gen):
    """Rows whose transferred perturbation damages more (by MS-SSIM of the view's reconstruction against the clean
    one) keep it; the others keep the adaptive result. A view that reconstructs the input itself makes the estimate
    the MS-SSIM of the candidates, computed here directly."""
    from robustvae.experiments.attack import _attackers_choice
    from robustvae.metrics import ms_ssim

    class Identity:
        def reconstruct(self, x, k, temperature, noise):
            return x

    clean = torch.rand(4, 1, 28, 28, generator=gen)
    strong = (clean + 0.5 * torch.randn(4, 1, 28, 28, generator=gen)).clamp(0, 1)
    weak = (clean + 0.05 * torch.randn(4, 1, 28, 28, generator=gen)).clamp(0, 1)
    adaptive = torch.stack([strong[0], weak[1], strong[2], weak[3]])
    transferred = torch.stack([weak[0], strong[1], weak[2], strong[3]])
    chosen = _attackers_choice(Identity(), 1, 0.1, [], adaptive, transferred, clean)
    want = torch.where(
        (ms_ssim(transferred, clean) < ms_ssim(adaptive, clean)).view(-1, 1, 1, 1), transferred, adaptive
    )
    assert torch.equal(chosen, want) and torch.equal(chosen, strong)
