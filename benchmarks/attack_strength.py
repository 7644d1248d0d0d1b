"""Attack strength at one budget: context levels changed and reconstruction damage per attack and objective.

    python -m benchmarks.attack_strength RUN [--points 20] [--restarts 5] [--steps 50] [--eps 0.1] [--k 1]

For a trained model (a run directory or checkpoint), attacks the first ``points``
label-stratified test images x ``restarts`` seeded restarts with each configuration of
:data:`CONFIGS` (built through the registry, as the sweep builds them) and scores every
result with the sweep's protocol: MS-SSIM between ``reconstruct(x, k, T, noise)`` and
``reconstruct(x + d, k, T, noise)``, the same seeded prior noise per point for both (and
for the ``recon`` objective's own reconstructions). Per configuration it prints the
mean number of context levels changed (over points x restarts), the mean and the worst
over points of each point's worst-restart MS-SSIM, the model passes per image and the
wall time. A uniformly random perturbation of the budget is the first row.
"""

from __future__ import annotations

import argparse
import time

import torch

from robustvae import zoo
from robustvae.attacks import LatentObjective, make_attack, random_start
from robustvae.config import AttackConfig
from robustvae.data import eval_images, load_dataset, stratified_order
from robustvae.experiments.attack import prior_noise
from robustvae.metrics import ms_ssim
from robustvae.seeding import derive_seed

# (attack, objective, straight_through): the L2-of-coefficients surrogate first, then what replaces it
CONFIGS = (
    ("pgd", "skl", False),
    ("pgd", "boundary", False),
    ("apgd", "boundary", False),
    ("apgd", "boundary", True),
    ("pgd", "recon", False),
    ("apgd", "recon", False),
    ("square", "recon", False),
    ("square", "boundary", True),
)


def measure(model, x: torch.Tensor, k: int, cfg: AttackConfig, restarts: int, seed: int = 0) -> list[dict[str, object]]:
    """One row per configuration (and the random-noise row first), each scored with the sweep's protocol."""
    n = x.shape[0]
    X = x.repeat_interleave(restarts, 0)
    noise = [
        t.repeat_interleave(restarts, 0) for t in prior_noise(model, [derive_seed(seed, "prior", p) for p in range(n)])
    ]
    seeds = [derive_seed(seed, "start", k, p, r) for p in range(n) for r in range(restarts)]
    count = LatentObjective(model, k).levels_changed
    with torch.no_grad():
        clean = model.reconstruct(X, k, cfg.temperature, noise)

    def row(name: str, adv: torch.Tensor, passes: dict[str, int], seconds: float) -> dict[str, object]:
        with torch.no_grad():
            score = ms_ssim(model.reconstruct(adv, k, cfg.temperature, noise), clean).view(n, restarts)
        worst = score.min(1).values
        return {
            "attack": name,
            "levels_changed": count(X, adv).mean().item(),
            "msssim_mean_of_worst": worst.mean().item(),
            "msssim_worst": worst.min().item(),
            "forward_per_image": passes["forward"],
            "backward_per_image": passes["backward"],
            "seconds": seconds,
        }

    rows = [row("uniform noise", X + random_start(X, cfg.eps, cfg.norm, seeds), {"forward": 0, "backward": 0}, 0.0)]
    for optimizer, objective, st in CONFIGS:
        c = AttackConfig(**{**vars(cfg), "optimizer": optimizer, "objective": objective, "straight_through": st})
        attack = make_attack(model, k, c)
        t = time.perf_counter()
        adv = attack(X, seeds=seeds, noise=noise)
        rows.append(
            row(
                f"{optimizer} {objective}{' (straight-through)' if st else ''}",
                adv,
                attack.passes,
                time.perf_counter() - t,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run directory or checkpoint of a trained model")
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--norm", default="linf")
    ap.add_argument("--k", type=int, default=1)
    args = ap.parse_args(argv)
    loaded = zoo.load(args.run)
    model = loaded.model.eval()
    ds = load_dataset(loaded.config.data)
    order = stratified_order(ds.split("test").labels, 0)[: args.points]
    x = eval_images(ds, "test", model.cfg.binary)[order]
    cfg = AttackConfig(eps=args.eps, norm=args.norm, steps=args.steps, restarts=args.restarts)
    rows = measure(model, x, args.k, cfg, args.restarts)
    print(
        f"{args.run}: k={args.k}, {args.norm} eps {args.eps}, {args.points} points x {args.restarts} restarts, "
        f"{args.steps} steps; context levels: {sum(i.dims for i in model.layers[: args.k] if i.deterministic)}"
    )
    print(
        "| attack | levels changed | MS-SSIM mean of worst | MS-SSIM worst | forward / backward passes per image | s |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['attack']} | {r['levels_changed']:.2f} | {r['msssim_mean_of_worst']:.4f} | {r['msssim_worst']:.4f} | "
            f"{r['forward_per_image']} / {r['backward_per_image']} | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
