"""Typed, frozen configuration.

A run is fully described by a :class:`Config` (data + model + train). Configs are
built from presets (``robustvae.registry``), changed with ``--set section.key=value``
overrides, validated on construction, and saved as JSON next to every checkpoint
and run. Unknown keys and ill-typed values are rejected with a message that names
the key and what it accepts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from robustvae.errors import ConfigError
from robustvae.protocol import NORMS

LIKELIHOODS = ("bernoulli", "dmol")
ACTIVATIONS = ("silu", "gelu", "relu")
CONTEXTS = ("none", "dct", "downsample")
CONTEXT_ARCHS = ("dctvae", "kuzina-ladder")  # architectures that may have a context layer
OPENAI_ARCH = "openai-vdvae"  # the architecture that reads enc_layout, widths and bias_max_res
SCHEDULES = ("linear", "cosine")
BINARISATION = ("data", "model")
MAX_NAME = 200  # characters of a config's name (a label: it becomes part of file names)
MAX_DIFFUSION_STEPS = 100_000
MAX_POINTS = 10_000_000  # attacked or certified points: planning makes a unit per batch of them  # the schedule is built in Python at construction: bounded before any model is built


def _fail(msg: str) -> None:
    raise ConfigError(msg)


def eps_problem(norm: str, eps: float, pixels: int | None = None, name: str = "eps") -> str | None:
    """An attack budget that no threat model on [0, 1] images can have: non-finite, negative, or the whole box.

    L-inf: eps < 1 (at eps >= 1 every image of [0, 1] is in the ball). L2: eps below the
    diameter of the box, sqrt(pixels) for images of ``pixels`` values (C x H x W), when known.
    """
    if not math.isfinite(eps) or eps < 0:
        return f"{name} must be a finite number >= 0, got {eps!r}"
    if norm == "linf" and eps >= 1:
        return (
            f"{name} = {eps:g} is not below 1: at L-inf eps >= 1 every image in [0, 1] is reachable; "
            f"give an eps in [0, 1)"
        )
    if norm == "l2" and pixels is not None and eps >= math.sqrt(pixels):
        return (
            f"{name} = {eps:g} is not below {math.sqrt(pixels):.4g}, the L2 diameter of [0, 1]^{pixels} "
            f"(every image is reachable); give a smaller eps"
        )
    return None


def _check_points(points: int) -> None:
    """Points are test images: refused beyond any split's size before a run plans units for each of them."""
    if points > MAX_POINTS:
        _fail(f"points must be at most {MAX_POINTS:,} (more than any split holds), got {points:,}")


def _fail_if(problem: str | None) -> None:
    if problem:
        _fail(problem)


def _positive(name: str, value: float) -> None:
    if value <= 0:
        _fail(f"{name} must be positive, got {value!r}")


def check_numbers(obj: Any, prefix: str = "") -> None:
    """Every number of a config dataclass is finite (no NaN, no inf), every integer fits in 64 bits and every seed is
    >= 0, naming the field.

    Called first by each config's ``__post_init__``, so NaN never reaches a range check
    (``nan < 0`` is False) and no code path can build a config holding one.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, tuple) and all(isinstance(v, float) for v in value) and value:
                if not all(math.isfinite(v) for v in value):
                    _fail(f"{prefix}{f.name} must hold finite numbers, got {', '.join(map(str, value))}")
            continue
        if not math.isfinite(value):
            _fail(f"{prefix}{f.name} must be a finite number, got {value!r}")
        if isinstance(value, int) and not -(2**63) < value < 2**63:
            _fail(f"{prefix}{f.name} must fit in 64 bits, got {value:.3g}")
        if (f.name == "seed" or f.name.endswith("_seed")) and value < 0:
            _fail(f"{prefix}{f.name} must be >= 0, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where its files live, and how it is split."""

    name: str = "mnist-offline"
    data_dir: str | None = None  # None: $ROBUSTVAE_DATA or ~/.cache/robustvae/data
    download: bool = True  # torchvision / URL download when files are missing
    val_size: int | None = None  # None: the dataset's default
    split_seed: int = 0

    def __post_init__(self) -> None:
        check_numbers(self, "data.")
        if self.val_size is not None and self.val_size < 1:
            _fail(f"data.val_size must be at least 1, got {self.val_size}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a top-down hierarchical VAE (Table 6 of the DCT-VAE paper).

    ``latents`` lists ``(resolution, number_of_stochastic_layers)`` from the finest
    scale to the coarsest, as Table 6 writes them ("4 x 14^2, 4 x 7^2"). Layer 1
    is the top (coarsest) latent.

    DCT-VAE (``arch="dctvae"``, the paper's Appendix C and E) adds a deterministic context as
    layer 1 above ``latents``:

    * ``context``: ``"dct"`` (the c x c lowest DCT frequencies per channel) or
      ``"downsample"`` (c x c average pooling, Appendix F); ``"none"`` for VDVAE;
    * ``context_size`` (c), ``context_bits`` (b: the quantiser has 2^b levels),
      ``context_dither`` (uniform dither before rounding while training);
    * the diffusion prior over the quantised context: ``diffusion_steps`` (T),
      ``diffusion_beta_start`` / ``diffusion_beta_end`` (linear betas), and its
      UNet's ``diffusion_channels``, ``diffusion_scales`` and ``diffusion_res_blocks``.

    The authors' own architecture (``arch="kuzina-ladder"``, ``context`` ``"dct"`` or
    ``"none"``; docs/kuzina.md) reads these too, plus: ``scale_channel_mult`` (channels
    grow by it per coarser scale), ``encoder_per_scale`` (one encoder block per scale,
    shared by its latents), ``context_every_scale`` (inject the decoded context again
    after every change of scale), ``pixel_mean`` and ``pixel_std`` (the encoder's input
    normalisation on the 0-255 scale), ``diffusion_schedule`` and ``diffusion_dropout``; its residual
    blocks' hidden width is ``hidden / channels`` times their input width.
    ``target_binarisation``: ``"data"`` (binary data reach the model binarised) or
    ``"model"`` (the model sees grey images and binarises its target at every call).
    For kuzina-ladder, ``context_dither`` turns the authors' dither on in ``encode`` and
    ``reconstruct`` (their objective always dithers), averaged over ``context_eot_draws``
    fixed draws (expectation over transformation).
    """

    arch: str = "vdvae"
    image_channels: int = 1
    image_size: int = 28
    likelihood: str = "bernoulli"
    num_mixtures: int = 10  # discretised logistic mixture components
    dmol_bits: int = 8  # bit depth of the discretised likelihood
    channels: int = 32  # residual stream width ("channels input" in Table 6)
    hidden: int = 40  # bottleneck width inside blocks ("hidden" in Table 6)
    latents: tuple[tuple[int, int], ...] = ((14, 4), (7, 4))
    z_dim: int = 1  # latent channels per layer ("width")
    enc_blocks: int = 2  # encoder residual blocks per latent scale
    out_blocks: int = 1  # decoder residual blocks at image resolution
    activation: str = "silu"
    weight_norm: bool = False
    logvar_limit: float = 10.0  # log-variances are soft-clamped to (-limit, limit)
    context: str = "none"  # dct | downsample (arch dctvae) | none (arch vdvae)
    context_size: int = 6  # c: the context is channels x c x c
    context_bits: int = 2  # b: 2^b quantisation levels on [-1, 1]
    context_dither: bool = False  # uniform dither before rounding, in training only
    diffusion_steps: int = 7  # T
    diffusion_beta_start: float = 1 / 7  # linear betas beta_1 .. beta_T
    diffusion_beta_end: float = 2 / 7
    diffusion_channels: int = 32  # UNet width at the first scale (doubles per scale)
    diffusion_scales: int = 1  # UNet resolutions (each halves the previous one)
    diffusion_res_blocks: int = 3  # UNet residual blocks per scale
    diffusion_schedule: str = "linear"  # linear (beta_start .. beta_end) | cosine (Nichol & Dhariwal, s = 0.008)
    diffusion_dropout: float = 0.0  # UNet dropout while training (kuzina-ladder)
    scale_channel_mult: float = 1.0  # kuzina-ladder: channels x this per coarser scale
    encoder_per_scale: bool = False  # kuzina-ladder: one encoder block per scale instead of per latent
    context_every_scale: bool = True  # kuzina-ladder: re-inject the decoded context after each change of scale
    pixel_mean: float = 127.5  # kuzina-ladder: the encoder sees (255 x - pixel_mean) / pixel_std
    pixel_std: float = 127.5
    target_binarisation: str = "data"  # data | model (grey input, target binarised inside every call)
    context_eot_draws: int = 1  # kuzina-ladder with context_dither: fixed dither draws averaged over (EOT)
    enc_layout: str = ""  # openai-vdvae: the encoder's block string, e.g. "32x11,32d2,16x6,16d2,..."
    widths: tuple[tuple[int, int], ...] = ()  # openai-vdvae: (resolution, channels) where they differ from channels
    bias_max_res: int | None = None  # openai-vdvae: the decoder state has a learnt start at resolutions <= this only

    def __post_init__(self) -> None:
        check_numbers(self, "model.")
        for name in ("image_channels", "image_size", "channels", "hidden", "z_dim", "num_mixtures"):
            _positive(f"model.{name}", getattr(self, name))
        if self.enc_blocks < 0 or self.out_blocks < 0:
            _fail("model.enc_blocks and model.out_blocks must be >= 0")
        if self.likelihood not in LIKELIHOODS:
            _fail(f"model.likelihood must be one of {', '.join(LIKELIHOODS)}, got {self.likelihood!r}")
        if self.activation not in ACTIVATIONS:
            _fail(f"model.activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if not 1 <= self.dmol_bits <= 8:
            _fail(f"model.dmol_bits must be in 1..8, got {self.dmol_bits}")
        if self.likelihood == "bernoulli" and self.image_channels != 1:
            _fail("model.likelihood=bernoulli needs model.image_channels=1 (binary images)")
        _positive("model.logvar_limit", self.logvar_limit)
        if not self.latents:
            _fail("model.latents must list at least one (resolution, layers) pair")
        prev = self.image_size
        for res, n in self.latents:
            if res < 1 or n < 1:
                _fail(f"model.latents entries need resolution >= 1 and layers >= 1, got ({res}, {n})")
            if res > prev or prev % res:
                _fail(
                    f"model.latents resolutions must shrink by integer factors from "
                    f"model.image_size={self.image_size}: {prev} -> {res} is not allowed"
                )
            prev = res
        self._check_context()
        self._check_openai()

    def width_at(self, resolution: int) -> int:
        """Channels of the state at ``resolution``: ``widths``' entry for it, else ``channels``."""
        return dict(self.widths).get(resolution, self.channels)

    def _check_openai(self) -> None:
        if self.arch != OPENAI_ARCH:
            for name, unset in (("enc_layout", ""), ("widths", ()), ("bias_max_res", None)):
                if getattr(self, name) != unset:
                    _fail(f"model.{name} only applies to model.arch={OPENAI_ARCH} (got arch {self.arch!r})")
            return
        if self.image_channels != 3 or self.likelihood != "dmol":
            _fail(
                f"model.arch={OPENAI_ARCH} models RGB images with a logistic mixture: set model.image_channels=3 "
                f"and model.likelihood=dmol"
            )
        if self.latents[0][0] != self.image_size:
            _fail(
                f"model.arch={OPENAI_ARCH}: the finest latents must be at the image size {self.image_size}, "
                f"got {self.latents[0][0]}"
            )
        try:
            blocks = parse_block_string(self.enc_layout)
        except ValueError as e:
            _fail(f"model.enc_layout: {e}")
        res = self.image_size
        for b in blocks:
            if b.resolution != res or b.mixin is not None:
                _fail(
                    f"model.enc_layout must run from the image size {self.image_size} down, a block at the "
                    f"resolution the one before left (RxN, RdF), got {self.enc_layout!r}"
                )
            if b.down is not None:
                if res % b.down:
                    _fail(f"model.enc_layout: {res}d{b.down} does not divide resolution {res}")
                res //= b.down
        missing = sorted(
            {r for r, _ in self.latents} - {self.image_size} - {b.resolution // (b.down or 1) for b in blocks}
        )
        if missing:
            _fail(f"model.enc_layout leaves no encoder features at latent resolution(s) {missing}")
        for r, w in self.widths:
            _positive(f"model.widths entry for resolution {r}", w)
        by_res = sorted({r for r, _ in self.latents} | {self.image_size})
        if any(self.width_at(a) < self.width_at(b) for a, b in zip(by_res, by_res[1:])):
            _fail(
                "model.widths must not grow from coarse to fine resolutions (a finer state takes the coarser "
                "one's first channels)"
            )
        if self.width_at(self.image_size) != self.channels:
            _fail(f"model.widths: the image resolution's width must be model.channels={self.channels}")
        if self.bias_max_res is not None and self.bias_max_res < 1:
            _fail(f"model.bias_max_res must be >= 1 or none, got {self.bias_max_res}")

    def _check_context(self) -> None:
        if self.context not in CONTEXTS:
            _fail(f"model.context must be one of {', '.join(CONTEXTS)}, got {self.context!r}")
        if self.arch == "dctvae" and self.context == "none":
            _fail("model.arch=dctvae needs a context: set model.context=dct or model.context=downsample")
        if self.arch not in CONTEXT_ARCHS and self.context != "none":
            _fail(
                f"model.context={self.context} only applies to model.arch={' or '.join(CONTEXT_ARCHS)} "
                f"(got arch {self.arch!r})"
            )
        if self.diffusion_schedule not in SCHEDULES:
            _fail(f"model.diffusion_schedule must be one of {', '.join(SCHEDULES)}, got {self.diffusion_schedule!r}")
        if self.target_binarisation not in BINARISATION:
            _fail(
                f"model.target_binarisation must be one of {', '.join(BINARISATION)}, got {self.target_binarisation!r}"
            )
        if not 0 <= self.diffusion_dropout < 1:
            _fail(f"model.diffusion_dropout must be in [0, 1), got {self.diffusion_dropout}")
        _positive("model.scale_channel_mult", self.scale_channel_mult)
        _positive("model.context_eot_draws", self.context_eot_draws)
        _positive("model.pixel_std", self.pixel_std)
        if not 1 <= self.context_size <= self.image_size:
            _fail(
                f"model.context_size must be in 1..{self.image_size} (the context cannot be larger than the "
                f"{self.image_size}x{self.image_size} image), got {self.context_size}"
            )
        if not 1 <= self.context_bits <= 16:
            _fail(f"model.context_bits must be in 1..16 (2^bits quantisation levels), got {self.context_bits}")
        if not 1 <= self.diffusion_steps <= MAX_DIFFUSION_STEPS:
            _fail(
                f"model.diffusion_steps must be at least 1 (T >= 1) and at most {MAX_DIFFUSION_STEPS:,} (DDPMs use up "
                f"to a few thousand), got {self.diffusion_steps}"
            )
        if not 0 < self.diffusion_beta_start <= self.diffusion_beta_end < 1:
            _fail(
                "model.diffusion_beta_start and model.diffusion_beta_end need 0 < start <= end < 1, got "
                f"{self.diffusion_beta_start} and {self.diffusion_beta_end}"
            )
        for name in ("diffusion_channels", "diffusion_scales", "diffusion_res_blocks"):
            _positive(f"model.{name}", getattr(self, name))

    @property
    def binary(self) -> bool:
        """Whether the model sees binarised images: the one place that decides it (a Bernoulli likelihood).

        Training batches are binarised afresh every step, evaluation images once with a
        fixed seed; both follow this, whatever the dataset. A model that binarises its own
        target (``target_binarisation="model"``) gets grey images.
        """
        return self.likelihood == "bernoulli" and self.target_binarisation == "data"

    @property
    def num_gaussian_layers(self) -> int:
        """Diagonal-Gaussian layers (``latents``), without the context."""
        return sum(n for _, n in self.latents)

    @property
    def num_layers(self) -> int:
        """Stochastic layers including the context (layer 1) when there is one."""
        return self.num_gaussian_layers + (self.context != "none")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: AdamW + cosine schedule, clipping, skipping, EMA (Table 6)."""

    epochs: int = 600
    steps: int | None = None  # when set, overrides epochs
    batch_size: int = 128
    lr: float = 1e-3
    lr_min: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.9  # VDVAE's setting
    grad_clip: float = 1.0
    skip_threshold: float = 100.0  # skip the update when the gradient norm exceeds this
    max_consecutive_skips: int = 100  # then stop with a clear message (a fixed threshold can skip forever)
    ema_decay: float = 0.0  # 0 disables EMA; evaluation uses EMA weights when on
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # NHWC weights and activations: same results, faster oneDNN / cuDNN convolutions
    compile: bool = False  # torch.compile the training forward (pays a compile time up front)
    seed: int = 0
    checkpoint_every: int = 500  # steps between `last` checkpoints (and at every epoch end)
    log_every: int = 50  # steps between metrics.jsonl lines
    val_batches: int | None = None  # cap validation batches (None: the whole split)

    def __post_init__(self) -> None:
        check_numbers(self, "train.")
        _positive("train.epochs", self.epochs)
        if self.steps is not None:
            _positive("train.steps", self.steps)
        _positive("train.batch_size", self.batch_size)
        _positive("train.lr", self.lr)
        if self.lr_min < 0 or self.lr_min > self.lr:
            _fail(f"train.lr_min must be in [0, train.lr], got {self.lr_min}")
        if self.warmup_steps < 0:
            _fail("train.warmup_steps must be >= 0")
        if self.weight_decay < 0:
            _fail("train.weight_decay must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                _fail(f"train.{name} must be in [0, 1)")
        _positive("train.grad_clip", self.grad_clip)
        _positive("train.skip_threshold", self.skip_threshold)
        _positive("train.max_consecutive_skips", self.max_consecutive_skips)
        if not 0 <= self.ema_decay < 1:
            _fail(f"train.ema_decay must be in [0, 1) (0 turns EMA off), got {self.ema_decay}")
        _positive("train.checkpoint_every", self.checkpoint_every)
        _positive("train.log_every", self.log_every)
        if self.val_batches is not None:
            _positive("train.val_batches", self.val_batches)


@dataclass(frozen=True)
class Config:
    """Everything that defines a run; saved with every checkpoint."""

    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= MAX_NAME:  # the name labels the model in runs and becomes part of file names
            _fail(f"name must be 1 to {MAX_NAME} characters, got {len(self.name):,}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return from_dict(cls, d)

    def override(self, assignments: list[str] | tuple[str, ...]) -> Config:
        """Apply ``section.key=value`` strings; see :func:`apply_overrides`."""
        return apply_overrides(self, assignments)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


@dataclass(frozen=True)
class AttackConfig:
    """One latent-attack sweep (docs/protocol.md); also the schema of ``attacks/*.toml`` suites.

    ``layers`` is ``"1,2"``, ``"1-4"`` or ``"all"``: each number k is one evaluation with
    the top k latent layers under attack (layer 1 is the top). ``recon`` picks the
    reconstruction rule (:mod:`robustvae.protocol`); ``eps = 0`` disables the attack.
    """

    @property
    def convention(self) -> str:
        """The temperature convention in force: the one given, else the rule's own."""
        from robustvae.protocol import RECON_RULES

        return self.temperature_convention or RECON_RULES[self.recon].convention

    layers: str = "1"
    eps: float = 0.1
    norm: str = "linf"
    restarts: int = 5
    points: int = 50
    steps: int = 50
    objective: str = "skl"  # an objective of robustvae.attacks.OBJECTIVES (targeted: target, target_recon, ...)
    optimizer: str = "auto"  # an attack of robustvae.attacks.ATTACKS: pgd (the paper's), sgd (the authors'), apgd,
    # square or context; or an ensemble of robustvae.attacks.ENSEMBLES: auto (the default: the current version,
    # auto-v2), auto-v1
    step_size: float | None = None  # pgd: 2.5 * eps / steps; sgd: the initial learning rate 1.0; apgd: the initial
    # step (2 * eps); square: unused
    per_unit: bool = False  # divide each layer's term by its units, so layers of different widths are commensurate
    p_init: float = 0.8  # square: the initial share of pixels a proposal changes
    temperature: float = 0.1  # prior temperature of the layers below k (Appendix G)
    recon: str = "default"  # reconstruction rule (robustvae.protocol.RECON_RULES): default | authors
    temperature_convention: str | None = None  # std | var; None: the rule's own (default: std, authors: var)
    straight_through: bool = False  # context layer: quantised values with straight-through gradients
    floor_draws: int = 5  # clean-vs-clean pairs under different prior noise, per point
    noise_draws: int = 5  # random perturbations of the same budget, per point
    gallery_points: int = (
        4  # the most damaged points' worst-case examples (per unit) are saved for the report's gallery
    )
    seed: int = 0
    split: str = "test"
    max_batch_mib: int = 1024  # memory budget of one batch of points x restarts
    eps_sweep: str | None = None  # "0.025,0.05,0.1": run the sweep at each eps (instead of ``eps``)
    unrelated_draws: int = 1  # per point: MS-SSIM between its reconstruction and an unrelated image's

    @property
    def eps_list(self) -> list[float]:
        """The budgets the sweep runs: ``eps_sweep`` parsed, else [``eps``]."""
        if not self.eps_sweep:
            return [self.eps]
        return [float(v) for v in str(self.eps_sweep).split(",") if v.strip()]

    def __post_init__(self) -> None:
        from robustvae.protocol import CONVENTIONS, RECON_RULES

        check_numbers(self)
        parse_layers(self.layers)
        if not self.eps >= 0:
            _fail(f"eps must be >= 0 (0 disables the attack: the no-attack level), got {self.eps}")
        if self.norm in NORMS:
            _fail_if(eps_problem(self.norm, self.eps))
        if self.recon not in RECON_RULES:
            _fail(f"unknown recon rule {self.recon!r} (known: {', '.join(RECON_RULES)})")
        if self.temperature_convention is not None and self.temperature_convention not in CONVENTIONS:
            _fail(f"unknown temperature convention {self.temperature_convention!r} (known: {', '.join(CONVENTIONS)})")
        if self.norm not in NORMS:
            _fail(f"unknown norm {self.norm!r} (known: {', '.join(NORMS)})")
        from robustvae.attacks.objectives import OBJECTIVES
        from robustvae.attacks.registry import ATTACKS

        if self.objective not in OBJECTIVES:
            _fail(f"unknown objective {self.objective!r} (known: {', '.join(OBJECTIVES)})")
        from robustvae.attacks.registry import ENSEMBLES, ensemble_version

        if self.optimizer not in ATTACKS and ensemble_version(self.optimizer) is None:
            _fail(f"unknown optimizer {self.optimizer!r} (known: {', '.join([*ATTACKS, 'auto', *ENSEMBLES])})")
        _check_ensemble_goal(self.optimizer, self.objective)
        if self.eps_sweep is not None:
            try:
                sweep = self.eps_list
            except ValueError:
                _fail(f"eps_sweep must be comma-separated numbers such as 0.025,0.05,0.1, got {self.eps_sweep!r}")
            if not sweep or any(not e > 0 for e in sweep):
                _fail(f"eps_sweep needs at least one eps and every eps > 0, got {self.eps_sweep!r}")
            for e in sweep:
                _fail_if(eps_problem(self.norm, e, name="every eps of eps_sweep") if self.norm in NORMS else None)
        for name in ("restarts", "points", "steps", "max_batch_mib"):
            if getattr(self, name) < 1:
                _fail(f"{name} must be at least 1, got {getattr(self, name)}")
        _check_points(self.points)
        for name in ("floor_draws", "noise_draws", "gallery_points", "unrelated_draws"):
            if getattr(self, name) < 0:
                _fail(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.step_size is not None and not self.step_size > 0:
            _fail(f"step_size must be positive, got {self.step_size}")
        if self.temperature < 0:
            _fail(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.p_init <= 1:
            _fail(f"p_init must be in (0, 1], got {self.p_init}")
        if self.split not in ("train", "val", "test"):
            _fail(f"split must be train, val or test, got {self.split!r}")


def _check_ensemble_goal(optimizer: str, objective: str) -> None:
    """A targeted ensemble needs a targeted objective (its targets are drawn as that objective says) and an
    untargeted one the default objective, skl, whose members then use their own (``auto`` picks the version that
    fits the objective); another objective needs a single attack."""
    from robustvae.attacks.objectives import OBJECTIVES
    from robustvae.attacks.registry import AUTO_TARGETED_VERSION, ENSEMBLES, ensemble_version

    version = ensemble_version(optimizer, objective)
    if version is None:
        return
    spec, goal = ENSEMBLES[version], OBJECTIVES[objective]
    if spec.targeted and not goal.needs_target:
        _fail(f"{version} is a targeted ensemble; give a targeted objective (objective target), or use auto")
    if goal.needs_target and not spec.targeted:
        _fail(f"{version} is untargeted; with the targeted objective {objective!r} use auto ({AUTO_TARGETED_VERSION})")
    if not spec.targeted and objective != "skl":  # skl: the field's default, which an ensemble leaves to its members
        _fail(
            f"{version} (the default attack) runs each member on its own objective, not {objective!r}: to attack "
            f"that objective name a single attack, e.g. --attack pgd or --attack apgd"
        )
    choices = {OBJECTIVES[m.objective].target_choice for m in spec.members}
    if spec.targeted and choices != {goal.target_choice}:
        _fail(
            f"{version} draws each point's target as its members do ({', '.join(sorted(map(str, choices)))}); "
            f"objective {objective!r} picks it as {goal.target_choice}: use objective target, or a single attack "
            "(--attack pgd)"
        )


@dataclass(frozen=True)
class CertifyConfig:
    """One certification run of the quantised context (``robustvae certify``, docs/certify.md).

    ``eps``: the budgets, ascending; ``points``, ``seed`` and ``split`` select the same
    label-stratified test points as an attack run with the same values. ``optimal``
    runs the optimal context attack (two MILPs per point and eps, each limited to
    ``time_limit`` seconds); the k = 1 reconstruction is scored under the default
    protocol rule at ``temperature``.
    """

    eps: tuple[float, ...] = (0.025, 0.05, 0.1, 0.2)
    norm: str = "linf"
    points: int = 50
    seed: int = 0
    split: str = "test"
    optimal: bool = True
    time_limit: float = 10.0
    interior: float = 1e-5
    temperature: float = 0.1

    def __post_init__(self) -> None:
        eps = tuple(float(e) for e in self.eps)
        object.__setattr__(self, "eps", eps)
        check_numbers(self)
        if not eps:
            _fail("eps needs at least one budget, e.g. 0.025,0.05,0.1,0.2")
        if not all(e >= 0 and e == e and e != float("inf") for e in eps):
            _fail(f"every eps must be finite and >= 0, got {', '.join(map(str, eps))}")
        if self.norm not in NORMS:
            _fail(f"unknown norm {self.norm!r} (known: {', '.join(NORMS)})")
        for e in eps:
            _fail_if(eps_problem(self.norm, e, name="every eps"))
        if self.points < 1:
            _fail(f"points must be at least 1, got {self.points}")
        _check_points(self.points)
        if not self.time_limit > 0:
            _fail(f"time_limit must be positive (seconds per solve), got {self.time_limit}")
        if not self.interior >= 0:
            _fail(f"interior must be >= 0, got {self.interior}")
        if self.temperature < 0:
            _fail(f"temperature must be >= 0, got {self.temperature}")
        if self.split not in ("train", "val", "test"):
            _fail(f"split must be train, val or test, got {self.split!r}")


@dataclass(frozen=True)
class CompressConfig:
    """One compression run (Appendix G): which top-k layers carry the image, and how the rest is drawn.

    ``layers`` as for attacks (``"1,2"``, ``"1-4"``, ``"all"``): each k reconstructs every
    patch from the posterior means of the top k layers and the prior below them at
    ``temperature``. ``batch_size`` patches go through the model at once; the prior
    noise and the rate's posterior samples are drawn per batch from ``seed``, so the
    numbers depend on the batch size and the image order (both recorded).
    """

    layers: str = "1"
    temperature: float = 0.1
    seed: int = 0
    batch_size: int = 64
    max_pixels: int = 4_000_000  # the largest image (width x height) a run accepts

    def __post_init__(self) -> None:
        check_numbers(self, "--")
        parse_layers(self.layers)
        if self.max_pixels < 1:
            _fail(f"--max-pixels must be at least 1, got {self.max_pixels}")
        if self.temperature < 0:
            _fail(f"--temperature must be >= 0, got {self.temperature}")
        if self.batch_size < 1:
            _fail(f"--batch-size must be at least 1, got {self.batch_size}")


def parse_layers(spec: str, num_layers: int | None = None, model: str = "the model") -> list[int]:
    """``"1,2"`` / ``"1-4"`` / ``"all"`` -> sorted layer counts k; checked against L when given."""
    text = str(spec).strip().lower()
    if text == "all":
        if num_layers is None:
            return []
        return list(range(1, num_layers + 1))
    ks: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    _fail(f"--layers range {part!r} runs backwards; write it as {b}-{a}")
                ks.update(range(a, b + 1))
            else:
                ks.add(int(part))
    except ValueError:
        _fail(f"--layers expects numbers such as 1,2, a range such as 1-4, or all; got {spec!r}")
    if min(ks) < 1:
        _fail(f"--layers counts start at 1 (layer 1 is the top latent), got {min(ks)}")
    if num_layers is not None and max(ks) > num_layers:
        _fail(f"--layers {max(ks)} is more than {model} has: L={num_layers} latent layers")
    return sorted(ks)


@dataclass(frozen=True)
class BlockSpec:
    """One entry of a block string: a block at ``resolution``; ``down`` pools its output by that factor
    (``"32d2"``), ``mixin`` names the coarser resolution whose state it upsamples and adds (``"4m1"``)."""

    resolution: int
    down: int | None = None
    mixin: int | None = None


def parse_block_string(text: str) -> list[BlockSpec]:
    """VDVAE's block strings, e.g. ``"32x11,32d2,16x6"`` (encoder) or ``"1x1,4m1,4x2"`` (decoder).

    ``RxN`` is N blocks at resolution R, ``RdF`` one block at R whose output is pooled by F,
    ``RmS`` one block at R that mixes in the state of resolution S, ``R`` one block. Raises
    ValueError naming the entry that is none of these.
    """
    out: list[BlockSpec] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "x" in part:
                res, n = (int(v) for v in part.split("x"))
                if n < 1:
                    raise ValueError
                out += [BlockSpec(res)] * n
            elif "m" in part:
                res, mix = (int(v) for v in part.split("m"))
                out.append(BlockSpec(res, mixin=mix))
            elif "d" in part:
                res, down = (int(v) for v in part.split("d"))
                out.append(BlockSpec(res, down=down))
            else:
                out.append(BlockSpec(int(part)))
        except ValueError:
            raise ValueError(
                f"block string entry {part!r} is not RxN, RdF, RmS or R (R, N, F, S positive integers) in {text!r}"
            ) from None
        last = out[-1]
        if min(last.resolution, last.down or 1, last.mixin or 1) < 1:
            raise ValueError(f"block string entry {part!r} has a number below 1 in {text!r}")
    return out


# --------------------------------------------------------------------------- helpers


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from JSON or a command line) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        _fail(errors[0] if errors else f"{key}: cannot be None")
    if origin is tuple:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                _fail(f"{key} expects a JSON list such as [[14, 4], [7, 4]], got {value!r}")
        if not isinstance(value, (list, tuple)):
            _fail(f"{key} expects a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            _fail(f"{key} expects {len(args)} items, got {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        _fail(f"{key} expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            _fail(f"{key} expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        _fail(f"{key} expects an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            _fail(f"{key} expects a number, got {value!r}")
        if not math.isfinite(number):
            _fail(f"{key} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        _fail(f"{key} expects a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _fail(f"{key} expects a table of settings, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    _fail(f"{key}: unsupported type {_type_name(tp)}")


def from_dict(cls: type, d: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys."""
    if not isinstance(d, dict):
        _fail(f"{prefix or 'config'} must be a table of settings, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        _fail(f"unknown config key '{prefix}{unknown[0]}' (known: {', '.join(prefix + n for n in names)})")
    kwargs = {k: coerce(v, hints[k], prefix + k) for k, v in d.items()}
    return cls(**kwargs)


def apply_overrides(cfg: Any, assignments: list[str] | tuple[str, ...]) -> Any:
    """Return a copy of ``cfg`` with ``section.key=value`` assignments applied.

    Values are parsed for the field's declared type: ``model.channels=16``,
    ``train.ema_decay=0.999``, ``data.data_dir=none``,
    ``model.latents=[[14,4],[7,4]]``.
    """
    for item in assignments:
        if "=" not in item:
            _fail(f"--set expects key=value (e.g. model.channels=16), got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        cfg = _set_path(cfg, key.split("."), raw.strip(), key)
    return cfg


def _set_path(obj: Any, parts: list[str], raw: str, full_key: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    head = parts[0]
    if head not in names:
        scope = full_key[: len(full_key) - len(".".join(parts))]
        _fail(f"unknown config key '{full_key}' (known here: {', '.join(scope + n for n in names)})")
    current = getattr(obj, head)
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            _fail(f"config key '{full_key}': '{head}' has no sub-keys")
        return dataclasses.replace(obj, **{head: _set_path(current, parts[1:], raw, full_key)})
    if dataclasses.is_dataclass(current):
        _fail(f"config key '{full_key}' is a section; set one of its keys, e.g. {full_key}.<key>=value")
    tp = typing.get_type_hints(type(obj))[head]
    return dataclasses.replace(obj, **{head: coerce(raw, tp, full_key)})
