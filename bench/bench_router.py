"""Bench: how long router training takes next to one pass of both detectors, and what it buys.

    python bench/bench_router.py CKPT DATA_YAML [--device cpu] [--threads N] [--epochs E]
                                 [--draws D] [--views V] [--batch-size B]

CKPT: a checkpoint with trained detectors; DATA_YAML: its data (with a validation split).
Measured in the same run, on the training set:
  * router training = cache_router_inputs (L1, L2, v of every image) + train_router, as
    timed inside train_router_checkpoint (which then also scores and evaluates val);
  * one inference pass of both detectors = run_both_routes (backbone 1 shared).
Prints their ratio (goal <= 1.5x) and, on the validation set, AP at 50% hard routed by the
router versus at random, and the share of the all-easy -> all-hard AP gap each recovers.
Router settings default to the checkpoint recipe's `router` section.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynamicdet_cli.checkpoint.store import load_checkpoint, model_from_checkpoint  # noqa: E402
from dynamicdet_cli.data.coco import CocoDataset  # noqa: E402
from dynamicdet_cli.data.config import load_data_config  # noqa: E402
from dynamicdet_cli.data.transforms import build_transforms  # noqa: E402
from dynamicdet_cli.evaluation.inference import run_both_routes  # noqa: E402
from dynamicdet_cli.router.training import train_router_checkpoint  # noqa: E402
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--draws", type=int, default=None)
    parser.add_argument("--views", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--random-draws", type=int, default=10)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    ckpt = load_checkpoint(args.ckpt)
    cfg = ckpt.recipe.router
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (("epochs", args.epochs), ("loss_draws", args.draws),
                                                         ("views", args.views), ("batch_size", args.batch_size))
                                      if v is not None})
    data = load_data_config(args.data)
    plain = build_transforms(False)
    train_set = CocoDataset(data.train_ann, data.train_images, plain)
    val_set = CocoDataset(data.val_ann, data.val_images, plain) if data.has_val else None
    infer_batch = ckpt.recipe.train.batch_size
    print(f"{args.ckpt}: {len(train_set)} training images, device {device}, threads {torch.get_num_threads()}, "
          f"router epochs {cfg.epochs}, draws {cfg.loss_draws}, views {cfg.views}, batch {cfg.batch_size}")

    if val_set is None:
        raise SystemExit(f"{args.data}: needs a validation split (train-router scores it)")

    model = model_from_checkpoint(ckpt, device)
    # Warm-up (allocator, kernels) on a few images so the timed pass does not pay for it.
    warm = CocoDataset(data.train_ann, data.train_images, plain)
    warm.image_ids = warm.image_ids[:4]
    run_both_routes(model, warm, device, infer_batch, show_progress=False)
    _sync(device)
    start = time.perf_counter()
    run_both_routes(model, train_set, device, infer_batch, show_progress=False)
    _sync(device)
    forward_s = time.perf_counter() - start
    del model

    # The cache's first batch pays its own warm-up: that is part of the command's cost.
    _, s = train_router_checkpoint(ckpt, train_set, val_set, cfg, device, show_progress=False,
                                   random_draws=args.random_draws)
    router_s = s["cache_seconds"] + s["train_seconds"]
    print(f"one pass of both detectors (run_both_routes, batch {infer_batch}): {forward_s:.2f} s")
    print(f"router training: {router_s:.2f} s = cache {s['cache_seconds']:.2f} s + {cfg.epochs} epochs "
          f"{s['train_seconds']:.2f} s")
    ratio = router_s / forward_s
    print(f"ratio router training / one pass: {ratio:.2f}x (goal <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})")

    pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    print(f"Delta {s['delta']:.4f}; phi > 0.5 on {pct(s['train_hard_share'])} of train, "
          f"{pct(s['val_hard_share'])} of val; Spearman(phi, L1 - L2) train {s['train_spearman']:.3f}, "
          f"val {s['val_spearman']:.3f}")
    if "val_spearman_known_difficulty" in s:
        print(f"Spearman(phi, the synthetic images' known difficulty) on val: {s['val_spearman_known_difficulty']:.3f}")
    print(f"val AP all easy {s['ap_easy']:.4f}, all hard {s['ap_hard']:.4f}")
    print(f"val AP at {pct(s['hard_share_50'])} hard: router {s['ap_router_50']:.4f}, random "
          f"{s['ap_random_50']:.4f} +- {s['ap_random_50_std']:.4f} ({args.random_draws} draws)")
    print(f"share of the easy->hard AP gap recovered: router {pct(s['gap_router_50'])}, "
          f"random {pct(s['gap_random_50'])}")


if __name__ == "__main__":
    main()
