"""Golden outputs of robustvae at git 88ee658 (before the architecture refactor)."""
import json, sys, dataclasses
from pathlib import Path
import numpy as np
import torch
torch.set_num_threads(1)
from robustvae.config import AttackConfig, CompressConfig, DataConfig
from robustvae.registry import get_preset
from robustvae.training import Trainer
from robustvae.attacks import run_attack
from robustvae.report import make_report
from robustvae.compression import run_compression
from robustvae.evaluation import evaluate_model
from robustvae import zoo
from robustvae.data import load_dataset, eval_images

OUT = Path(sys.argv[1]); WORK = Path(sys.argv[2])
OUT.mkdir(parents=True, exist_ok=True)
CPU = torch.device("cpu")
runs = {}
for preset in ("vdvae-mnist-tiny", "dctvae-mnist-tiny"):
    cfg = get_preset(preset)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=6, batch_size=16, warmup_steps=2,
                              log_every=2, checkpoint_every=4, val_batches=2))
    d = WORK / preset
    Trainer.prepare_dir(d, resume=False, force=True)
    summ = Trainer(cfg, d, CPU, quiet=True).fit()
    runs[preset] = d
    metrics = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        m.pop("elapsed_s", None)
    sd = zoo.read_checkpoint(d / "last.pt")["model"]
    (OUT / f"train-{preset}.json").write_text(json.dumps({
        "metrics": metrics,
        "weights_sum": {k: float(v.double().sum()) for k, v in sd.items()},
        "weights_abs_sum": {k: float(v.double().abs().sum()) for k, v in sd.items()}}, indent=1))

configs = {
    "default": AttackConfig(layers="all", points=3, restarts=2, steps=3, floor_draws=1, noise_draws=1, gallery_points=1),
    "l2-kl_forward": AttackConfig(layers="1,2", eps=0.5, norm="l2", points=2, restarts=2, steps=3, objective="kl_forward",
                                  floor_draws=1, noise_draws=1, gallery_points=0),
    "sgd-supervised": AttackConfig(layers="2", points=2, restarts=1, steps=3, objective="supervised", optimizer="sgd",
                                   floor_draws=1, noise_draws=1, gallery_points=0, straight_through=True),
}
for name, ac in configs.items():
    out = WORK / f"attack-{name}"
    df = run_attack([str(runs[p]) for p in runs], ac, out, device="cpu", quiet=True)
    (OUT / f"attack-{name}.jsonl").write_text((out / "records.jsonl").read_text())
    rep = make_report([out], WORK / f"report-{name}", force=True)
    s = json.loads((WORK / f"report-{name}" / "summary.json").read_text())
    (OUT / f"report-{name}.json").write_text(json.dumps({"table": s["table"], "checks": s["checks"],
                                                         "diagnostics": s.get("layers", s.get("diagnostics"))}, indent=1, default=str))
# compression
from PIL import Image
g = np.random.default_rng(0)
imgdir = WORK / "imgs"; imgdir.mkdir(exist_ok=True)
ds = load_dataset(DataConfig("mnist-offline"))
x = eval_images(ds, "test")[:4]
tile = (torch.cat([torch.cat([x[0], x[1]], 2), torch.cat([x[2], x[3]], 2)], 1)[0].numpy() * 255).round().astype(np.uint8)
Image.fromarray(tile).save(imgdir / "tile.png")
Image.fromarray(tile[:30, :33]).save(imgdir / "crop.png")
recs, sweep = run_compression([str(runs[p]) for p in runs], [imgdir], CompressConfig(layers="1,2,3", seed=1), WORK / "compress",
                              device="cpu", force=True)
recs.to_csv(OUT / "compress-records.csv", index=False)
# eval
for p, d in runs.items():
    m = zoo.load(d)
    res = evaluate_model(m, eval_images(ds, "test")[:20], iw_samples=8, batch_size=10, device=CPU, seed=0, quiet=True)
    (OUT / f"eval-{p}.json").write_text(json.dumps(res, indent=1))
print("ok")
