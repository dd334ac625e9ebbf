"""Frozen BatchNorm under mixed precision: ours (keeps the input's dtype) against torchvision's
(its float32 buffers turn every output into float32), in one joint training step of a recipe
whose backbones use `norm: frozen_bn` (the R50 recipes).

Both variants are the same model in the same process: the frozen-BN modules' class is swapped
between steps, alternating A B B A to cancel drift. Reported per variant: the bytes autograd
saves for the backward pass (activations; counted exactly with saved_tensors_hooks, so free of
timing noise) and the median step time (forward + backward).

    python bench/bench_frozen_bn.py --image-size 512 --batch-size 2 --steps 4 --threads 2
    python bench/bench_frozen_bn.py --device cuda --image-size 800 --batch-size 8   # float16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.ops import misc as tv_misc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynamicdet_cli.config.recipe import load_recipe  # noqa: E402
from dynamicdet_cli.model.backbone import FrozenBatchNorm2d  # noqa: E402
from dynamicdet_cli.model.build import build_model  # noqa: E402
from dynamicdet_cli.train.loop import amp_dtype  # noqa: E402


def use(model, cls) -> None:
    """Make every frozen-BN module of `model` an instance of `cls` (same buffers)."""
    for m in model.modules():
        if isinstance(m, tv_misc.FrozenBatchNorm2d):
            m.__class__ = cls


def step(model, images, targets, device) -> tuple[int, float]:
    """(bytes saved for backward, seconds) of one forward + backward under autocast."""
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    model.zero_grad(set_to_none=True)
    sync()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(device.type, dtype=amp_dtype(device)):
        loss = model(images, targets)["loss"]
    loss.backward()
    sync()
    return saved, time.perf_counter() - start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/dy-faster-rcnn-r50-fpn.yaml")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant (after one untimed each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    side = args.image_size
    recipe = load_recipe(args.recipe, [f"model.transform.min_size=[{side}]", f"model.transform.max_size={side}"])
    torch.manual_seed(0)
    model = build_model(recipe.model).to(device).train()
    model.router.requires_grad_(False)
    if not any(isinstance(m, tv_misc.FrozenBatchNorm2d) for m in model.modules()):
        raise SystemExit(f"{args.recipe}: its backbones do not use frozen_bn")
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, side, side, generator=g).to(device) for _ in range(args.batch_size)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 200.0, 220.0], [250.0, 40.0, 400.0, 300.0]], device=device),
                "labels": torch.tensor([1, 2], device=device)} for _ in images]
    variants = {"ours": FrozenBatchNorm2d, "torchvision": tv_misc.FrozenBatchNorm2d}
    saved, seconds = {k: 0 for k in variants}, {k: [] for k in variants}
    for name, cls in variants.items():  # one untimed step each
        use(model, cls)
        saved[name], _ = step(model, images, targets, device)
    for i in range(args.steps):
        for name in (variants if i % 2 == 0 else reversed(list(variants))):
            use(model, variants[name])
            seconds[name].append(step(model, images, targets, device)[1])
    use(model, FrozenBatchNorm2d)
    print(f"{args.recipe}: {side} px, batch {args.batch_size}, {device} autocast {amp_dtype(device)}, "
          f"{args.threads} threads, {args.steps} steps per variant")
    for name in variants:
        print(f"  {name:12s} saved for backward {saved[name] / 2**20:9.1f} MiB, "
              f"step median {statistics.median(seconds[name]):7.3f} s")
    print(f"  ours / torchvision: saved {saved['ours'] / saved['torchvision']:.3f}, "
          f"time {statistics.median(seconds['ours']) / statistics.median(seconds['torchvision']):.3f}")


if __name__ == "__main__":
    main()
