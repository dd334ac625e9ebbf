"""Easy-route latency against the plain torchvision detector of the same configuration.

The easy route is backbone 1 + router + detector 1; the router is the only extra work, so the
two should take the same time up to the router's tiny cost (goal: at most 1.02x). The plain
detector is the recipe's family in torchvision (FasterRCNN, FCOS or RetinaNet; see
model/reference.py). Both models share the very same modules and run on the same input in the
same process; calls alternate to cancel drift.

    .venv/bin/python bench/bench_easy_route.py --recipe recipes/dy-faster-rcnn-r50-fpn.yaml --image-size 512
    .venv/bin/python bench/bench_easy_route.py --recipe recipes/shapes-fcos-tiny.yaml --batch-size 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dynamicdet_cli.model.build import build_model
from dynamicdet_cli.model.reference import torchvision_reference
from dynamicdet_cli.recipe import load_recipe
from dynamicdet_cli.route_cost import route_flops, route_params


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


@torch.no_grad()
def compare(model, reference, images, warmup: int, repeats: int) -> tuple[list[float], list[float]]:
    """Per-call milliseconds of the easy route and of the reference, alternating A B B A ..."""
    easy = lambda: model.detect(images, route="easy")  # noqa: E731
    plain = lambda: reference(images)  # noqa: E731
    for _ in range(warmup):
        easy(), plain()
    t_easy, t_plain = [], []
    for i in range(repeats):
        if i % 2 == 0:
            t_easy.append(_ms(easy))
            t_plain.append(_ms(plain))
        else:
            t_plain.append(_ms(plain))
            t_easy.append(_ms(easy))
    return t_easy, t_plain


@torch.no_grad()
def router_ms(model, images, repeats: int) -> float:
    """Median milliseconds of the router alone (pooling + MLP) on backbone 1's features: the
    easy route's only extra work, timed apart so that the load's noise does not hide it."""
    image_list, _, _ = model.prepare(images)
    feats1 = model.backbone1(image_list.tensors)
    model.difficulty(feats1, image_list)
    return statistics.median(_ms(lambda: model.difficulty(feats1, image_list)) for _ in range(repeats))


def _quartiles(times: list[float]) -> str:
    q1, _, q3 = statistics.quantiles(times, n=4)
    return f"{q1:.2f}-{q3:.2f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/shapes-tiny.yaml")
    ap.add_argument("--image-size", type=int, default=None, help="square side; default: the recipe's test size")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="override one recipe key, e.g. model.family=retinanet (repeatable)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.overrides)
    side = args.image_size or recipe.model.transform.min_size[-1]
    # Run the networks at `side` itself, not resized to the recipe's training size.
    recipe = load_recipe(args.recipe, [*args.overrides, f"model.transform.min_size={side}",
                                       f"model.transform.max_size={side}"])
    torch.manual_seed(args.seed)
    model = build_model(recipe.model).eval()
    reference = torchvision_reference(model, recipe.model)
    g = torch.Generator().manual_seed(args.seed)
    images = [torch.rand(3, side, side, generator=g) for _ in range(args.batch_size)]  # each 3,H,W

    t_easy, t_plain = compare(model, reference, images, args.warmup, args.repeats)
    easy_ms, plain_ms = statistics.median(t_easy), statistics.median(t_plain)
    params = route_params(model)
    flops = route_flops(model, side, side)
    plain_params = sum(p.numel() for p in reference.parameters())

    print(f"recipe {args.recipe} {' '.join(args.overrides)}: {side}x{side}, batch {args.batch_size}, {args.threads} threads, "
          f"{args.repeats} repeats after {args.warmup} warm-up")
    print(f"  easy route (router included) median {easy_ms:9.2f} ms  (quartiles {_quartiles(t_easy)})")
    print(f"  torchvision {type(reference).__name__:15s} median {plain_ms:9.2f} ms  (quartiles {_quartiles(t_plain)})")
    # Each easy call next to its reference call: the ratio of neighbours cancels the load of
    # a shared CPU better than the ratio of medians taken over minutes.
    paired = statistics.median(e / p for e, p in zip(t_easy, t_plain))
    print(f"  ratio easy / torchvision: of medians {easy_ms / plain_ms:6.3f}, median of paired calls {paired:6.3f}")
    router = router_ms(model, images, args.repeats)
    print(f"  router alone (pooling + MLP)       {router:9.3f} ms = {router / plain_ms:.4f} of the torchvision median")
    for route in ("easy", "hard"):
        print(f"  {route} route: {params[route] / 1e6:7.2f} M params, {flops[route] / 2e9:8.2f} GMACs (per image)")
    print(f"  torchvision: {plain_params / 1e6:7.2f} M params; whole model {params['total'] / 1e6:.2f} M params")


if __name__ == "__main__":
    main()
