"""The batched attack against one point and one restart at a time, and batched against per-image MS-SSIM.

The reference code attacked one image and one restart at a time and scored MS-SSIM one
image at a time; robustvae optimises all points x restarts in one batch, each with its
own seeded start and best iterate, and scores a batch at once. Both ways run here on the
same model, images, seeds and steps, and the results must agree (:func:`compare`).
"""

from __future__ import annotations

import torch

from benchmarks.common import best_time, count_flops, peak_memory, synchronizer, timed
from robustvae.attacks import LatentPGD
from robustvae.metrics import ms_ssim


def inputs(model, n: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """``n`` fixed random images of the model's shape."""
    c, s = model.cfg.image_channels, model.cfg.image_size
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed)).to(device)


# "the same results": batching changes float summation order, so where a gradient component is ~0
# its sign can flip and that image's PGD path moves a few pixels apart. Most images must match to
# rounding, and every image's best objective must stay close.
MATCH_RTOL, LOSS_ATOL, PIXEL_ATOL = 1e-4, 1e-6, 1e-5  # an image matches: objective and every pixel equal to rounding
MIN_MATCHING, LOSS_RTOL = 0.95, 1e-2  # share of images that must match; every image's objective within 1 %


def compare(adv: torch.Tensor, loss: torch.Tensor, ref_adv: torch.Tensor, ref_loss: torch.Tensor) -> dict[str, object]:
    """How far an attack's results (adversarial images, best objective per image) are from a reference run."""
    gap = (loss - ref_loss).abs()
    scale = ref_loss.abs()
    pixels = (adv - ref_adv).abs().flatten(1) <= PIXEL_ATOL
    matching = (gap <= LOSS_ATOL + MATCH_RTOL * scale) & pixels.all(1)
    close = bool((gap <= LOSS_ATOL + LOSS_RTOL * scale).all())
    # 95 % of the images; on the few images of a --quick run, at most one may take another path
    allowed_off = max(int((1 - MIN_MATCHING) * matching.numel()), 1)
    return {
        "max_abs_difference": (adv - ref_adv).abs().max().item(),
        "same_pixels": pixels.float().mean().item(),
        "matching_images": matching.float().mean().item(),
        "max_loss_abs_difference": gap.max().item(),
        "max_loss_rel_difference": (gap / scale.clamp_min(LOSS_ATOL)).max().item(),
        "same": close and int((~matching).sum()) <= allowed_off,
    }


def assert_same(cmp: dict[str, object], what: str) -> None:
    if not cmp["same"]:
        raise AssertionError(
            f"{what}: results differ ({cmp['matching_images']:.1%} of images equal to rounding, need "
            f"{MIN_MATCHING:.0%} or all but one; objectives up to {cmp['max_loss_rel_difference']:.2e} apart relative, allowed {LOSS_RTOL})"
        )


def attack_flops(objective, image: torch.Tensor, steps: int) -> int:
    """FLOPs of attacking one image: the clean posteriors and the last iterate's score (forward passes)
    and ``steps`` forward + backward passes. (Counted piecewise: FlopCounterMode's module hooks trip
    over the attack's no-grad passes.)"""
    ref = objective.reference(image)
    d = image.clone().requires_grad_(True)
    forward = count_flops(lambda: objective(d, ref))
    step = count_flops(lambda: torch.autograd.grad(objective(d, ref).sum(), d))
    return 2 * forward + steps * step


def measure_attack(model, k: int, points: int, restarts: int, steps: int, device: torch.device) -> dict[str, object]:
    """PGD (L-inf, eps 0.1, skl) on points x restarts images: one batch against one image at a time."""
    x = inputs(model, points, device).repeat_interleave(restarts, 0)
    seeds = list(range(x.shape[0]))
    sync = synchronizer(device)

    def attack(n_steps: int = steps) -> LatentPGD:
        return LatentPGD(model, k=k, eps=0.1, steps=n_steps)

    batched = attack()
    adv, t_batched = timed(lambda: batched(x, seeds=seeds), sync)
    singles = [attack() for _ in seeds]
    one, t_single = timed(lambda: torch.cat([a(x[i : i + 1], seeds=[seeds[i]]) for i, a in enumerate(singles)]), sync)
    cmp = compare(one, torch.cat([a.best_loss for a in singles]), adv, batched.best_loss)
    assert_same(cmp, f"attack k={k}, one at a time vs batched")
    flops = attack_flops(batched.objective, x[:1], steps) * x.shape[0]  # every image costs the same
    return {
        "k": k,
        "points": points,
        "restarts": restarts,
        "steps": steps,
        "images": x.shape[0],
        "batched_s": t_batched,
        "one_at_a_time_s": t_single,
        "speedup": t_single / t_batched,
        "image_steps_per_s": x.shape[0] * steps / t_batched,
        "flops": flops,
        "flops_per_image_step": flops / (x.shape[0] * steps),
        "achieved_flops_per_s": flops / t_batched,
        "one_at_a_time_flops_per_s": flops / t_single,
        **cmp,
        # memory does not grow with the number of steps: one step of each
        "peak_memory": peak_memory(lambda: attack(1)(x, seeds=seeds), device),
        "one_at_a_time_peak_memory": peak_memory(lambda: attack(1)(x[:1], seeds=seeds[:1]), device),
    }


def measure_ms_ssim(model, n: int, device: torch.device, repeats: int) -> dict[str, object]:
    """Batched MS-SSIM of ``n`` image pairs against one call per pair (same values required)."""
    x = inputs(model, n, device, seed=1)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(device)).clamp(0, 1)
    sync = synchronizer(device)
    batched = ms_ssim(x, y)
    single = torch.cat([ms_ssim(x[i : i + 1], y[i : i + 1]) for i in range(n)])
    diff = (batched - single).abs().max().item()
    if diff > 1e-4:
        raise AssertionError(f"MS-SSIM per image differs from batched by {diff:.2e}")
    t_batched = best_time(lambda: ms_ssim(x, y), repeats, sync=sync)
    t_single = best_time(
        lambda: [ms_ssim(x[i : i + 1], y[i : i + 1]) for i in range(n)], max(1, repeats // 3), sync=sync
    )
    return {
        "images": n,
        "shape": list(x.shape[1:]),
        "batched_s": t_batched,
        "per_image_s": t_single,
        "speedup": t_single / t_batched,
        "max_abs_difference": diff,
        "peak_memory": peak_memory(lambda: ms_ssim(x, y), device),
        "per_image_peak_memory": peak_memory(lambda: ms_ssim(x[:1], y[:1]), device),
    }
