"""Access to the openai/vdvae reference fixtures (tests/fixtures_openai_vdvae), and robustvae's side of each tensor.

The fixtures were made by running openai/vdvae's own code (make_fixtures.py in that folder
says how). :func:`ours` runs the robustvae model through the same passes, replaying the
recorded draws, and returns robustvae's value of every fixture tensor under the fixture's
name (NHWC tensors are compared as upstream stores them).
"""

from __future__ import annotations

import gzip
import json
import re
from functools import cache
from pathlib import Path

import torch

from robustvae.models.openai_vdvae.convert import check_state_dict, load_upstream
from robustvae.registry import openai_model_config

FIXTURES = Path(__file__).resolve().parent / "fixtures_openai_vdvae"
SMALL = ("cifar10_small", "ffhq256_small", "ffhq1024_small")


@cache
def read(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def read_keys() -> dict[str, list[tuple[str, list[int]]]]:
    with gzip.open(FIXTURES / "keys.json.gz", "rt") as f:
        return json.load(f)["keys"]


def model_config(fixture: dict):
    hp = dict(fixture["meta"]["hparams"])
    return openai_model_config(hp.pop("dataset"), **hp)


def model(name: str, dtype: torch.dtype = torch.float32):
    """The fixture's model with its (upstream, perturbed) weights, strictly loaded, in eval mode."""
    fx = read(name)
    weights = {k[len("weights/") :]: v for k, v in fx["tensors"].items() if k.startswith("weights/")}
    torch.manual_seed(1)  # another init than upstream's: every value must come from the weights
    m = load_upstream(weights, model_config(fx), name).to(dtype)  # float32 weights, as an import keeps them
    if dtype != torch.float32:  # the fixture's own precision
        m.load_state_dict({k: v.to(dtype) for k, v in check_state_dict(weights, m.cfg, name).items()})
    return m.eval()


def images(fx: dict, dtype: torch.dtype) -> torch.Tensor:
    """The fixture's uint8 NHWC images as robustvae sees them: NCHW floats u / 255."""
    return (fx["tensors"]["u8"].permute(0, 3, 1, 2).to(dtype) / 255).contiguous()


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


def _eps(t: dict, prefix: str, model) -> list[torch.Tensor]:
    """Recorded standard-normal draws per layer (zeros where the pass took no draw)."""
    B = t["u8"].shape[0]
    return [t.get(f"{prefix}/L{i}/draw_eps", torch.zeros(B, *info.shape)) for i, info in enumerate(model.layers)]


@torch.no_grad()
def ours(name: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """robustvae's value of every compared fixture tensor, under the fixture's names."""
    from robustvae.models.openai_vdvae.model import encoder_input, likelihood_target

    fx = read(name)
    t = fx["tensors"]
    m = model(name, dtype)
    x = images(fx, dtype)
    B, L = x.shape[0], m.num_layers
    ndims = x[0].numel()
    out = {"input": nhwc(encoder_input(x, m.cfg)), "target": nhwc(likelihood_target(x, m.cfg))}
    acts = m._encoder(x)
    out.update({f"elbo/act{r}": a for r, a in acts.items()})
    eps = [e.to(dtype) for e in _eps(t, "elbo", m)]
    td = m._top_down(B, acts, n_posterior=L, posterior_sample=True, noise=eps)
    for i, (q, p, z) in enumerate(zip(td.posteriors, td.priors, td.zs)):
        out.update(
            {
                f"elbo/L{i}/q_mean": q.mean,
                f"elbo/L{i}/q_logsigma": q.logvar / 2,
                f"elbo/L{i}/p_mean": p.mean,
                f"elbo/L{i}/p_logsigma": p.logvar / 2,
                f"elbo/L{i}/z": z,
                f"elbo/L{i}/kl": q.kl(p),
            }
        )
    px_z = td.state * m.gain + m.shift
    lik = m.likelihood(td.state)
    out["elbo/px_z"] = px_z
    out["elbo/dmol"] = nhwc(m.out_conv(px_z))
    out["elbo/distortion"] = -lik.log_prob(x) / ndims
    out["elbo/rate"] = torch.stack([q.kl(p).flatten(1).sum(1) for q, p in zip(td.posteriors, td.priors)]).sum(0) / ndims
    out["elbo/batch_distortion"] = out["elbo/distortion"].mean()
    out["elbo/batch_rate"] = out["elbo/rate"].mean()
    out["elbo/batch_elbo"] = (out["elbo/distortion"] + out["elbo/rate"]).mean()
    td = m._top_down(B, acts, n_posterior=L)
    for i, (q, p, z) in enumerate(zip(td.posteriors, td.priors, td.zs)):
        out.update(
            {
                f"means/L{i}/q_mean": q.mean,
                f"means/L{i}/q_logsigma": q.logvar / 2,
                f"means/L{i}/p_mean": p.mean,
                f"means/L{i}/p_logsigma": p.logvar / 2,
                f"means/L{i}/z": z,
                f"means/L{i}/kl": q.kl(p),
            }
        )
    out["means/dmol"] = nhwc(m.out_conv(td.state * m.gain + m.shift))
    out["means/image"] = nhwc(m.reconstruct(x, L) * 2 - 1)
    noise = [e.to(dtype) for e in _eps(t, "prior_k2", m)]
    td = m._top_down(B, acts, n_posterior=2, noise=noise, temperature=0.1)
    out["prior_k2/dmol"] = nhwc(m.out_conv(td.state * m.gain + m.shift))
    out["prior_k2/image"] = nhwc(m.reconstruct(x, 2, temperature=0.1, noise=noise) * 2 - 1)
    noise = [e.to(dtype) for e in _eps(t, "prior_k0", m)]
    td = m._top_down(B, None, n_posterior=0, noise=noise, temperature=1.0)
    out["prior_k0/dmol"] = nhwc(m.out_conv(td.state * m.gain + m.shift))
    out["prior_k0/image"] = nhwc(m.sample(B, 1.0, noise=noise) * 2 - 1)
    return out


def group(key: str) -> str:
    """The tensor group of a fixture key: its pass and kind, without the layer (``elbo/q_mean``, ``elbo/act``)."""
    return re.sub(r"/L\d+/", "/", re.sub(r"act\d+$", "act", key))
