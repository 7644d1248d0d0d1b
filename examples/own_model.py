"""A small ladder VAE written outside robustvae, evaluated and attacked by it as ``examples.own_model:make``.

This file is the worked example of docs/own-model.md: a model robustvae did not build
satisfies robustvae's model contract (``robustvae.models.contract.HierarchicalVAE``),
and every command takes it by its factory's name::

    robustvae eval examples.own_model:make --data mnist-offline --out runs/own-eval.json
    robustvae attack examples.own_model:make --data mnist-offline --layers 1,2 --out runs/own-attack
    robustvae certify examples.own_model:make_with_context --data mnist-offline --out runs/own-certify

The model: 28x28 binary images (Bernoulli likelihood), two Gaussian latent layers,
z1 (2 x 7 x 7, the top) and z2 (2 x 14 x 14), top-down like a VDVAE:
p(z1) p(z2 | z1) p(x | z1, z2) and q(z1 | x) q(z2 | x, z1). ``make_with_context()``
puts a deterministic context on top (layer 1): the 4 x 4 lowest DCT frequencies of the
image quantised to 4 levels by robustvae's own codec (``robustvae.models.context.DCTContext``,
what ``robustvae certify`` analyses exactly), with a factorised categorical prior, and
feeds it to every layer below.

Weights: ``own_model.pt`` / ``own_model_context.pt`` beside this file, made by
``python examples/own_model.py --train`` (1,500 Adam steps of batch 64 on mnist-offline's
training split, seed 0; about two minutes of one CPU thread per model). The factories
load them with ``torch.load(..., weights_only=True)``. ``digits.npy`` beside them holds
the first 16 test digits of mnist-offline as uint8, (N, H, W, C): images to attack.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustvae.models import DiagGaussian, ELBOResult, LayerInfo, PointMass
from robustvae.models.context import DCTContext

HERE = Path(__file__).resolve().parent
Z1, Z2 = 2, 2  # latent channels of the top (7 x 7) and the bottom (14 x 14) layer


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


def _gaussian(params: Tensor) -> DiagGaussian:
    """(B, 2z, H, W) -> N(mean, exp(logvar)), the log-variance softly kept inside (-6, 6)."""
    mean, logvar = params.float().chunk(2, 1)
    return DiagGaussian(mean, 6 * torch.tanh(logvar / 6))


class LadderVAE(nn.Module):
    """Two Gaussian layers (and, with ``context_size``, a quantised DCT context on top) over 28x28 binary images."""

    arch = "example-ladder"
    iw_shared_noise = 0  # iw_noise: every tensor is per importance sample

    def __init__(self, hidden: int = 16, context_size: int = 0, context_bits: int = 2):
        super().__init__()
        # what robustvae reads of cfg: the image shape, the likelihood, and whether the model sees binarised images
        self.cfg = SimpleNamespace(image_channels=1, image_size=28, likelihood="bernoulli", binary=True)
        h = hidden
        self.enc14 = nn.Sequential(nn.Conv2d(1, h, 3, 2, 1), nn.SiLU(), _conv(h, h), nn.SiLU())
        self.enc7 = nn.Sequential(nn.Conv2d(h, h, 3, 2, 1), nn.SiLU(), _conv(h, h), nn.SiLU())
        self.q1, self.p1 = _conv(2 * h, 2 * Z1), _conv(h, 2 * Z1)
        self.dec7 = nn.Sequential(_conv(Z1 + h, h), nn.SiLU())
        self.up = nn.ConvTranspose2d(h, h, 4, 2, 1)  # 7 -> 14
        self.q2, self.p2 = _conv(2 * h, 2 * Z2), _conv(h, 2 * Z2)
        self.z2_proj = _conv(Z2, h, 1)
        self.out = nn.Sequential(nn.SiLU(), nn.ConvTranspose2d(h, h, 4, 2, 1), nn.SiLU(), _conv(h, 1))  # 14 -> 28
        self.hidden = h
        gaussian = [LayerInfo(1, 7, (Z1, 7, 7)), LayerInfo(2, 14, (Z2, 14, 14))]
        self.codec = None
        if context_size:
            self.codec = DCTContext(1, 28, context_size, context_bits)
            self.ctx_net = nn.Sequential(_conv(1, h), nn.SiLU())
            self.ctx_logits = nn.Parameter(torch.zeros(1, context_size, context_size, self.codec.levels))
            top = LayerInfo(1, context_size, (1, context_size, context_size), kind="context", levels=self.codec.levels)
            gaussian = [top] + [LayerInfo(i.index + 1, i.resolution, i.shape) for i in gaussian]
        self.layers = gaussian  # every stochastic layer, top first

    # ------------------------------------------------------------------ sizes

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_pixels(self) -> int:
        return 28 * 28

    @property
    def has_context(self) -> bool:
        return self.codec is not None

    def _device(self) -> torch.device:
        return self.q1.weight.device

    # ------------------------------------------------------------------ the context (make_with_context only)

    def _context_features(self, value: Tensor | None, batch: int) -> Tensor:
        """(B, hidden, 7, 7) features of the decoded context; zeros without a context."""
        if value is None:
            return torch.zeros(batch, self.hidden, 7, 7, device=self._device())
        return self.ctx_net(F.avg_pool2d(self.codec.decode(value) * 2 - 1, 4))

    def _context_nll(self, value: Tensor) -> Tensor:
        """-log p(context) in nats per image under the factorised categorical prior."""
        idx = ((value + 1) * (self.codec.levels - 1) / 2).round().long()  # levels -1, ..., 1 -> 0 .. levels-1
        logp = self.ctx_logits.log_softmax(-1).expand(value.shape[0], -1, -1, -1, -1)
        return -logp.gather(-1, idx.unsqueeze(-1)).flatten(1).sum(1)

    def _prior_context(self, noise: Tensor) -> Tensor:
        """A context drawn from the prior by inverse-CDF sampling, driven by standard-normal ``noise`` (B, 1, c, c)."""
        u = 0.5 * (1 + torch.erf(noise / math.sqrt(2)))  # uniform on (0, 1)
        cdf = self.ctx_logits.softmax(-1).cumsum(-1).expand(noise.shape[0], -1, -1, -1, -1)
        idx = (u.unsqueeze(-1) > cdf).sum(-1).clamp(max=self.codec.levels - 1)
        return idx.float() * 2 / (self.codec.levels - 1) - 1

    # ------------------------------------------------------------------ the Gaussian ladder

    def _ladder(
        self,
        x: Tensor | None,
        ctx: Tensor | None,
        batch: int,
        n_post: int,
        noise: list[Tensor] | None,
        temperature: float = 1.0,
        posterior_sample: bool = False,
    ):
        """Top-down pass: the first ``n_post`` Gaussian layers from q (means, or samples driven by ``noise``), the rest
        from p at ``temperature``. Returns (Bernoulli logits, posteriors, priors, zs)."""
        c7 = self._context_features(ctx, batch)
        e14 = self.enc14(x * 2 - 1) if n_post else None
        e7 = self.enc7(e14) if n_post else None
        qs, ps, zs = [], [], []
        state = c7
        for j, (q_net, p_net) in enumerate(((self.q1, self.p1), (self.q2, self.p2))):
            if j == 1:
                state = self.up(self.dec7(torch.cat([zs[0], c7], 1)))
            p = _gaussian(p_net(state))
            q = _gaussian(q_net(torch.cat([state, e7 if j == 0 else e14], 1))) if j < n_post else None
            eps = noise[j] if noise is not None else torch.randn_like(p.mean)
            z = (q.sample(eps) if posterior_sample else q.mean) if q is not None else p.sample(eps, temperature)
            qs.append(q), ps.append(p), zs.append(z)
        return self.out(state + self.z2_proj(zs[1])), qs, ps, zs

    def _split(self, k: int) -> int:
        """Gaussian layers among the top ``k``."""
        return max(k - int(self.has_context), 0)

    def _check(self, x: Tensor, k: int | None) -> int:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"expected images of shape (B, 1, 28, 28) in [0, 1], got {tuple(x.shape)}")
        k = self.num_layers if k is None else k
        if not 0 <= k <= self.num_layers:
            raise ValueError(f"k must be in 0..{self.num_layers}, got {k}")
        return k

    def _gaussian_noise(self, noise: list[Tensor] | None) -> list[Tensor] | None:
        return noise[int(self.has_context) :] if noise is not None else None

    # ------------------------------------------------------------------ the contract

    def encode(self, x: Tensor, k: int | None = None, sample: bool = False, noise: list[Tensor] | None = None) -> list:
        """Posteriors of the top k layers, top first (the context's a PointMass); each given the means above it."""
        k = self._check(x, k)
        out = []
        ctx = None
        if self.has_context and k:
            code = self.codec(x)
            ctx = code.value
            out.append(PointMass(code.value, code.pre_quant))
        n = self._split(k)
        if n:
            _, qs, _, _ = self._ladder(x, ctx, x.shape[0], n, self._gaussian_noise(noise), posterior_sample=sample)
            out += qs[:n]
        return out

    def reconstruct(
        self,
        x: Tensor,
        k: int | None = None,
        temperature: float = 0.1,
        noise: list[Tensor] | None = None,
        posterior_sample: bool = False,
    ) -> Tensor:
        """Mean image: the top k layers from the posterior, the rest from the prior at ``temperature`` (``noise``)."""
        k = self._check(x, k)
        noise = noise if noise is not None else self.make_noise(x.shape[0])
        ctx = None
        if self.has_context:
            ctx = self.codec(x).value if k else self._prior_context(noise[0])
        logits, *_ = self._ladder(
            x, ctx, x.shape[0], self._split(k), self._gaussian_noise(noise), temperature, posterior_sample
        )
        return torch.sigmoid(logits)

    def elbo(self, x: Tensor) -> ELBOResult:
        """Negative-ELBO terms with one posterior sample per Gaussian layer (analytic KLs), in nats."""
        self._check(x, None)
        ctx = self.codec(x).value if self.has_context else None
        logits, qs, ps, _ = self._ladder(x, ctx, x.shape[0], 2, None, posterior_sample=True)
        kl = torch.stack([q.kl(p).flatten(1).sum(1) for q, p in zip(qs, ps)], 1)
        if ctx is not None:
            kl = torch.cat([self._context_nll(ctx)[:, None], kl], 1)
        recon = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="none").flatten(1).sum(1)
        nelbo = recon + kl.sum(1)
        return ELBOResult(kl=kl, recon=recon, nelbo=nelbo, bpd=nelbo / (self.num_pixels * math.log(2)))

    def forward(self, x: Tensor) -> ELBOResult:
        return self.elbo(x)

    def log_importance_weights(
        self, x: Tensor, num_samples: int, chunk: int | None = None, noise: list[Tensor] | None = None
    ) -> Tensor:
        """log p(x | z) + log p(z) - log q(z | x) at ``num_samples`` joint posterior samples: (K, B).

        ``noise``: per Gaussian layer a (K, B, *shape) standard-normal tensor. The context is
        deterministic given x, so its -log p(context) is subtracted from every weight.
        """
        self._check(x, None)
        B, K = x.shape[0], num_samples
        ctx = self.codec(x).value if self.has_context else None
        xr = x.repeat(K, 1, 1, 1)  # sample-major: row s * B + b is image b's sample s
        eps = [n.reshape(K * B, *n.shape[2:]).to(x.device) for n in noise] if noise is not None else None
        logits, qs, ps, zs = self._ladder(
            xr, ctx.repeat(K, 1, 1, 1) if ctx is not None else None, K * B, 2, eps, posterior_sample=True
        )
        logw = -F.binary_cross_entropy_with_logits(logits.float(), xr, reduction="none").flatten(1).sum(1)
        for q, p, z in zip(qs, ps, zs):
            logw = logw + (p.log_prob(z) - q.log_prob(z)).flatten(1).sum(1)
        logw = logw.view(K, B)
        return logw - self._context_nll(ctx) if ctx is not None else logw

    def iw_noise(self, num_samples: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Standard-normal noise of ``num_samples`` importance samples of one image: (K, *shape) per Gaussian layer."""
        return [
            torch.randn((num_samples, *info.shape), generator=generator)
            for info in self.layers
            if not info.deterministic
        ]

    def nll_iwae(self, x: Tensor, num_samples: int, chunk: int | None = None) -> Tensor:
        """Importance-sampled upper bound on -log p(x), in nats."""
        logw = self.log_importance_weights(x, num_samples, chunk)
        return -(torch.logsumexp(logw, 0) - math.log(num_samples))

    def make_noise(self, batch: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Standard-normal noise for every layer (the context's drives its prior sample), on the model's device."""
        return [torch.randn((batch, *info.shape), generator=generator).to(self._device()) for info in self.layers]

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, noise: list[Tensor] | None = None) -> Tensor:
        """``n`` ancestral samples (mean images)."""
        noise = noise if noise is not None else self.make_noise(n)
        ctx = self._prior_context(noise[0]) if self.has_context else None
        logits, *_ = self._ladder(None, ctx, n, 0, self._gaussian_noise(noise), temperature)
        return torch.sigmoid(logits)

    def fit_data(self, train_images: Tensor) -> None:
        """The context's scale: the largest |coefficient| over the training images (nothing to do without one)."""
        if self.codec is not None:
            self.codec.fit(train_images)

    def use_channels_last(self, enabled: bool = True) -> LadderVAE:
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        return self


# ---------------------------------------------------------------------- the factories robustvae calls


def _load(model: LadderVAE, name: str) -> LadderVAE:
    path = HERE / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; make it with: python examples/own_model.py --train")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def make() -> LadderVAE:
    """The two-layer ladder VAE with its trained weights."""
    return _load(LadderVAE(), "own_model.pt")


def make_with_context() -> LadderVAE:
    """The same ladder under a 1 x 4 x 4 quantised DCT context (4 levels), with its trained weights."""
    return _load(LadderVAE(context_size=4), "own_model_context.pt")


def train(model: LadderVAE, steps: int = 1500, batch: int = 64, seed: int = 0) -> LadderVAE:
    """Maximise the ELBO on mnist-offline's training split, binarised afresh every batch."""
    from robustvae.config import DataConfig
    from robustvae.data import load_dataset

    torch.manual_seed(seed)
    images = load_dataset(DataConfig("mnist-offline")).train.images
    model.fit_data(images)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=g)
        x = torch.bernoulli(images[idx].float(), generator=g)
        loss = model.elbo(x).nelbo.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"step {step}: -ELBO {loss.item():.2f} nats")
    return model.eval()


if __name__ == "__main__":  # python examples/own_model.py --train
    import sys

    if sys.argv[1:] != ["--train"]:
        sys.exit("usage: python examples/own_model.py --train  (writes own_model.pt and own_model_context.pt here)")
    for net, name in ((LadderVAE(), "own_model.pt"), (LadderVAE(context_size=4), "own_model_context.pt")):
        print(f"training {name}")
        torch.save(train(net).state_dict(), HERE / name)
