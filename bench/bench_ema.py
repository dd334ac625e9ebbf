"""Bench: the weight average's settings on a short run, several averages of one training each.

    python bench/bench_ema.py [--seeds 0 1 2] [--recipe recipes/shapes-yolo-tiny.yaml]
        [--train 2048] [--val 512] [--threads 2] [--out bench/out/ema]

For each data seed: make-shapes (the demo's sizes), then one training of the recipe's pair in
this process (train.loop's own epoch, optimizer, schedule and augmentation, one process), with
several exponential moving averages of the same weights kept side by side (train/ema.py):

  recipe          the recipe's ema_decay and ema_ramp, with the window cap (what training uses)
  coco            dy-yolo-s.yaml's ema_decay 0.9999 and ema_ramp 0.004, with the cap: what a
                  user fine-tuning a dy-yolo recipe on data of this size gets
  coco-uncapped   the same without the cap (what that user got before it)
  none            the trained weights themselves

After the last epoch each is evaluated on the validation images: COCO AP of detector 1 and
detector 2. One table, one row per (seed, average). Writes results.json in --out; a data folder
found there (data<seed>/) is reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynamicdet_cli.config.recipe import load_recipe, with_overrides  # noqa: E402
from dynamicdet_cli.data.config import load_data_config  # noqa: E402
from dynamicdet_cli.data.open import open_splits  # noqa: E402
from dynamicdet_cli.data.shapes import make_shapes  # noqa: E402
from dynamicdet_cli.evaluation.inference import evaluate_both  # noqa: E402
from dynamicdet_cli.model.build import build_model  # noqa: E402
from dynamicdet_cli.train.distributed import Dist  # noqa: E402
from dynamicdet_cli.train.ema import WINDOW_SHARE, WeightAverage  # noqa: E402
from dynamicdet_cli.train.loop import (_augmented, _train_loader, build_optimizer, lr_factor, seed_everything,  # noqa: E402
                                       train_one_epoch)

COCO = {"decay": 0.9999, "ramp": 0.004}  # recipes/dy-yolo-s.yaml's train.ema_decay, train.ema_ramp


class Averages:
    """Several WeightAverages updated together (train_one_epoch takes one `ema`)."""

    def __init__(self, averages: dict[str, WeightAverage]):
        self.averages = averages

    def update_parameters(self, model) -> None:
        for average in self.averages.values():
            average.update_parameters(model)


def one_seed(recipe_path: str, seed: int, n_train: int, n_val: int, out: Path) -> list[dict]:
    folder = out / f"data{seed}"
    data_yaml = folder / "data.yaml"
    if not data_yaml.is_file():
        make_shapes(folder, n_train=n_train, n_val=n_val, seed=seed, force=True)
    recipe = load_recipe(recipe_path)
    cfg = recipe.train
    splits = open_splits(load_data_config(data_yaml), masks=False, augment=cfg.augment)
    train_set, val_set = splits.train, splits.val
    if cfg.router_holdout > 0:  # as train_detectors: the router's held-out images are not trained on
        train_set = train_set.restricted_to(train_set.split_ids(cfg.router_holdout, cfg.seed)[0])
    recipe = with_overrides(recipe, [f"model.num_classes={train_set.num_classes}"])
    seed_everything(cfg.seed)
    model = build_model(recipe.model, num_classes=train_set.num_classes)
    model.router.requires_grad_(False)
    optimizer = build_optimizer(model, cfg)
    env, device = Dist(), torch.device("cpu")
    total = cfg.epochs * len(_train_loader(train_set, cfg, env, 0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, cfg))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    averages = Averages({
        "recipe": WeightAverage(model, cfg.ema_decay, cfg.ema_ramp, total),
        "coco": WeightAverage(model, COCO["decay"], COCO["ramp"], total),
        "coco-uncapped": WeightAverage(model, COCO["decay"], COCO["ramp"], total, window_share=None),
    })
    start, step = time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        seed_everything(cfg.seed * 1000 + epoch)  # as train_detectors seeds rank 0's epoch
        loader = _train_loader(_augmented(train_set, cfg, epoch), cfg, env, epoch)
        stats = train_one_epoch(model, loader, optimizer, scheduler, scaler, device, epoch, env,
                                grad_clip=cfg.grad_clip, first_step=step, ema=averages)
        step += stats["steps"]
        print(f"seed {seed} epoch {epoch + 1}/{cfg.epochs}: loss {stats['loss']:.3f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    candidates = {**{k: a.module for k, a in averages.averages.items()}, "none": model}
    for name, candidate in candidates.items():
        val = evaluate_both(candidate.eval(), val_set, device, batch_size=cfg.batch_size, show_progress=False)
        rows.append({"seed": seed, "average": name, "steps": step, "d1_AP": val["d1"]["AP"], "d2_AP": val["d2"]["AP"]})
        print(f"seed {seed} {name:14s} d1 AP {val['d1']['AP']:.4f}  d2 AP {val['d2']['AP']:.4f}", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipe", default="recipes/shapes-yolo-tiny.yaml")
    ap.add_argument("--train", type=int, default=2048)
    ap.add_argument("--val", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/out/ema"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [row for seed in args.seeds for row in one_seed(args.recipe, seed, args.train, args.val, args.out)]
    print(f"\n{args.recipe}, window share {WINDOW_SHARE}; COCO AP on the validation images after the last epoch:")
    print(f"{'seed':>4s}  {'average':14s} {'d1 AP':>7s} {'d2 AP':>7s}")
    for r in rows:
        print(f"{r['seed']:4d}  {r['average']:14s} {r['d1_AP']:7.4f} {r['d2_AP']:7.4f}")
    (args.out / "results.json").write_text(json.dumps({"recipe": args.recipe, "window_share": WINDOW_SHARE,
                                                       "coco_settings": COCO, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
