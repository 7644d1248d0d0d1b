"""Reference fixtures for robustvae's openai-vdvae family, made by running openai/vdvae's own code on CPU.

Usage (from the repository root; DIR is a copy of github.com/openai/vdvae at commit
ea35b490313bc33e7f8ac63dd8132f3cc1a729b4, e.g. ``git archive ea35b49 | tar -x -C DIR``)::

    python tests/fixtures_openai_vdvae/make_fixtures.py --upstream DIR            # the committed fixtures
    python tests/fixtures_openai_vdvae/make_fixtures.py --upstream DIR --full-cifar10 OUT

Upstream's files are used as they are: the script checks the git blob hash of ``vae.py``,
``vae_helpers.py``, ``hps.py`` and ``data.py`` against that commit, imports them, and changes
none of them. Three things are arranged around them at run time, because upstream's
``data.set_up_data`` expects a GPU and its datasets: ``torch.Tensor.cuda`` returns the tensor
itself; ``numpy.vstack`` accepts the generator that ``data.cifar10`` passes it (numpy >= 2
refuses generators); and tiny stand-in dataset files let ``set_up_data`` run, which it needs
only to return its preprocessing function (the fixtures' images are passed in directly).

Written into this folder (tests/fixtures_openai_vdvae):

* ``keys.json.gz``: every state-dict key and shape of the five published configurations
  (``--hps cifar10 imagenet32 imagenet64 ffhq256 ffhq1024``), their models built by
  upstream's ``VAE`` on the meta device (no memory).
* ``preprocess.pt``: upstream's preprocessing (encoder input and likelihood target) of
  images holding every 8-bit value, for each of the five datasets.
* ``<config>.pt`` for three reduced configurations (``cifar10_small``, ``ffhq256_small``,
  ``ffhq1024_small``: narrow, few layers, the five datasets' code paths: 8-bit and 5-bit
  likelihoods, custom widths with channel padding and slicing, zero decoder starts), float32:
  the weights (upstream's initialisation, then N(0, 0.05^2) added to every tensor so that the
  zero-initialised ones matter: :func:`perturbed`), the images, and three passes of upstream's code:

  - ``elbo``: ``VAE.forward`` with every posterior draw recorded (``draw_gaussian_diag_samples``
    wrapped: its normal draw is replayed from the generator state to record eps), every
    layer's posterior and prior parameters (module hooks), KL (``gaussian_analytical_kl``
    wrapped), the encoder's activations and the mixture parameters (``encoder.forward`` and
    ``out_net.forward`` wrapped on the instance: upstream calls them directly), the decoder output, the
    per-image distortion and rate (nats per dimension) and the batch ELBO;
  - ``means``: the same forward with every draw replaced by its mean (the wrapper returns mu),
    its mixture parameters and its image: upstream's ``sample_from_discretized_mix_logistic``
    with every uniform draw at 0.5 (the component with the largest logit, no logistic noise);
  - ``prior``: ``decoder.forward_manual_latents`` with the top 2 layers at those posterior
    means and the rest drawn from the prior at temperature 0.1 (draws recorded), its image;
    and ``decoder.forward_uncond`` at temperature 1 (draws recorded), its image.

* ``cifar10_small-f64.pt``: ``cifar10_small`` again with torch's default dtype float64 (the
  encoder input and target computed by upstream's preprocessing operations in float64).

With ``--full-cifar10 OUT`` it writes instead, for the full-size check: ``OUT/cifar10-random-model-ema.th``
(``torch.save(vae.state_dict())`` of upstream's full CIFAR-10 model, random weights of seed
``--seed``), ``OUT/images.npy`` (natural images of scikit-image, 32 x 32 uint8 NHWC) and
``OUT/reference.pt``: the posterior-means image, one recorded ``elbo`` pass and the per-image
ELBO of ``--repeats`` independent upstream passes.

This script is not part of the robustvae package and nothing imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

UPSTREAM_COMMIT = "ea35b490313bc33e7f8ac63dd8132f3cc1a729b4"
BLOBS = {  # git blob ids of upstream's files at UPSTREAM_COMMIT
    "vae.py": "97b08874d1c436fc9fd7a7c3b32ae44cf4656330",
    "vae_helpers.py": "60f6619e30a48243e4a6796d9847f806eb7fbcf3",
    "hps.py": "ccecb937874160b0ece1ad92794a789392ad3f69",
    "data.py": "8131b42e5730a147cd9ab08600c863a203e2efe8",
}
HPS = {"cifar10": "cifar10", "imagenet32": "imagenet32", "imagenet64": "imagenet64", "ffhq256": "ffhq_256",
       "ffhq1024": "ffhq_1024"}  # --hps name -> upstream's H.dataset
SMALL = {  # reduced configurations: (--hps, command-line overrides, image size)
    "cifar10_small": ("cifar10", ["--width", "16", "--zdim", "3", "--num_mixtures", "3",
                                  "--dec_blocks", "1x1,4m1,4x1,8m4,16m8,16x1",
                                  "--enc_blocks", "16x1,16d2,8x1,8d2,4x1,4d4,1x1"], 16),
    "ffhq256_small": ("ffhq256", ["--width", "16", "--zdim", "3", "--num_mixtures", "3", "--no_bias_above", "4",
                                  "--dec_blocks", "1x1,4m1,8m4,16m8,16x1",
                                  "--enc_blocks", "16x1,16d2,8x1,8d2,4x1,4d4,1x1"], 16),
    "ffhq1024_small": ("ffhq1024", ["--width", "8", "--custom_width_str", "8:16,4:16,1:16", "--zdim", "3",
                                    "--no_bias_above", "8", "--dec_blocks", "1x1,4m1,8m4,16m8",
                                    "--enc_blocks", "16x1,16d2,8x1,8d2,4x1,4d4,1x1"], 16),
}
HPARAMS = ("dataset", "width", "zdim", "dec_blocks", "enc_blocks", "custom_width_str", "bottleneck_multiple",
           "no_bias_above", "num_mixtures", "image_size")
NATURAL = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "hubble_deep_field",
           "colorwheel")
HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- upstream, as it is


def blob_id(path: Path) -> str:
    raw = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()


def import_upstream(root: Path):
    for name, blob in BLOBS.items():
        if not (root / name).is_file() or blob_id(root / name) != blob:
            sys.exit(f"{root / name} is not upstream's file at {UPSTREAM_COMMIT[:7]}; copy that commit: "
                     f"git archive {UPSTREAM_COMMIT[:7]} | tar -x -C DIR")
    sys.path.insert(0, str(root))
    import data
    import hps
    import vae
    import vae_helpers

    return hps, data, vae, vae_helpers


@contextlib.contextmanager
def on_cpu():
    """``.cuda()`` as the identity, and ``np.vstack`` of a generator (data.cifar10 passes one)."""
    cuda, vstack = torch.Tensor.cuda, np.vstack
    torch.Tensor.cuda = lambda self, *a, **k: self
    np.vstack = lambda tup, *a, **k: vstack(list(tup), *a, **k)
    try:
        yield
    finally:
        torch.Tensor.cuda, np.vstack = cuda, vstack


def stand_in_data(root: Path) -> None:
    """The smallest files that upstream's dataset readers accept."""
    from PIL import Image

    rng = np.random.default_rng(0)
    cifar = root / "cifar-10-batches-py"
    cifar.mkdir()
    for i in range(1, 6):  # data.cifar10 holds out 5,000 training images: > 5,000 in all
        batch = {b"data": rng.integers(0, 256, (1001, 3072), dtype=np.uint8), b"labels": [0] * 1001}
        (cifar / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    (cifar / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 0]}))
    for name, size in (("imagenet32-train", 32), ("imagenet32-valid", 32), ("imagenet64-train", 64),
                       ("imagenet64-valid", 64), ("ffhq-256", 256)):
        np.save(root / f"{name}.npy", np.zeros((2, size, size, 3), np.uint8))
    for split in ("train", "valid"):
        (root / "ffhq1024" / split / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "ffhq1024" / split / "a" / "0.png")


def hparams(hps, data, name: str, overrides: list[str], data_root: Path):
    """Upstream's H for ``--hps name`` plus ``overrides``, and its preprocessing function (``data.set_up_data``)."""
    H = hps.Hyperparams()
    parser = hps.add_vae_arguments(argparse.ArgumentParser())
    hps.parse_args_and_update_hparams(H, parser, s=["--hps", name, "--data_root", str(data_root), *overrides])
    with on_cpu():
        H, _, _, preprocess = data.set_up_data(H)
    return H, preprocess


def preprocess_u8(preprocess, H, u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's (encoder input, target), NHWC, of uint8 NHWC images (FFHQ-1024 reads them as ToTensor floats)."""
    batch = u8.permute(0, 3, 1, 2).float() / 255 if H.dataset == "ffhq_1024" else u8.clone()
    with on_cpu():
        return preprocess([batch])


def preprocess64(preprocess, H, u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The operations of upstream's preprocessing function in float64, with its own constants (its closure)."""
    cells = dict(zip(preprocess.__code__.co_freevars, (c.cell_contents for c in preprocess.__closure__)))
    x = u8.double() / 255 if H.dataset == "ffhq_1024" else u8.double()
    inp = (x + cells["shift"].double()) * cells["scale"].double()
    out = x.clone()
    if cells["do_low_bit"]:
        out = torch.floor(out * (1.0 / 8.0)) * 8.0
    return inp, (out + cells["shift_loss"].double()) * cells["scale_loss"].double()


# --------------------------------------------------------------------------- recording


class Recorder:
    """Wraps upstream's draw and KL functions and hooks its modules; ``rows`` collects per-call tensors."""

    def __init__(self, vae_mod, model, means: bool = False):
        self.vae_mod, self.model, self.means = vae_mod, model, means
        self.draws: list[dict] = []
        self.kls: list[torch.Tensor] = []
        self.q: list[torch.Tensor] = []
        self.p: list[torch.Tensor] = []
        self.acts: dict[int, torch.Tensor] = {}
        self.dmol: list[torch.Tensor] = []
        self.px_z: list[torch.Tensor] = []

    def draw(self, mu, logsigma):
        if self.means:
            self.draws.append({"mu": mu, "logsigma": logsigma, "z": mu})
            return mu
        state = torch.get_rng_state()
        z = self._draw(mu, logsigma)
        after = torch.get_rng_state()
        torch.set_rng_state(state)
        eps = torch.empty_like(mu).normal_(0.0, 1.0)  # the same draw upstream's function just made
        torch.set_rng_state(after)
        step = torch.exp(logsigma) * eps  # the replayed draw gives upstream's z up to its last rounding (the
        ulp = torch.finfo(mu.dtype).eps  # scripted function may fuse the multiply-add once it is optimised)
        assert bool(((z - (step + mu)).abs() <= 2 * ulp * (step.abs() + mu.abs())).all())
        self.draws.append({"mu": mu, "logsigma": logsigma, "eps": eps, "z": z})
        return z

    def kl(self, *args):
        out = self._kl(*args)
        self.kls.append(out)
        return out

    def __enter__(self):
        m = self.vae_mod
        self._draw, self._kl = m.draw_gaussian_diag_samples, m.gaussian_analytical_kl
        m.draw_gaussian_diag_samples, m.gaussian_analytical_kl = self.draw, self.kl
        dec = self.model.decoder
        self.hooks = [b.enc.register_forward_hook(lambda mod, i, o: self.q.append(o)) for b in dec.dec_blocks]
        self.hooks += [b.prior.register_forward_hook(lambda mod, i, o: self.p.append(o)) for b in dec.dec_blocks]
        # upstream calls encoder.forward and out_net.forward directly (no module hooks): wrap them on the instances
        enc_forward, out_forward = self.model.encoder.forward, dec.out_net.forward

        def encoder(x):
            acts = enc_forward(x)
            self.acts.update(acts)
            return acts

        def out_net(px_z):
            l = out_forward(px_z)
            self.px_z.append(px_z)
            self.dmol.append(l)
            return l

        self.model.encoder.forward, dec.out_net.forward = encoder, out_net
        return self

    def __exit__(self, *exc):
        self.vae_mod.draw_gaussian_diag_samples, self.vae_mod.gaussian_analytical_kl = self._draw, self._kl
        del self.model.encoder.forward, self.model.decoder.out_net.forward  # back to the class's methods
        for h in self.hooks:
            h.remove()


def median_image(vh, l: torch.Tensor, nr_mix: int) -> torch.Tensor:
    """Upstream's sampler with every uniform draw at 0.5: the largest-logit component's mean, NHWC on [-1, 1]."""
    uniform = torch.Tensor.uniform_
    torch.Tensor.uniform_ = lambda self, *a, **k: self.fill_(0.5)
    try:
        return vh.sample_from_discretized_mix_logistic(l, nr_mix)
    finally:
        torch.Tensor.uniform_ = uniform


def layer_rows(rec: Recorder, zdim: int) -> dict[str, torch.Tensor]:
    """Per layer: the draw's eps (none for means), its z, the posterior's and prior's mean and log sigma, the KL."""
    out = {}
    for i, d in enumerate(rec.draws):
        out[f"L{i}/z"] = d["z"]
        if "eps" in d:
            out[f"L{i}/draw_eps"] = d["eps"]
    for i, q in enumerate(rec.q):
        out[f"L{i}/q_mean"], out[f"L{i}/q_logsigma"] = q.chunk(2, dim=1)
    for i, p in enumerate(rec.p):
        out[f"L{i}/p_mean"], out[f"L{i}/p_logsigma"] = p[:, :zdim], p[:, zdim : 2 * zdim]
    for i, kl in enumerate(rec.kls):
        out[f"L{i}/kl"] = kl
    return out


def passes(H, vae_mod, vh, model, inp: torch.Tensor, target: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """The elbo, means and prior passes of upstream's model on (inp, target), NHWC."""
    out: dict[str, torch.Tensor] = {}
    torch.manual_seed(seed)
    with torch.no_grad():
        with Recorder(vae_mod, model) as rec:
            stats = model.forward(inp, target)
        out.update({f"elbo/{k}": v for k, v in layer_rows(rec, H.zdim).items()})
        out.update({f"elbo/act{r}": a for r, a in rec.acts.items()})
        out["elbo/px_z"], out["elbo/dmol"] = rec.px_z[0], rec.dmol[0]
        out["elbo/distortion"] = model.decoder.out_net.nll(rec.px_z[0], target)  # per image, nats per dimension
        ndims = float(np.prod(inp.shape[1:]))
        out["elbo/rate"] = sum(kl.sum(dim=(1, 2, 3)) for kl in rec.kls) / ndims
        for k in ("elbo", "distortion", "rate"):
            out[f"elbo/batch_{k}"] = stats[k]
        with Recorder(vae_mod, model, means=True) as rec:
            model.forward(inp, target)
        out.update({f"means/{k}": v for k, v in layer_rows(rec, H.zdim).items()})
        out["means/dmol"] = rec.dmol[0]
        out["means/image"] = median_image(vh, rec.dmol[0], H.num_mixtures)
        zs = [rec.draws[i]["z"] for i in range(2)]
        n = inp.shape[0]
        for name, given, call in (("prior_k2", 2, lambda: model.decoder.forward_manual_latents(n, zs, t=0.1)),
                                  ("prior_k0", 0, lambda: model.decoder.forward_uncond(n, t=1.0))):
            with Recorder(vae_mod, model) as rec:
                px_z = call()
                l = model.decoder.out_net(px_z)
            out.update({f"{name}/L{given + i}/draw_eps": d["eps"] for i, d in enumerate(rec.draws)})
            out[f"{name}/dmol"] = l
            out[f"{name}/image"] = median_image(vh, l, H.num_mixtures)
    return out


def perturbed(vae_mod, H, seed: int, fan_in_scaled: bool = False):
    """Upstream's model and initialisation, then Gaussian noise on every tensor: std 0.05, or (``fan_in_scaled``,
    for the full-size model, whose 76 residual blocks would overflow) 0.1 / sqrt(fan-in) on convolution weights
    and 0.01 on the rest."""
    torch.manual_seed(seed)
    model = vae_mod.VAE(H)
    with torch.no_grad():
        for p in model.parameters():
            std = 0.05
            if fan_in_scaled:
                std = 0.1 / p[0].numel() ** 0.5 if p.dim() == 4 else 0.01
            p.add_(torch.randn_like(p) * std)
    return model.eval()


def all_values(n_images: int, h: int, w: int, seed: int) -> torch.Tensor:
    """uint8 NHWC images holding every value 0..255 (as far as they have room), shuffled."""
    g = torch.Generator().manual_seed(seed)
    size = n_images * h * w * 3
    vals = torch.arange(256, dtype=torch.uint8).repeat(size // 256 + 1)[:size]
    return vals[torch.randperm(size, generator=g)].reshape(n_images, h, w, 3)


def natural_images(size: int) -> np.ndarray:
    """scikit-image's colour photographs, centre-cropped square and resized to size x size, uint8 NHWC."""
    import skimage.data
    from skimage.transform import resize

    out = []
    for name in NATURAL:
        a = getattr(skimage.data, name)()[..., :3]
        s = min(a.shape[:2])
        top, left = (a.shape[0] - s) // 2, (a.shape[1] - s) // 2
        small = resize(a[top : top + s, left : left + s], (size, size), anti_aliasing=True)  # floats in [0, 1]
        out.append(np.clip(np.round(small * 255), 0, 255).astype(np.uint8))
    return np.stack(out)


# --------------------------------------------------------------------------- outputs


def write_keys(hps, data, vae_mod, root: Path) -> None:
    keys = {}
    for name in HPS:
        H, _ = hparams(hps, data, name, [], root)
        with torch.device("meta"):
            model = vae_mod.VAE(H)
        keys[name] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        print(f"{name}: {len(keys[name])} keys, {sum(v.numel() for v in model.state_dict().values()):,} numbers")
    with gzip.open(HERE / "keys.json.gz", "wt") as f:
        json.dump({"upstream_commit": UPSTREAM_COMMIT, "keys": keys}, f, separators=(",", ":"))


def write_preprocess(hps, data, root: Path) -> None:
    out: dict[str, torch.Tensor] = {"u8": all_values(2, 8, 16, seed=1)}
    for name in HPS:
        H, pre = hparams(hps, data, name, [], root)
        out[f"{name}/input"], out[f"{name}/target"] = preprocess_u8(pre, H, out["u8"])
    torch.save(out, HERE / "preprocess.pt")


def write_small(hps, data, vae_mod, vh, root: Path) -> None:
    for config, (name, overrides, size) in SMALL.items():
        for dtype in (torch.float32, torch.float64) if config == "cifar10_small" else (torch.float32,):
            torch.set_default_dtype(dtype)
            try:
                H, pre = hparams(hps, data, name, overrides, root)
                H.image_size = size  # set_up_data sets the dataset's size; the reduced model runs at this one
                model = perturbed(vae_mod, H, seed=3)
                u8 = all_values(2, size, size, seed=2)
                inp, target = preprocess_u8(pre, H, u8) if dtype == torch.float32 else preprocess64(pre, H, u8)
                out = {"u8": u8, "input": inp, "target": target,
                       **{f"weights/{k}": v for k, v in model.state_dict().items()},
                       **passes(H, vae_mod, vh, model, inp.to(dtype), target.to(dtype), seed=4)}
                meta = {"upstream_commit": UPSTREAM_COMMIT, "hps": name, "dtype": str(dtype),
                        "hparams": {k: H[k] for k in HPARAMS}}
            finally:
                torch.set_default_dtype(torch.float32)
            suffix = "-f64" if dtype == torch.float64 else ""
            out = {k: v.detach().clone() for k, v in out.items()}  # each its own storage: views would save their base
            torch.save({"meta": meta, "tensors": out}, HERE / f"{config}{suffix}.pt")
            print(f"{config}{suffix}: {len(out)} tensors, ELBO {float(out['elbo/batch_elbo']):.4f} nats/dim")


def write_full_cifar10(hps, data, vae_mod, vh, root: Path, dest: Path, seed: int, repeats: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    H, pre = hparams(hps, data, "cifar10", [], root)
    model = perturbed(vae_mod, H, seed=seed, fan_in_scaled=True)
    torch.save(model.state_dict(), dest / "cifar10-random-model-ema.th")
    u8 = natural_images(32)
    np.save(dest / "images.npy", u8)
    inp, target = preprocess_u8(pre, H, torch.from_numpy(u8))
    ref = passes(H, vae_mod, vh, model, inp, target, seed=seed + 1)
    keep = {k: v for k, v in ref.items() if k.startswith(("means/image", "means/dmol", "elbo/distortion", "elbo/rate"))
            or k.endswith("draw_eps")}
    elbos = []
    torch.manual_seed(seed + 2)
    with torch.no_grad():
        for _ in range(repeats):  # upstream's forward per image: distortion + rate, nats per dimension
            acts = model.encoder.forward(inp)
            px_z, stats = model.decoder.forward(acts)
            rate = sum(s["kl"].sum(dim=(1, 2, 3)) for s in stats) / float(np.prod(inp.shape[1:]))
            elbos.append(model.decoder.out_net.nll(px_z, target) + rate)
    keep["elbo_repeats"] = torch.stack(elbos)
    torch.save({"meta": {"upstream_commit": UPSTREAM_COMMIT, "hps": "cifar10", "seed": seed}, "tensors": keep},
               dest / "reference.pt")
    print(f"full CIFAR-10 reference in {dest}: ELBO {float(keep['elbo_repeats'].mean()):.4f} nats/dim over {repeats} "
          f"passes x {u8.shape[0]} images")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", type=Path, required=True, help=f"openai/vdvae at {UPSTREAM_COMMIT[:7]}")
    ap.add_argument("--full-cifar10", type=Path, default=None, help="write the full-size check's files here instead")
    ap.add_argument("--seed", type=int, default=2024, help="weights of the full-size model")
    ap.add_argument("--repeats", type=int, default=20, help="independent upstream ELBO passes (full-size check)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    hps, data, vae_mod, vh = import_upstream(args.upstream.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stand_in_data(root)
        if args.full_cifar10 is not None:
            write_full_cifar10(hps, data, vae_mod, vh, root, args.full_cifar10, args.seed, args.repeats)
            return
        write_keys(hps, data, vae_mod, root)
        write_preprocess(hps, data, root)
        write_small(hps, data, vae_mod, vh, root)
        np.save(HERE / "natural32.npy", natural_images(32))


if __name__ == "__main__":
    main()
