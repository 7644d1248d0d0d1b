"""Full-size check (slow, needs a local copy of openai/vdvae): upstream's CIFAR-10 model, made by its own code.

``OPENAI_VDVAE_SRC`` names a copy of github.com/openai/vdvae at commit ea35b49 (see
tests/fixtures_openai_vdvae/make_fixtures.py). The fixture script writes, with upstream's code,
a full CIFAR-10 model of random weights never seen before in ``torch.save(vae.state_dict())``
form, scikit-image photographs at 32 x 32, and upstream's outputs on them. Then:

* ``robustvae zoo import FILE --from openai-vdvae --hps cifar10`` imports it strictly;
* its reconstruction at the posterior means equals upstream's forward with every draw at its mean
  (its image rule: the largest-logit component, no logistic noise) to 1e-4;
* its ELBO with upstream's recorded draws replayed equals upstream's per image to 1e-4
  (relative), and its ELBO with its own draws agrees with upstream's within sampling noise:
  the difference of the two means over R passes each is within 4 standard errors.

``python tests/test_openai_vdvae_full.py`` prints the measurements.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parent / "fixtures_openai_vdvae" / "make_fixtures.py"
REPEATS = 20


def full_size_check(upstream: Path, work: Path, repeats: int = REPEATS) -> dict[str, float]:
    """Make upstream's model and outputs, import the model, and measure how robustvae's agree."""
    import robustvae
    from robustvae.cli import main

    src = work / "upstream"
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--upstream",
            str(upstream),
            "--full-cifar10",
            str(src),
            "--repeats",
            str(repeats),
        ],
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert (
        main(
            [
                "zoo",
                "import",
                str(src / "cifar10-random-model-ema.th"),
                "--from",
                "openai-vdvae",
                "--hps",
                "cifar10",
                "--out",
                str(work / "imported"),
            ]
        )
        == 0
    )
    ref = torch.load(src / "reference.pt", weights_only=True)["tensors"]
    model = robustvae.load(work / "imported").model
    x = torch.from_numpy(np.load(src / "images.npy")).permute(0, 3, 1, 2).float() / 255
    B, L, ndims = x.shape[0], model.num_layers, x[0].numel()
    out: dict[str, float] = {"images": B, "layers": L, "parameters": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        rec = model.reconstruct(x, L)
        theirs = (ref["means/image"].permute(0, 3, 1, 2) + 1) / 2
        out["recon_max_abs_diff"] = float((rec - theirs).abs().max())
        eps = [ref[f"elbo/L{i}/draw_eps"] for i in range(L)]
        td = model._top_down(B, model._encoder(x), n_posterior=L, posterior_sample=True, noise=eps)
        kl = sum(q.kl(p).flatten(1).sum(1) for q, p in zip(td.posteriors, td.priors))
        forced = (kl - model.likelihood(td.state).log_prob(x)) / ndims
        upstream_forced = ref["elbo/distortion"] + ref["elbo/rate"]
        out["forced_elbo_max_rel_diff"] = float(((forced - upstream_forced) / upstream_forced).abs().max())
        torch.manual_seed(0)
        ours = torch.stack([model.elbo(x).nelbo / ndims for _ in range(repeats)]).double()  # nats per dimension
    theirs_r = ref["elbo_repeats"].double()
    diff = ours.mean(0) - theirs_r.mean(0)
    se = (ours.var(0) / repeats + theirs_r.var(0) / repeats).sqrt()
    out.update(
        {
            "elbo_ours_nats_per_dim": float(ours.mean()),
            "elbo_upstream_nats_per_dim": float(theirs_r.mean()),
            "elbo_ours_bpd": float(ours.mean()) / math.log(2),
            "elbo_max_abs_diff_per_image": float(diff.abs().max()),
            "elbo_max_z_per_image": float((diff.abs() / se).max()),
            "elbo_sd_one_pass": float(theirs_r.std(0).mean()),
        }
    )
    return out


@pytest.mark.slow
def test_upstreams_full_cifar10_model_imports_and_agrees(tmp_path):
    upstream = os.environ.get("OPENAI_VDVAE_SRC")
    if not upstream:
        pytest.skip("set OPENAI_VDVAE_SRC to a copy of openai/vdvae at ea35b49 (git archive ea35b49 | tar -x -C DIR)")
    m = full_size_check(Path(upstream), tmp_path)
    assert m["layers"] == 43 and m["parameters"] == 39_145_700
    assert m["recon_max_abs_diff"] <= 1e-4
    assert m["forced_elbo_max_rel_diff"] <= 1e-4
    assert m["elbo_max_z_per_image"] <= 4.0


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for k, v in full_size_check(Path(os.environ["OPENAI_VDVAE_SRC"]), Path(tmp)).items():
            print(f"{k}: {v}")
