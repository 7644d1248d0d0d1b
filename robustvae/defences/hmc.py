"""The MCMC defence of Kuzina, Welling & Tomczak, "Alleviating Adversarial Attacks on Variational
Autoencoders with MCMC" (NeurIPS 2022): at test time, move the top-k latents from the encoder's
posterior towards the model's true posterior with Hamiltonian Monte Carlo, then decode.

Chain (:mod:`robustvae.defences.chain`): state = the top k *Gaussian* layers of the model,
started at the encoder's posterior of the (possibly attacked) input (its means under the
default rule, its samples under the authors' rule); target log p(x | z) + log p(z), where
log p(z) is the model's prior over those layers (each given the ones above) and p(x | z)
decodes with the layers below k drawn from the prior at the rule's temperature with the
protocol's prior noise (:meth:`~robustvae.models.vdvae.VDVAE.latent_log_joint`): the very
reconstruction rule the attack is scored under. The defended reconstruction decodes what
the rule asks of the posterior, now the true one: its mean, estimated by the mean of the
chain's states after burn-in (default rule), or a sample, the chain's last state (authors'
rule, as their code decodes). ``steps`` transitions of ``leapfrog`` steps each;
the step size is fixed or adapted per image during the first ``burn_in`` share of the
transitions towards ``target_accept`` (a Robbins-Monro recursion, then frozen).

A quantised context layer (DCT-VAE's layer 1) is left as it is: its posterior is a point
mass at a deterministic function of x, so the true posterior p(context | x) is that same
point mass; there is no density to move in. (Its coefficients before quantisation are
not latents of the model: the decoder and the diffusion prior see only the quantised
levels, so a chain over them would sample a distribution the model does not define.) The
chain runs over Gaussian layers 2 .. k given the context of the input; at k = 1 the
defence does nothing and costs nothing.

Randomness: each image's chain is driven by one integer seed, the last tensor of the
defended model's ``make_noise`` (after the model's own noise), from which its momenta and
Metropolis-Hastings uniforms are drawn on the CPU: the same seed gives the same chain on
every device and in every batch, and the clean and the attacked pass of the default rule
share their chain draw as they share their prior noise.

Where robustvae differs from the authors' code (AKuzina/defend_vae_mcmc, ``vae/model/hmc.py``):
they run 500 transitions after a burn-in of 250, 20 leapfrog steps each, from a step of 0.1
(MNIST scripts) adapted at *every* transition by eps *= 1 + 0.01 (rate - 0.9) / 0.9 with rate
the batch's share of accepted proposals; robustvae adapts per image (a batch gives the
results of its images one at a time) with shrinking gains on the acceptance probability, and
only during burn-in (a step that keeps changing leaves no valid chain). Defaults here are
shorter (:class:`HMCConfig`), so an adaptive attack through the chain is affordable; the
settings are recorded with every row.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustvae.config import check_numbers
from robustvae.defences.base import Defence
from robustvae.defences.chain import ACCEPT_GRADS, ChainNoise, ChainResult, run_chain
from robustvae.errors import ConfigError, RobustVAEError
from robustvae.models.contract import SupportsLatentJoint
from robustvae.models.distributions import DiagGaussian

SEED_HIGH = 2**62  # chain seeds are drawn in [0, SEED_HIGH)


@dataclass(frozen=True)
class HMCConfig:
    """Settings of the HMC defence (and of the adaptive attack through it).

    ``steps``: transitions per reconstruction, burn-in included; ``leapfrog``: leapfrog
    steps per transition; ``step_size``: a fixed step, or None (``auto``) to adapt it per
    image from ``init_step_size`` during the first ``burn_in`` share of the transitions
    towards the acceptance rate ``target_accept``. ``eot``: chain draws an adaptive attack
    averages over; ``accept_grad``: what stands in for the accept step's gradient in an
    adaptive attack (``straight-through`` or ``expectation``).
    """

    steps: int = 20
    leapfrog: int = 5
    step_size: float | None = None  # None: "auto", adapted during burn-in
    init_step_size: float = 0.1  # the authors' MNIST setting
    target_accept: float = 0.9  # the authors' target
    burn_in: float = 0.5
    eot: int = 4
    accept_grad: str = "straight-through"

    def __post_init__(self) -> None:
        check_numbers(self, "hmc.")
        for name in ("steps", "leapfrog", "eot"):
            if getattr(self, name) < 1:
                raise ConfigError(f"hmc.{name} must be at least 1, got {getattr(self, name)}")
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(f"hmc.step_size must be positive or auto, got {self.step_size}")
        if not self.init_step_size > 0:
            raise ConfigError(f"hmc.init_step_size must be positive, got {self.init_step_size}")
        if not 0 < self.target_accept < 1:
            raise ConfigError(f"hmc.target_accept must be in (0, 1), got {self.target_accept}")
        if not 0 <= self.burn_in < 1:
            raise ConfigError(f"hmc.burn_in must be in [0, 1) (a share of the steps), got {self.burn_in}")
        if self.accept_grad not in ACCEPT_GRADS:
            raise ConfigError(f"hmc.accept_grad must be one of {', '.join(ACCEPT_GRADS)}, got {self.accept_grad!r}")

    @property
    def adapt_steps(self) -> int:
        """Transitions that adapt the step size (0 with a fixed step)."""
        return 0 if self.step_size is not None else int(round(self.burn_in * self.steps))


def parse_step_size(text: str | float | None) -> float | None:
    """``auto`` (or None) -> None; a positive number -> itself; else a one-line error naming the fix."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "auto"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise RobustVAEError(f"--hmc-step-size takes auto or a positive number such as 0.05, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise RobustVAEError(f"--hmc-step-size takes auto or a positive number such as 0.05, got {text!r}")
    return value


def gaussian_layers(model, k: int) -> list[int]:
    """Indices (0-based, into ``model.layers``) of the Gaussian layers among the top ``k``: what the chain moves.

    They must be the top Gaussian layers of the model (deterministic layers sit above them)."""
    idx = [i for i, info in enumerate(model.layers[:k]) if not info.deterministic]
    if idx and idx != list(range(idx[0], k)):
        raise ValueError("the hmc defence needs the deterministic layers above the Gaussian ones")
    return idx


def chain_noise(seeds: list[int], steps: int, dims: int, device) -> ChainNoise:
    """The chain noise of one image per seed: momenta and uniforms from a CPU generator seeded with it."""
    parts = [ChainNoise.draw(1, steps, dims, torch.Generator().manual_seed(int(s))) for s in seeds]
    return ChainNoise(
        torch.cat([p.momentum for p in parts]).to(device), torch.cat([p.uniform for p in parts]).to(device)
    )


@dataclass
class ChainStats:
    """Per image, the last defended call: acceptance after burn-in, step size, model passes and seconds."""

    accept_rate: Tensor
    step_size: Tensor
    passes: int  # per image: the encoder pass, the chain's gradient evaluations, the decoding pass
    seconds: float  # per image (the call's wall time over its images)

    def rows(self) -> list[dict[str, float]]:
        """One record entry per image."""
        acc, step = self.accept_rate.tolist(), self.step_size.tolist()
        return [
            {"accept": a, "step_size": s, "passes": float(self.passes), "seconds": self.seconds}
            for a, s in zip(acc, step)
        ]


class DefendedModel(nn.Module):
    """``model`` whose ``reconstruct`` and ``encode`` run the HMC defence (the model contract otherwise unchanged).

    ``make_noise`` returns the model's noise and, last, one chain seed per image. Without
    noise a call draws both afresh. ``last`` holds the statistics of the latest defended
    call; ``forward_passes`` counts model passes per image over every call (each chain
    gradient evaluation is one forward pass with its backward).
    """

    def __init__(self, model: nn.Module, config: HMCConfig, temperature: float):
        super().__init__()
        if not isinstance(model, SupportsLatentJoint):
            raise RobustVAEError(
                f"the hmc defence needs a model that can score fixed latents (latent_log_joint); "
                f"{getattr(model, 'arch', type(model).__name__)} cannot: use a vdvae or dctvae model"
            )
        self.model = model
        self.config = config
        self.temperature = temperature
        self.last: ChainStats | None = None
        self.forward_passes = 0

    # -- the model contract, delegated
    @property
    def arch(self) -> str:
        return self.model.arch

    @property
    def cfg(self):
        return self.model.cfg

    @property
    def codec(self):
        """The model's context codec (a DCT-VAE's): the defence leaves the context as it is, so the defended model's
        context is the model's, and what reads it (certify, auto-v2's context-levels member) reads it here too."""
        return self.model.codec

    @property
    def layers(self):
        return self.model.layers

    @property
    def iw_shared_noise(self) -> int:
        return self.model.iw_shared_noise

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def num_pixels(self) -> int:
        return self.model.num_pixels

    def elbo(self, x):
        return self.model.elbo(x)

    def log_importance_weights(self, *args, **kwargs):
        return self.model.log_importance_weights(*args, **kwargs)

    def iw_noise(self, *args, **kwargs):
        return self.model.iw_noise(*args, **kwargs)

    def nll_iwae(self, *args, **kwargs):
        return self.model.nll_iwae(*args, **kwargs)

    def sample(self, *args, **kwargs):
        return self.model.sample(*args, **kwargs)

    def fit_data(self, train_images: Tensor) -> None:
        self.model.fit_data(train_images)

    def use_channels_last(self, enabled: bool = True) -> DefendedModel:
        self.model.use_channels_last(enabled)
        return self

    def latent_log_joint(self, *args, **kwargs):
        return self.model.latent_log_joint(*args, **kwargs)

    # -- noise
    def make_noise(self, batch: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """The model's noise (the same draws as without the defence), then one chain seed per image (CPU, int64)."""
        noise = self.model.make_noise(batch, generator)
        return [*noise, torch.randint(0, SEED_HIGH, (batch,), generator=generator, dtype=torch.int64)]

    def split_noise(self, noise: list[Tensor] | None, batch: int) -> tuple[list[Tensor], list[int]]:
        """(the model's noise, the chain seeds) of a noise list from :meth:`make_noise` (fresh when None)."""
        if noise is None:
            noise = self.make_noise(batch)
        *model_noise, seeds = noise
        if seeds.dim() != 1 or seeds.shape[0] != batch or seeds.is_floating_point():
            raise ValueError("a defended model's noise ends with one integer chain seed per image (use its make_noise)")
        return model_noise, [int(s) for s in seeds.tolist()]

    # -- the defence
    def _k(self, k: int | None) -> int:
        L = self.model.num_layers
        k = L if k is None else k
        if not 0 <= k <= L:
            raise ValueError(f"k must be in 0..{L} (this model has L={L} stochastic layers), got {k}")
        return k

    def _chain(
        self, x: Tensor, k: int, temperature: float, model_noise: list[Tensor], seeds: list[int], posterior_sample: bool
    ) -> tuple[list[Tensor], list, ChainResult]:
        """Run the chains over the top-k Gaussian layers: (their estimates, the k posteriors of x, the result).

        The estimate follows the rule: the mean of the states after burn-in where the rule takes
        posterior means, the last state (a posterior sample) where it takes samples. ``seeds`` holds one seed per
        chain: len(seeds) / len(x) draws per image, draw-major (rows
        [d B, (d + 1) B) of the states are draw d), all started from the same posterior of x.
        """
        layers = gaussian_layers(self.model, k)
        B = x.shape[0]
        n = len(seeds) // B
        qs = self.model.encode(x, k, sample=posterior_sample, noise=model_noise if posterior_sample else None)
        z0 = torch.cat(
            [(qs[i].sample(model_noise[i]) if posterior_sample else qs[i].mean).flatten(1) for i in layers], 1
        )
        shapes = [qs[i].mean.shape[1:] for i in layers]
        sizes = [math.prod(s) for s in shapes]
        xs = x.repeat(n, 1, 1, 1) if n > 1 else x
        noise_n = [t.repeat(n, *([1] * (t.dim() - 1))) for t in model_noise] if n > 1 else model_noise

        def split(flat: Tensor) -> list[Tensor]:
            return [part.reshape(flat.shape[0], *s) for part, s in zip(flat.split(sizes, 1), shapes)]

        def potential(flat: Tensor) -> Tensor:
            return -self.model.latent_log_joint(xs, split(flat), temperature, noise_n).log_joint

        cfg = self.config
        differentiable = torch.is_grad_enabled() and x.requires_grad
        noise = chain_noise(seeds, cfg.steps, sum(sizes), x.device)
        res = run_chain(
            potential,
            z0.repeat(n, 1) if n > 1 else z0,
            noise,
            leapfrog_steps=cfg.leapfrog,
            step_size=cfg.step_size or cfg.init_step_size,
            adapt_steps=cfg.adapt_steps,
            target_accept=cfg.target_accept,
            differentiable=differentiable,
            accept_grad=cfg.accept_grad,
        )
        return split(res.z if posterior_sample else res.z_mean), qs, res

    def _defended(
        self, x: Tensor, k: int | None, temperature: float, noise: list[Tensor] | None, posterior_sample: bool
    ) -> tuple[list[Tensor], list, list[Tensor]] | None:
        """(the chains' estimates, posteriors, the model's noise) of a defended call; None where no Gaussian layer is among
        the top k (the defence then does nothing)."""
        k = self._k(k)
        if not gaussian_layers(self.model, k):
            return None
        t0 = time.perf_counter()
        model_noise, seeds = self.split_noise(noise, x.shape[0])
        zs, qs, res = self._chain(x, k, temperature, model_noise, seeds, posterior_sample)
        passes = res.gradient_evals + 2  # the encoder, the chain, the decoding pass
        self.forward_passes += passes
        self.last = ChainStats(
            res.accept_rate.detach(), res.step_size, passes, (time.perf_counter() - t0) / max(x.shape[0], 1)
        )
        return zs, qs, model_noise

    def reconstruct(
        self,
        x: Tensor,
        k: int | None = None,
        temperature: float = 0.1,
        noise: list[Tensor] | None = None,
        posterior_sample: bool = False,
    ) -> Tensor:
        """The decoder's mean at the chain's estimate of the top k layers: the mean of its states after burn-in
        (``posterior_sample`` False: the rule's posterior mean, of the true posterior now) or its last state (True: a
        sample); the model's own reconstruction when the top k layers hold no Gaussian layer."""
        out = self._defended(x, k, temperature, noise, posterior_sample)
        if out is None:
            self.last = None
            model_noise = self.split_noise(noise, x.shape[0])[0] if noise is not None else None
            return self.model.reconstruct(x, k, temperature, model_noise, posterior_sample=posterior_sample)
        zs, _, model_noise = out
        return self.model.latent_log_joint(x, zs, temperature, model_noise).mean

    def encode(self, x: Tensor, k: int | None = None, sample: bool = False, noise: list[Tensor] | None = None) -> list:
        """The top k posteriors with each Gaussian layer's mean moved to the chain's estimate (its mean after burn-in,
        or with ``sample`` its last state; the variance the encoder's), as the authors' attack code reads a defended
        encoding; deterministic layers unchanged."""
        out = self._defended(x, k, self.temperature, noise, sample)
        if out is None:
            self.last = None
            return self.model.encode(x, k)
        zs, qs, _ = out
        layers = gaussian_layers(self.model, self._k(k))
        moved = dict(zip(layers, zs))
        return [DiagGaussian(moved[i], q.logvar) if i in moved else q for i, q in enumerate(qs)]


class AttackView(DefendedModel):
    """The defended model as an adaptive attack sees it: the average over fixed chain draws (expectation over
    transformation), differentiable through every chain.

    ``eot_seeds``: per draw, one chain seed per row of the batch the attack runs on; ``noise``:
    the rows' prior noise (the model's part), used where a call brings none. A call on a batch
    of other size (the engine's memory probe) draws both afresh. ``reconstruct`` averages the
    draws' mean images; ``encode`` averages their estimates.
    """

    def __init__(
        self,
        model: nn.Module,
        config: HMCConfig,
        temperature: float,
        noise: list[Tensor] | None,
        eot_seeds: list[list[int]] | None,
    ):
        super().__init__(model, config, temperature)
        self._model_noise = len(model.make_noise(1))
        self.bound_noise = noise
        self.eot_seeds = eot_seeds

    def _draws(self, batch: int, noise: list[Tensor] | None) -> tuple[list[Tensor], list[int]]:
        """(the model's noise, every draw's seeds, draw-major) for a batch of ``batch`` rows."""
        if noise is not None and len(noise) > self._model_noise:
            noise = noise[: self._model_noise]  # a defended model's noise: its chain seeds are not the attacker's
        if self.eot_seeds is not None and len(self.eot_seeds[0]) == batch:
            return noise if noise is not None else self.bound_noise, [s for d in self.eot_seeds for s in d]
        seeds = torch.randint(0, SEED_HIGH, (self.config.eot * batch,)).tolist()
        return noise if noise is not None else self.model.make_noise(batch), seeds

    def _expected(
        self, x: Tensor, k: int, temperature: float, noise: list[Tensor] | None, posterior_sample: bool
    ) -> tuple[list[Tensor], list, list[Tensor]]:
        """(per Gaussian layer every draw's estimate, the k posteriors of x, the model's noise)."""
        B = x.shape[0]
        model_noise, seeds = self._draws(B, noise)
        zs, qs, res = self._chain(x, k, temperature, model_noise, seeds, posterior_sample)
        n = len(seeds) // B
        self.forward_passes += n * res.gradient_evals + 1  # the chains' gradient evaluations and the encoder
        return [z.view(n, B, *z.shape[1:]) for z in zs], qs, model_noise

    def reconstruct(
        self,
        x: Tensor,
        k: int | None = None,
        temperature: float = 0.1,
        noise: list[Tensor] | None = None,
        posterior_sample: bool = False,
    ) -> Tensor:
        """The mean over the draws of the defended reconstruction."""
        k = self._k(k)
        if not gaussian_layers(self.model, k):  # nothing to defend: one pass of the model
            self.forward_passes += 1
            return self.model.reconstruct(
                x, k, temperature, self._draws(x.shape[0], noise)[0], posterior_sample=posterior_sample
            )
        zs, _, model_noise = self._expected(x, k, temperature, noise, posterior_sample)
        n = zs[0].shape[0]
        xs = x.repeat(n, 1, 1, 1)
        rep = [t.repeat(n, *([1] * (t.dim() - 1))) for t in model_noise]
        mean = self.model.latent_log_joint(xs, [z.flatten(0, 1) for z in zs], temperature, rep).mean
        self.forward_passes += n  # each draw's decoding pass
        return mean.view(n, *x.shape).mean(0)

    def encode(self, x: Tensor, k: int | None = None, sample: bool = False, noise: list[Tensor] | None = None) -> list:
        """The top k posteriors with each Gaussian layer's mean at the draws' mean estimate."""
        k = self._k(k)
        layers = gaussian_layers(self.model, k)
        if not layers:
            self.forward_passes += 1
            return self.model.encode(x, k)
        zs, qs, _ = self._expected(x, k, self.temperature, noise, sample)
        moved = dict(zip(layers, (z.mean(0) for z in zs)))
        return [DiagGaussian(moved[i], q.logvar) if i in moved else q for i, q in enumerate(qs)]


class HMCDefence(Defence):
    """The HMC defence with its settings (:class:`HMCConfig`)."""

    name = "hmc"
    stochastic = True
    wraps = (
        "the posterior of the top-k Gaussian latent layers: HMC towards p(z | x) from the encoder's posterior "
        "(a quantised context layer is left as it is)"
    )

    def __init__(self, config: HMCConfig | None = None):
        self.config = config or HMCConfig()

    def settings(self) -> dict[str, float]:
        c = self.config
        return {
            "steps": c.steps,
            "leapfrog": c.leapfrog,
            "adapt": float(c.step_size is None),
            "step_size": c.step_size if c.step_size is not None else c.init_step_size,
            "target_accept": c.target_accept,
            "burn_in": c.burn_in,
            "eot": c.eot,
            "accept_grad_straight_through": float(c.accept_grad == "straight-through"),
        }

    def wrap(self, model: nn.Module, temperature: float) -> DefendedModel:
        return DefendedModel(model, self.config, temperature)

    def attack_view(
        self, model: nn.Module, temperature: float, noise: list | None = None, eot_seeds: list[list[int]] | None = None
    ) -> AttackView:
        if eot_seeds is not None and len(eot_seeds) != self.config.eot:
            raise ValueError(f"need {self.config.eot} draws of chain seeds, got {len(eot_seeds)}")
        return AttackView(model, self.config, temperature, noise, eot_seeds)

    def passes_per_image(self, model: nn.Module, k: int) -> int:
        if not gaussian_layers(model, k):
            return 0
        return 1 + self.config.steps * self.config.leapfrog + 2

    def with_settings(self, **changes) -> HMCDefence:
        """A copy with some settings changed (validated)."""
        return HMCDefence(dataclasses.replace(self.config, **changes))
