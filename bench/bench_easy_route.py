"""Easy-route latency against the plain torchvision detector of the same configuration.

The easy route is backbone 1 + router + detector 1; the router is the only extra work, so the
two should take the same time up to the router's tiny cost (goal: at most 1.02x). The plain
detector is the recipe's family in torchvision (FasterRCNN, FCOS or RetinaNet; see
model/reference.py). Both models share the very same modules and run on the same input in the
same process; calls alternate to cancel drift.

    .venv/bin/python bench/bench_easy_route.py --recipe recipes/dy-faster-rcnn-r50-fpn.yaml --image-size 512
    .venv/bin/python bench/bench_easy_route.py --recipe recipes/shapes-fcos-tiny.yaml --batch-size 8
    python bench/bench_easy_route.py --recipe recipes/dy-faster-rcnn-r50-fpn.yaml --image-size 800 --device cuda --amp

On CUDA the clock is read after torch.cuda.synchronize, so a call's time covers its kernels,
not only their launches; --amp runs both models under float16 autocast (bfloat16 on CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from dynamicdet_cli.model.build import build_model
from dynamicdet_cli.model.reference import torchvision_reference
from dynamicdet_cli.config.recipe import load_recipe
from dynamicdet_cli.model.cost import route_flops, route_params
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it


def sync_for(device: torch.device):
    """What makes a wall-clock span cover the device's work: CUDA kernels run asynchronously."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _ms(fn, sync=lambda: None) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - start) * 1e3


def autocast_for(device: torch.device, amp: bool):
    """float16 autocast on CUDA, bfloat16 on CPU (as train-detectors --amp), or nothing."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


@torch.no_grad()
def alternate_many(fns: list, warmup: int, repeats: int, sync=lambda: None) -> list[list[float]]:
    """Per-call milliseconds of each function, called in turn, the order reversed every other
    round (A B C, C B A, ...) after `warmup` calls of each, so that drift falls on all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for i in range(repeats):
        order = range(len(fns)) if i % 2 == 0 else reversed(range(len(fns)))
        for k in order:
            times[k].append(_ms(fns[k], sync))
    return times


def alternate(a, b, warmup: int, repeats: int, sync=lambda: None) -> tuple[list[float], list[float]]:
    """Per-call milliseconds of a() and b(), alternating A B B A ... after `warmup` calls of each."""
    t_a, t_b = alternate_many([a, b], warmup, repeats, sync)
    return t_a, t_b


def compare(model, reference, images, warmup: int, repeats: int, sync=lambda: None) -> tuple[list[float], list[float]]:
    """Per-call milliseconds of the easy route and of the reference, alternating A B B A ..."""
    return alternate(lambda: model.detect(images, route="easy"), lambda: reference(images), warmup, repeats, sync)


@torch.no_grad()
def router_ms(model, images, repeats: int, sync=lambda: None) -> float:
    """Median milliseconds of the router alone (pooling + MLP) on backbone 1's features: the
    easy route's only extra work, timed apart so that the load's noise does not hide it."""
    image_list, _, _ = model.prepare(images)
    feats1 = model.backbone1(image_list.tensors)
    model.difficulty(feats1, image_list)
    return statistics.median(_ms(lambda: model.difficulty(feats1, image_list), sync) for _ in range(repeats))


def easy_without_router(model, images):
    """A call of the easy route with the router's score fixed in advance (the same value it
    computes): what the easy route costs beyond the plain detector apart from the router."""
    with torch.no_grad():
        image_list, _, _ = model.prepare(images)
        phi = model.difficulty(model.backbone1(image_list.tensors), image_list)

    def call():
        model.difficulty = lambda feats1, image_list: phi  # shadows the method on this instance only
        try:
            return model.detect(images, route="easy")
        finally:
            del model.difficulty
    return call


def build_pair(recipe_path, side: int | None, overrides: list[str], seed: int = 0):
    """(recipe, model, reference, side): the dynamic detector and the plain torchvision detector
    around its detector 1, both running at `side` px (default: the recipe's test size), on CPU."""
    recipe = load_recipe(recipe_path, overrides)
    side = side or recipe.model.transform.min_size[-1]
    # Run the networks at `side` itself, not resized to the recipe's training size.
    recipe = load_recipe(recipe_path, [*overrides, f"model.transform.min_size={side}",
                                       f"model.transform.max_size={side}"])
    torch.manual_seed(seed)
    model = build_model(recipe.model).eval()
    return recipe, model, torchvision_reference(model, recipe.model), side


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
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--amp", action="store_true", help="float16 autocast on CUDA, bfloat16 on CPU")
    ap.add_argument("--without-router", action="store_true",
                    help="also time the easy route with the router's score fixed in advance, in the same "
                         "alternation: the easy route's overhead apart from the router, and the router's "
                         "cost where it runs (between backbone 1 and detector 1), not only alone")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    _, model, reference, side = build_pair(args.recipe, args.image_size, args.overrides, args.seed)
    model.to(device)
    reference.to(device)  # shares detector 1's modules, already moved: a no-op for those
    g = torch.Generator().manual_seed(args.seed)
    images = [torch.rand(3, side, side, generator=g).to(device) for _ in range(args.batch_size)]  # each 3,H,W
    sync = sync_for(device)

    with autocast_for(device, args.amp):
        if args.without_router:
            t_easy, t_plain, t_bare = alternate_many(
                [lambda: model.detect(images, route="easy"), lambda: reference(images),
                 easy_without_router(model, images)], args.warmup, args.repeats, sync)
        else:
            t_easy, t_plain = compare(model, reference, images, args.warmup, args.repeats, sync)
        router = router_ms(model, images, args.repeats, sync)
    easy_ms, plain_ms = statistics.median(t_easy), statistics.median(t_plain)
    params = route_params(model)
    flops = route_flops(model, side, side)
    plain_params = sum(p.numel() for p in reference.parameters())

    print(f"recipe {args.recipe} {' '.join(args.overrides)}: {side}x{side}, batch {args.batch_size}, {args.threads} threads, "
          f"{device}{' amp' if args.amp else ''}, "
          f"{args.repeats} repeats after {args.warmup} warm-up")
    print(f"  easy route (router included) median {easy_ms:9.2f} ms  (quartiles {_quartiles(t_easy)})")
    print(f"  torchvision {type(reference).__name__:15s} median {plain_ms:9.2f} ms  (quartiles {_quartiles(t_plain)})")
    # Each easy call next to its reference call: the ratio of neighbours cancels the load of
    # a shared CPU better than the ratio of medians taken over minutes.
    paired = statistics.median(e / p for e, p in zip(t_easy, t_plain))
    print(f"  ratio easy / torchvision: of medians {easy_ms / plain_ms:6.3f}, median of paired calls {paired:6.3f}")
    print(f"  router alone (pooling + MLP)       {router:9.3f} ms = {router / plain_ms:.4f} of the torchvision median")
    if args.without_router:
        bare_ms = statistics.median(t_bare)
        paired_bare = statistics.median(b / p for b, p in zip(t_bare, t_plain))
        print(f"  easy route, router's score fixed   {bare_ms:9.2f} ms; ratio to torchvision: of medians "
              f"{bare_ms / plain_ms:6.3f}, median of paired calls {paired_bare:6.3f}")
        print(f"  router where it runs (easy - fixed) {easy_ms - bare_ms:8.3f} ms = "
              f"{(easy_ms - bare_ms) / plain_ms:.4f} of the torchvision median")
    for route in ("easy", "hard"):
        print(f"  {route} route: {params[route] / 1e6:7.2f} M params, {flops[route] / 2e9:8.2f} GMACs (per image)")
    print(f"  torchvision: {plain_params / 1e6:7.2f} M params; whole model {params['total'] / 1e6:.2f} M params")


if __name__ == "__main__":
    main()
