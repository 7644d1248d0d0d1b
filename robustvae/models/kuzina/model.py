"""Kuzina & Tomczak's own ladder VAE and DCT-VAE (``arch="kuzina-ladder"``), written from their SPEC.

``model.context == "dct"`` gives their DCT-VAE: layer 1 is the quantised 2^b-level DCT
context (:class:`~robustvae.models.kuzina.context.KuzinaDCTContext`) under their diffusion
prior (:class:`~robustvae.models.kuzina.prior.KuzinaDiffusionPrior`), injected at the top
and, with ``context_every_scale``, again after every change of scale. ``"none"`` gives
their plain ladder VAE, whose top prior is the prior net applied to the constant s_L = 0.

The contract (:mod:`robustvae.models.contract`) as for the other families, with:

* images in [0, 1] are grey; with ``target_binarisation="model"`` the Bernoulli target
  is drawn afresh inside every :meth:`elbo` and estimator call, as their loss does;
* the context's dither: off in :meth:`encode`, :meth:`reconstruct` and attacks unless
  ``context_dither`` is set (then averaged over ``context_eot_draws`` fixed draws,
  :mod:`robustvae.models.kuzina.eot`); always on in :meth:`elbo` and both estimators (their code);
* :meth:`elbo` is their training (train mode) or validation (eval mode) objective;
* two estimators of -log p(x) (``model.estimators``): :meth:`nll_iwae`, the true IWAE
  bound (:meth:`log_importance_weights`: log p(x, z) - log q(z | x), the dither's
  distribution as the context's posterior and a diffusion trajectory as its latent),
  and :meth:`nll_authors`, their estimate (analytic KLs, not a bound).

:meth:`authors_pass` replays a given set of random draws (:class:`Draws`): the fixture tests
teacher-force it with the draws recorded from the authors' code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustvae.config import ModelConfig
from robustvae.models import rng
from robustvae.models.blocks import conv, hidden_width
from robustvae.models.contract import ELBOResult, LayerInfo
from robustvae.models.distributions import DiagGaussian, PointMass, sum_except_batch
from robustvae.models.kuzina.context import KuzinaDCTContext, signed_image
from robustvae.models.kuzina.eot import DrawAverage, dither_draws
from robustvae.models.kuzina.layers import DecoderBlock2x3, EncoderBlock, PriorNet, kuzina_logvar
from robustvae.models.kuzina.likelihood import likelihood, num_params
from robustvae.models.kuzina.prior import KuzinaDiffusionPrior
from robustvae.models.vdvae import VDVAE

IS_REPEATS = 10  # their test-mode importance samples of the diffusion bound


@dataclass
class Draws:
    """The random numbers of one pass; None draws them afresh."""

    dither: Tensor | None = None  # (B, C, c, c) U[0, 1) of the quantiser
    ddgm: Tensor | None = (
        None  # (R, T, B, C, c, c) diffusion noise: R = 1 (val), IS_REPEATS (test); (B, C, c, c) (train)
    )
    eps: list[Tensor] | None = None  # one standard-normal tensor per Gaussian layer
    target: Tensor | None = None  # the binarised target


@dataclass
class _TopDown:
    """The ladder's top-down pass: final decoder features, and per Gaussian layer p, q (None: from p) and z."""

    state: Tensor
    priors: list[DiagGaussian]
    posteriors: list[DiagGaussian | None]
    zs: list[Tensor]


@dataclass
class Pass:
    """What one forward pass computed: per-layer terms, latents and the decoder output."""

    kl: Tensor  # (B, L): column 0 of a DCT model is -log p(context) as estimated by the pass's mode
    log_px: Tensor  # (B,)
    priors: list[DiagGaussian]
    posteriors: list[DiagGaussian | None]
    zs: list[Tensor]
    logits: Tensor
    context: Tensor | None = None  # the quantised context
    state: Tensor | None = None  # decoder features before the output convolution


def _widths(cfg: ModelConfig) -> list[int]:
    """Channels per latent scale, finest first (their num_ch)."""
    out = [cfg.channels]
    for _ in cfg.latents[1:]:
        out.append(int(out[-1] * cfg.scale_channel_mult))
    return out


class Encoder(nn.Module):
    """Bottom-up: a 1x1 convolution, then gated residual blocks (one per latent, or per scale), pooled per scale."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        widths = _widths(cfg)
        self.pre_process = nn.Sequential(conv(cfg.image_channels, widths[0], 1))
        blocks, self.repeats = [], []
        prev_res = cfg.image_size
        for s, (res, n) in enumerate(cfg.latents):
            for j in range(1 if cfg.encoder_per_scale else n):
                cin = widths[s - 1] if s > 0 and j == 0 else widths[s]
                block = [EncoderBlock(cin, hidden_width(cin, cfg.hidden, cfg.channels), widths[s], cfg.weight_norm)]
                if j == 0:
                    block.append(nn.AvgPool2d(prev_res // res))
                blocks.append(nn.Sequential(*block))
                self.repeats.append(n if cfg.encoder_per_scale else 1)
            prev_res = res
        self.encoder_blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Features for every Gaussian layer, top layer first."""
        z = signed_image(x) * 127.5 + 127.5
        h = self.pre_process((z - self.cfg.pixel_mean) / self.cfg.pixel_std)
        feats = []
        for block, n in zip(self.encoder_blocks, self.repeats):
            h = block(h)
            feats += [h] * n
        return feats[::-1]


class LadderBlock(nn.Module):
    """One Gaussian layer: prior net on s_dec, posterior net on s_enc + s_dec, z projection, residual block."""

    def __init__(self, cin: int, cout: int, width: int, cfg: ModelConfig):
        super().__init__()
        hid, wn = hidden_width(cin, cfg.hidden, cfg.channels), cfg.weight_norm
        self.width = width
        self.z_up = conv(width, cin, 1)
        self.resnet = nn.Sequential(DecoderBlock2x3(cin, hid, cout, wn, residual=True))
        self.s_to_p = PriorNet(cin, hid, 2 * width + cin, wn)
        self.s_to_q = DecoderBlock2x3(cin, hid, 2 * width, wn, residual=False)

    def prior(self, s_dec: Tensor) -> tuple[DiagGaussian, Tensor]:
        """p(z | s_dec) and the prior features h that join s_dec."""
        mu, raw, h = self.s_to_p(s_dec).split([self.width, self.width, s_dec.shape[1]], 1)
        return DiagGaussian(mu.float(), kuzina_logvar(raw.float())), h  # distributions in float32 under autocast

    def posterior(self, s_enc: Tensor, s_dec: Tensor) -> DiagGaussian:
        mu, raw = self.s_to_q(s_enc + s_dec).float().chunk(2, 1)
        return DiagGaussian(mu, kuzina_logvar(raw))


class ContextBlock(nn.Module):
    """The context: its codec (scale) and the injection of the decoded image at the top."""

    def __init__(self, cfg: ModelConfig, top_channels: int, top_res: int):
        super().__init__()
        C = cfg.image_channels
        self.codec = KuzinaDCTContext(C, cfg.image_size, cfg.context_size, cfg.context_bits)
        self.posprocess_block = nn.Sequential(nn.AvgPool2d(cfg.image_size // top_res), conv(C, top_channels, 3))


class Decoder(nn.Module):
    """Top-down: s_L, the context block (DCT), the ladder blocks, the re-injections and the output convolution."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        widths = _widths(cfg)
        scales = list(zip(cfg.latents, widths))[::-1]  # coarse -> fine
        (top_res, _), top_ch = scales[0]
        self.register_buffer("s_L", torch.zeros(1, top_ch, top_res, top_res))
        blocks: list[nn.Module] = [ContextBlock(cfg, top_ch, top_res)] if cfg.context != "none" else []
        self.plan: list[int | None] = []  # per ladder block: the resolution it upsamples to (None: stays)
        for s, ((_res, n), ch) in enumerate(scales):
            nxt = scales[s + 1] if s + 1 < len(scales) else None
            for j in range(n):
                last = j == n - 1
                cout = nxt[1] if last and nxt else ch
                blocks.append(LadderBlock(ch, cout, cfg.z_dim, cfg))
                self.plan.append((nxt[0][0] if nxt else cfg.image_size) if last else None)
        self.decoder_blocks = nn.ModuleList(blocks)
        inject = cfg.context != "none" and cfg.context_every_scale
        self.z_L_up = (
            nn.ModuleList(
                nn.Sequential(nn.AvgPool2d(cfg.image_size // res), conv(cfg.image_channels, ch, 3))
                for (res, _), ch in scales[1:]
            )
            if inject
            else nn.ModuleList()
        )
        n_out = num_params(cfg.likelihood, cfg.image_channels, cfg.num_mixtures)
        self.post_process = nn.Sequential(conv(widths[0], n_out, 3))
        if cfg.context != "none":
            C, c = cfg.image_channels, cfg.context_size
            self.z_L_prior = KuzinaDiffusionPrior(
                (C, c, c),
                cfg.context_bits,
                cfg.diffusion_steps,
                self.decoder_blocks[0].codec.output_values(),
                schedule=cfg.diffusion_schedule,
                beta_start=cfg.diffusion_beta_start,
                beta_end=cfg.diffusion_beta_end,
                channels=cfg.diffusion_channels,
                scales=cfg.diffusion_scales,
                res_blocks=cfg.diffusion_res_blocks,
                dropout=cfg.diffusion_dropout,
            )


class KuzinaLadderVAE(nn.Module):
    """The authors' ladder VAE (``context="none"``) or DCT-VAE (``context="dct"``); see the module docstring."""

    arch = "kuzina-ladder"
    estimators = ("iwae", "authors")
    iw_shared_noise = 1  # iw_noise: the binarisation draw, one per image

    # the contract's plumbing is VDVAE's, unchanged (input checks, noise, IWAE from the weights, layout)
    _check_input = VDVAE._check_input
    _check_k = VDVAE._check_k
    _elbo_result = VDVAE._elbo_result
    make_noise = VDVAE.make_noise
    nll_iwae = VDVAE.nll_iwae
    use_channels_last = VDVAE.use_channels_last
    num_layers = VDVAE.num_layers
    num_pixels = VDVAE.num_pixels
    layer_shapes = VDVAE.layer_shapes
    device = VDVAE.device

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.has_context = cfg.context != "none"
        self.dither = cfg.context_dither  # attack-facing calls: no dither, or EOT over fixed draws
        self.eot_draws = cfg.context_eot_draws
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        scales = [(res, n) for res, n in reversed(cfg.latents)]
        gaussian = [(res, (cfg.z_dim, res, res)) for res, n in scales for _ in range(n)]
        top = (
            [
                LayerInfo(
                    1,
                    cfg.context_size,
                    (cfg.image_channels, cfg.context_size, cfg.context_size),
                    kind="context",
                    levels=self.codec.reachable_levels,
                )
            ]
            if self.has_context
            else []
        )
        self.layers = top + [LayerInfo(len(top) + i + 1, r, s) for i, (r, s) in enumerate(gaussian)]
        self._authors_init()
        self.use_channels_last(False)

    @torch.no_grad()
    def _authors_init(self) -> None:
        """Their initialisation: posterior nets' last weights U(-1, 1), residual and z projections x sqrt(1/L)."""
        scale = math.sqrt(1.0 / len(self.ladder))
        for blk in self.ladder:
            nn.init.uniform_(blk.s_to_q.net[-1].weight, -1, 1)
            blk.resnet[-1].net[-1].weight.mul_(scale)
            blk.z_up.weight.mul_(scale)
        self.decoder.post_process[0].bias.zero_()

    # ------------------------------------------------------------------ structure

    @property
    def ladder(self) -> list[LadderBlock]:
        """The Gaussian layers' blocks, top first."""
        return list(self.decoder.decoder_blocks)[1:] if self.has_context else list(self.decoder.decoder_blocks)

    @property
    def codec(self) -> KuzinaDCTContext:
        return self.decoder.decoder_blocks[0].codec

    @property
    def prior(self) -> KuzinaDiffusionPrior:
        return self.decoder.z_L_prior

    def _noise_shapes(self) -> list[tuple[int, ...]]:
        top = [self.prior.noise_shape] if self.has_context else []
        return top + [info.shape for info in self.layers[len(top) :]]

    def fit_data(self, train_images: Tensor) -> None:
        """Fit the context scale on the training split (their dataset's floor rule); nothing for the plain ladder."""
        if self.has_context:
            self.codec.fit(train_images)

    def likelihood(self, state: Tensor):
        cfg = self.cfg
        return likelihood(
            self.decoder.post_process(state).float(), cfg.likelihood, cfg.image_channels, cfg.num_mixtures
        )

    def binarise(self, x: Tensor, u: Tensor | None = None) -> Tensor:
        """The likelihood's target: a Bernoulli draw of a grey image when the model binarises, else x.

        ``u``: the draw's U[0, 1) numbers (as x), fresh ones when None.
        """
        if self.cfg.likelihood == "bernoulli" and self.cfg.target_binarisation == "model":
            return ((u if u is not None else rng.rand_like(x)) < x).to(x.dtype)
        return x

    # ------------------------------------------------------------------ passes

    def _context_image(self, y: Tensor) -> Tensor:
        """The decoded context on [-1, 1]: 2 clamp(IDCT(y * scale), 0, 1) - 1."""
        return 2 * self.codec.decode(y) - 1

    def _top_down(
        self,
        batch: int,
        feats: list[Tensor] | None,
        ctx_img: Tensor | None,
        *,
        n_post: int,
        sample_q: bool,
        noise: list[Tensor] | None = None,
        temperature: float = 1.0,
        stop_after: int | None = None,
    ) -> _TopDown:
        """The ladder top-down: layers < ``n_post`` from q (its mean, or a sample), the rest from p at ``temperature``."""
        dec = self.decoder
        s = dec.s_L.expand(batch, -1, -1, -1)
        if ctx_img is not None:
            s = s + dec.decoder_blocks[0].posprocess_block(ctx_img)
        priors, posts, zs, inject = [], [], [], iter(dec.z_L_up)
        for i, (blk, up) in enumerate(zip(self.ladder, dec.plan)):
            p, h = blk.prior(s)
            q = blk.posterior(feats[i], s) if i < n_post else None
            s = s + h
            eps = noise[i] if noise is not None else None
            z = (q.sample(eps) if sample_q else q.mean) if q is not None else p.sample(eps, temperature)
            priors.append(p), posts.append(q), zs.append(z)
            if stop_after is not None and i + 1 >= stop_after:
                break
            s = blk.resnet(s + blk.z_up(z))
            if up is not None and up != s.shape[-1]:
                s = F.interpolate(s, size=(up, up), mode="nearest")
                nxt = next(inject, None) if i + 1 < len(dec.plan) else None
                if nxt is not None and ctx_img is not None:
                    s = s + nxt(ctx_img)
        return _TopDown(s, priors, posts, zs)

    def _context_logp(self, y: Tensor, mode: str, noise: Tensor | None) -> Tensor:
        """log p(context) as their code estimates it: one step x T (train), all steps (val), IS over repeats (test)."""
        if mode == "test":
            return self.prior.is_log_prob(y, IS_REPEATS, noise)
        if mode == "val":
            return -self.prior.bound(y, all_steps=True, noise=noise[0] if noise is not None else None)
        return -self.prior.bound(y, all_steps=False, noise=noise)

    def authors_pass(self, x: Tensor, mode: str = "val", draws: Draws | None = None) -> Pass:
        """One forward pass and loss terms of their code in ``mode`` train | val | test, replaying ``draws``."""
        if mode not in ("train", "val", "test"):
            raise ValueError(f"mode must be train, val or test, got {mode!r}")
        d = draws or Draws()
        feats = self.encoder(x)
        y = ctx_img = None
        if self.has_context:
            y = self.codec(x, dither=d.dither if d.dither is not None else True).value
            ctx_img = self._context_image(y)
            ctx_logp = self._context_logp(y, mode, d.ddgm)
        td = self._top_down(x.shape[0], feats, ctx_img, n_post=len(self.ladder), sample_q=True, noise=d.eps)
        kl = torch.stack([sum_except_batch(q.kl(p)) for q, p in zip(td.posteriors, td.priors)], 1)
        if self.has_context:
            kl = torch.cat([-ctx_logp[:, None], kl], 1)
        logits = self.decoder.post_process(td.state)
        target = d.target if d.target is not None else self.binarise(x)
        log_px = self.likelihood(td.state).log_prob(target)
        return Pass(kl, log_px, td.priors, td.posteriors, td.zs, logits, y, td.state)

    # ------------------------------------------------------------------ the contract

    def forward(self, x: Tensor) -> ELBOResult:
        return self.elbo(x)

    def elbo(self, x: Tensor) -> ELBOResult:
        """Their objective: train-mode terms in training, validation-mode terms in eval mode (nats)."""
        self._check_input(x)
        res = self.authors_pass(x, "train" if self.training else "val")
        return self._elbo_result(res.kl, -res.log_px)

    def _repeat(self, n: int, *ts: Tensor) -> list[Tensor]:
        return [t.repeat(n, *([1] * (t.dim() - 1))) for t in ts]

    def authors_log_weights(
        self, x: Tensor, num_samples: int, chunk: int | None = None, draws: list[Draws] | None = None
    ) -> Tensor:
        """Their log-weights (K, B): log p(x_b | z_k) - sum of analytic KLs_k, one binarisation for all k.

        ``draws`` (one per k, each with the shared ``target``) replays recorded passes instead.
        """
        self._check_input(x)
        if draws is not None:
            return torch.stack([(r.log_px - r.kl.sum(1)) for r in (self.authors_pass(x, "test", d) for d in draws)])
        B = x.shape[0]
        # each pass runs the diffusion network IS_REPEATS x T times per image: keep a pass to about 256 images
        chunk = max(1, min(chunk or num_samples, 256 // B))
        target, out, done = self.binarise(x), [], 0
        while done < num_samples:
            n = min(chunk, num_samples - done)
            xr, tr = self._repeat(n, x, target)
            res = self.authors_pass(xr, "test", Draws(target=tr))
            out.append((res.log_px - res.kl.sum(1)).view(n, B))
            done += n
        return torch.cat(out)

    def nll_authors(self, x: Tensor, num_samples: int, chunk: int | None = None) -> Tensor:
        """Their NLL estimate -(logsumexp_k log w_k - log K) with :meth:`authors_log_weights`: not a bound."""
        return -(torch.logsumexp(self.authors_log_weights(x, num_samples, chunk), 0) - math.log(num_samples))

    def log_importance_weights(
        self, x: Tensor, num_samples: int, chunk: int | None = None, noise: list[Tensor] | None = None
    ) -> Tensor:
        """log p(x, z) - log q(z | x) at ``num_samples`` joint samples (K, B): the true IWAE bound's weights.

        The context's posterior is the distribution the dither induces on the quantised
        values, its prior the diffusion model along one sampled trajectory (p(y0 | y1)
        normalised over the context's values, p(y_T) = N(0, I)); one binarisation for all k.
        ``noise`` (:meth:`iw_noise` of each image stacked on dim 1) drives every draw, so the
        weights do not depend on ``chunk`` or on the batch; without it they come from torch's generator.
        """
        self._check_input(x)
        B, chunk = x.shape[0], chunk or num_samples
        target = self.binarise(x, noise[0][0] if noise is not None else None)
        feats1 = self.encoder(x)
        v1 = self.codec.normalise(x) if self.has_context else None
        out, done = [], 0
        while done < num_samples:
            n = min(chunk, num_samples - done)
            draw = self._iw_draws(noise, done, n) if noise is not None else {}
            feats = self._repeat(n, *feats1)
            logw, ctx_img = self._repeat(n, target)[0].new_zeros(n * B), None
            if self.has_context:
                (v,) = self._repeat(n, v1)
                y = self.codec.quantise(v, dither=draw.get("dither", True))
                ctx_img = self._context_image(y)
                logw = self.prior.log_weight(y, draw.get("trajectory")) - sum_except_batch(self.codec.log_prob(v, y))
            td = self._top_down(n * B, feats, ctx_img, n_post=len(self.ladder), sample_q=True, noise=draw.get("eps"))
            logw = logw + self.likelihood(td.state).log_prob(self._repeat(n, target)[0])
            for q, p, z in zip(td.posteriors, td.priors, td.zs):
                logw = logw + sum_except_batch(p.log_prob(z) - q.log_prob(z))
            out.append(logw.view(n, B))
            done += n
        return torch.cat(out, 0)

    def _iw_draws(self, noise: list[Tensor], start: int, n: int) -> dict[str, Tensor | list[Tensor]]:
        """Samples ``start:start + n`` of stacked :meth:`iw_noise` in the sample-major batch layout of a pass."""

        def flat(t: Tensor) -> Tensor:  # (n, B, *s) -> (n B, *s)
            return t[start : start + n].reshape(-1, *t.shape[2:])

        per_sample = noise[self.iw_shared_noise :]
        out: dict[str, Tensor | list[Tensor]] = {}
        if self.has_context:
            dither, traj, *per_sample = per_sample
            out["dither"] = flat(dither)
            t = traj[start : start + n].permute(2, 0, 1, *range(3, traj.dim()))  # (n, B, T, ...) -> (T, n, B, ...)
            out["trajectory"] = t.reshape(t.shape[0], -1, *t.shape[3:])
        out["eps"] = [flat(e) for e in per_sample]
        return out

    def iw_noise(self, num_samples: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """One image's importance-sampling noise: the binarisation's U[0, 1) (1, C, H, W); for a DCT model the
        dither's U[0, 1) (K, C, c, c) and the diffusion trajectory's (K, T, C, c, c); then (K, *shape) per
        Gaussian layer."""
        K, out = (
            num_samples,
            [torch.rand((1, self.cfg.image_channels, self.cfg.image_size, self.cfg.image_size), generator=generator)],
        )
        if self.has_context:
            shape = self.layers[0].shape
            out += [
                torch.rand((K, *shape), generator=generator),
                torch.randn((K, self.prior.steps, *shape), generator=generator),
            ]
        return out + [
            torch.randn((K, *info.shape), generator=generator) for info in self.layers if not info.deterministic
        ]

    def _split_noise(self, noise: list[Tensor] | None) -> tuple[Tensor | None, list[Tensor] | None]:
        """(the context's noise, the Gaussian layers' noise) of a full noise list."""
        if noise is None:
            return None, None
        return (noise[0], noise[1:]) if self.has_context else (None, noise)

    def _eot(self, x: Tensor, noise: list[Tensor] | None) -> tuple[int, Tensor, list[Tensor] | None, bool | Tensor]:
        """(draws n, x and noise repeated n times draw-major, the context's dither): n = 1, no dither, when off."""
        if not (self.has_context and self.dither):
            return 1, x, noise, False
        n, B = self.eot_draws, x.shape[0]
        u = dither_draws(n, tuple(self.layers[0].shape), x.device).expand(n, B, *self.layers[0].shape)
        noise = [self._repeat(n, t)[0] for t in noise] if noise is not None else None
        return n, self._repeat(n, x)[0], noise, u.reshape(n * B, *self.layers[0].shape)

    def encode(
        self, x: Tensor, k: int | None = None, sample: bool = False, noise: list[Tensor] | None = None
    ) -> list[PointMass | DiagGaussian | DrawAverage]:
        """Posteriors of the top ``k`` layers: the context's point mass (DCT), then the Gaussian layers'.

        With ``context_dither`` each comes averaged over the fixed dither draws (:class:`DrawAverage`).
        """
        self._check_input(x)
        k = self._check_k(k)
        if k == 0:
            return []
        _, gnoise = self._split_noise(noise)
        n, x, gnoise, dither = self._eot(x, gnoise)
        out: list = []
        ctx_img = None
        if self.has_context:
            code = self.codec(x, dither=dither)
            out.append(PointMass(code.value, code.pre_quant))
            ctx_img = self._context_image(code.value)
        kk = k - len(out)
        if kk > 0:
            td = self._top_down(
                x.shape[0], self.encoder(x), ctx_img, n_post=kk, sample_q=sample, noise=gnoise, stop_after=kk
            )
            out += [q for q in td.posteriors if q is not None]
        return [DrawAverage(q, n) for q in out] if n > 1 else out

    def reconstruct(
        self,
        x: Tensor,
        k: int | None = None,
        temperature: float = 0.1,
        noise: list[Tensor] | None = None,
        posterior_sample: bool = False,
    ) -> Tensor:
        """Mean image: the top ``k`` layers at their posterior means (k = 0: a prior context), the rest from p.

        ``posterior_sample`` draws the Gaussian layers among the top k from their posteriors
        (driven by ``noise``); the context is its quantised value. With ``context_dither``:
        the mean over the fixed dither draws.
        """
        self._check_input(x)
        k = self._check_k(k)
        B = x.shape[0]
        n, x, noise, dither = self._eot(x, noise)
        cnoise, gnoise = self._split_noise(noise)
        ctx_img, n_post = None, k
        if self.has_context:
            y = self.codec(x, dither=dither).value if k > 0 else self._prior_context(x.shape[0], cnoise)
            ctx_img, n_post = self._context_image(y), max(k - 1, 0)
        feats = self.encoder(x) if n_post > 0 else None
        td = self._top_down(
            x.shape[0], feats, ctx_img, n_post=n_post, sample_q=posterior_sample, noise=gnoise, temperature=temperature
        )
        return self.likelihood(td.state).mean.view(n, B, *x.shape[1:]).mean(0)

    def _prior_context(self, batch: int, noise: Tensor | None) -> Tensor:
        """A context from the diffusion prior, quantised with a dither derived from the noise's last slot."""
        if noise is None:
            noise = self.prior.make_noise(batch, self.s_device)
        y = self.prior.sample(batch, noise).clamp(-1, 1)
        return self.codec.quantise(y, dither=torch.special.ndtr(noise[:, -1]))

    @property
    def s_device(self) -> torch.device:
        return self.decoder.s_L.device

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, noise: list[Tensor] | None = None) -> Tensor:
        """``n`` samples: a context from the diffusion prior (DCT), the Gaussian layers at ``temperature``."""
        cnoise, gnoise = self._split_noise(noise)
        ctx_img = self._context_image(self._prior_context(n, cnoise)) if self.has_context else None
        td = self._top_down(n, None, ctx_img, n_post=0, sample_q=False, noise=gnoise, temperature=temperature)
        return self.likelihood(td.state).mean
