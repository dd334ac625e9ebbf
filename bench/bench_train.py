"""Joint-training throughput of the DynamicDetector against one plain torchvision detector
(a mask_rcnn recipe trains both on the shapes' instance masks).

Joint training runs backbone 1, the composite connection, backbone 2 and both heads on every
image, so a step should cost about what its FLOPs say: roughly twice a plain detector's. This
measures both on the same shapes batches in the same process, alternating A B / B A to cancel
drift, and prints images/s (median over steps), training FLOPs (forward + backward, counted by
FlopCounterMode; RoIAlign and NMS count zero) and the ratio of the two ratios (1.0: joint
training is exactly as much slower as it is more work).

The plain detector is the recipe's family in torchvision (FasterRCNN, FCOS, RetinaNet) around a
second copy of detector 1 (backbone 1, its FPN and heads), built with the recipe's settings (see
model/reference.py). Each
model has its own optimizer (the recipe's); a step is forward + backward + optimizer step.

    .venv/bin/python bench/bench_train.py --recipe recipes/shapes-tiny.yaml --steps 10 --batch-size 8 --image-size 128
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dynamicdet_cli.data.coco import CocoDataset, collate
from dynamicdet_cli.data.shapes import CLASSES, make_shapes
from dynamicdet_cli.model.reference import torchvision_reference
from dynamicdet_cli.data.transforms import build_transforms
from dynamicdet_cli.model.build import build_model, needs_masks
from dynamicdet_cli.config.recipe import ONE_STAGE_FAMILIES, load_recipe
from dynamicdet_cli.train.loop import build_optimizer
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it


def shapes_batches(folder: Path, batch_size: int, n_batches: int, side: int,
                   masks: bool = False) -> list[tuple[list, list]]:
    """`n_batches` distinct batches of synthetic shapes, side x side, without augmentation."""
    make_shapes(folder, n_train=batch_size * n_batches, n_val=0, size=side, seed=0)
    ds = CocoDataset(folder / "train.json", folder / "train", transforms=build_transforms(False), masks=masks)
    return [collate([ds[i] for i in range(b * batch_size, (b + 1) * batch_size)]) for b in range(n_batches)]


def labels_from_zero(batch: tuple[list, list]) -> tuple[list, list]:
    """The batch with labels 1..C as 0..C-1: torchvision's one-stage detectors count from 0."""
    images, targets = batch
    return images, [{**t, "labels": t["labels"] - 1} for t in targets]


def make_step(model, optimizer, loss_key: str | None):
    """One training step on (images, targets): forward, backward, optimizer step."""
    def step(images, targets):
        losses = model(images, targets)
        loss = losses[loss_key] if loss_key else sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def timed(step, batch, seed: int) -> float:
    torch.manual_seed(seed)  # the same anchor/proposal sampling for both models at each step
    start = time.perf_counter()
    step(*batch)
    return time.perf_counter() - start


def training_flops(model, batch, loss_key: str | None) -> float:
    """FLOPs of one forward + backward over `batch` (no optimizer step)."""
    counter = FlopCounterMode(display=False)
    with counter:
        losses = model(*batch)
        (losses[loss_key] if loss_key else sum(losses.values())).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/shapes-tiny.yaml")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=128, help="square side of the shapes images and the input size")
    ap.add_argument("--batches", type=int, default=4, help="distinct batches, cycled")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 by default: on a shared CPU, more threads mostly wait on each other)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    side = args.image_size
    recipe = load_recipe(args.recipe, [f"model.transform.min_size=[{side}]", f"model.transform.max_size={side}"])
    torch.manual_seed(0)
    dynamic = build_model(recipe.model, num_classes=len(CLASSES)).train()
    dynamic.router.requires_grad_(False)  # as in train-detectors: step 1 trains the detectors only
    torch.manual_seed(0)  # the plain detector starts from the very weights of detector 1
    plain = torchvision_reference(build_model(recipe.model, num_classes=len(CLASSES)), recipe.model).train()
    steps = {
        "dynamic": make_step(dynamic, build_optimizer(dynamic, recipe.train), "loss"),
        "plain": make_step(plain, build_optimizer(plain, recipe.train), None),
    }

    with tempfile.TemporaryDirectory() as tmp:
        batches = shapes_batches(Path(tmp), args.batch_size, args.batches, side, needs_masks(recipe.model.family))
    one_stage = recipe.model.family in ONE_STAGE_FAMILIES
    model_batches = {"dynamic": batches, "plain": [labels_from_zero(b) for b in batches] if one_stage else batches}
    times = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        order = ("dynamic", "plain") if i % 2 == 0 else ("plain", "dynamic")
        for name in order:
            seconds = timed(steps[name], model_batches[name][i % len(batches)], seed=i)
            if i >= args.warmup:
                times[name].append(seconds)
    flops = {"dynamic": training_flops(dynamic, batches[0], "loss"), "plain": training_flops(plain, model_batches["plain"][0], None)}

    rate = {name: args.batch_size / statistics.median(t) for name, t in times.items()}
    slowdown = rate["plain"] / rate["dynamic"]
    work = flops["dynamic"] / flops["plain"]
    print(f"recipe {args.recipe}: {side}x{side}, batch {args.batch_size}, {args.threads} threads, "
          f"{args.steps} timed steps after {args.warmup} warm-up, alternating")
    for name, label in (("dynamic", "DynamicDetector joint training"), ("plain", f"torchvision {type(plain).__name__} training")):
        q1, _, q3 = statistics.quantiles(times[name], n=4, method="inclusive") if len(times[name]) > 1 else (0, 0, 0)
        print(f"  {label:32s} {rate[name]:7.2f} images/s  (step median {statistics.median(times[name]) * 1e3:7.0f} ms, "
              f"quartiles {q1 * 1e3:.0f}-{q3 * 1e3:.0f})  {flops[name] / args.batch_size / 1e9:7.2f} GFLOPs/image fwd+bwd")
    print(f"  time ratio  (plain images/s / dynamic images/s)  {slowdown:6.3f}")
    print(f"  FLOP ratio  (dynamic FLOPs / plain FLOPs)         {work:6.3f}")
    print(f"  ratio of ratios (time / FLOPs; 1.0 = cost follows the work) {slowdown / work:6.3f}")


if __name__ == "__main__":
    main()
