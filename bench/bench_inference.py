"""Bench: variable-speed inference — does a calibrated threshold deliver its latency, do
mixed-route batches cost what the linear model says, and how much faster is the sweep?

    python bench/bench_inference.py CKPT DATA_YAML [--batch-size 1] [--repeats N]
                                    [--mixed-batch 8] [--threads 2] [--device cpu]

CKPT: a checkpoint with a trained router (train-router); DATA_YAML: its data (validation
split used). Three figures, measured in the same run on this machine:

  a. calibration: lat1 / lat2 measured on the real validation images (the whole set, at
     --batch-size; `calibrate --random-images` times random ones, shown for comparison), a
     target midway between them, tau from `operating_point`; then the mean model time per
     image actually achieved running the model under tau over the validation images
     (median over --repeats passes, interleaved with all-easy and all-hard passes).
     Goal: within 5% of the target.
  b. mixed-route batches of --mixed-batch images at hard ratio k in {0, .25, .5, .75, 1}
     (each batch's tau chosen from its own phi, so exactly round(k B) of its images go
     hard) against lat1 + k (lat2 - lat1) with lat1 / lat2 the k = 0 / k = 1 batches.
  c. wall time of `evaluate.sweep` (11 hard ratios; random draws 0, and the default 5)
     against evaluating the same 11 thresholds one by one (`evaluate_route`). Goal >= 4x.

Model time only: images are decoded once up front and the clock spans the model call. Every
pass runs through a RouteBatcher (speed/batcher.py), as calibrate, predict and evaluate
do; bench_calibration.py times mixed batches both regrouped and split batch by batch.
The load average is printed before each figure: on a shared CPU, timings move with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynamicdet_cli.speed.calibrate import threshold_for_hard_ratio  # noqa: E402
from dynamicdet_cli.checkpoint.store import load_checkpoint, model_from_checkpoint  # noqa: E402
from dynamicdet_cli.data.coco import CocoDataset  # noqa: E402
from dynamicdet_cli.data.config import load_data_config  # noqa: E402
from dynamicdet_cli.data.transforms import build_transforms  # noqa: E402
from dynamicdet_cli.core.errors import DynamicDetError  # noqa: E402
from dynamicdet_cli.evaluation.evaluate import evaluate_route, sweep  # noqa: E402
from dynamicdet_cli.speed.latency import measure_routes, operating_point  # noqa: E402
from dynamicdet_cli.speed.regime import device_name  # noqa: E402
from dynamicdet_cli.speed.batcher import RouteBatcher  # noqa: E402
from dynamicdet_cli.speed.timing_images import random_images  # noqa: E402
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it

RATIOS = [i / 10 for i in range(11)]
MIXED_RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@torch.inference_mode()
def timed_pass(model, batches: list[list[torch.Tensor]], routes: list, device) -> tuple[float, int]:
    """One pass over `batches` (batch i under routes[i]) through a RouteBatcher, as the commands
    run them (each route on full batches): (mean model ms per image, hard images)."""
    total, n_images, n_hard = 0.0, 0, 0
    batcher = RouteBatcher(model, routes[0], len(batches[0]))
    for i, (images, route) in enumerate(zip(batches, routes)):
        _sync(device)
        start = time.perf_counter()
        out = batcher.add(images, range(len(images)), route=route)
        if i == len(batches) - 1:
            out += batcher.finish()
        _sync(device)
        total += time.perf_counter() - start
        n_images += len(images)
        n_hard += sum(d.detection["route"] == "hard" for d in out)
    return 1e3 * total / n_images, n_hard


def interleaved(model, batches, plans: dict[str, list], device, repeats: int) -> dict[str, tuple[float, int]]:
    """Median ms per image of each plan (name -> route per batch) over `repeats` passes, the
    plans taking turns within every pass so drift and other load hit all alike; with each
    plan's hard image count. One untimed warm-up pass of each plan first."""
    for routes in plans.values():
        timed_pass(model, batches, routes, device)
    samples: dict[str, list[float]] = {name: [] for name in plans}
    hard: dict[str, int] = {}
    for _ in range(repeats):
        for name, routes in plans.items():
            ms, hard[name] = timed_pass(model, batches, routes, device)
            samples[name].append(ms)
    return {name: (statistics.median(v), hard[name]) for name, v in samples.items()}


@torch.inference_mode()
def batch_tau(model, images: list[torch.Tensor], k: float) -> float:
    """A threshold that sends round(k B) of this batch's images hard, from the batch's own phi
    (what `detect` reports for this very batch, so the same values it will route by)."""
    phi = torch.stack([out["difficulty"] for out in model(images, route="easy")])  # B
    return threshold_for_hard_ratio(phi, k)


def figure_a(model, ckpt, images, device, batch_size: int, repeats: int, side: int) -> None:
    print(f"\na. latency calibration, batch {batch_size}, {len(images)} validation images ({_load()})")
    batches = _batches(images, batch_size)
    fixed = {"easy": ["easy"] * len(batches), "hard": ["hard"] * len(batches)}
    real = interleaved(model, batches, fixed, device, repeats)
    lat1, lat2 = real["easy"][0], real["hard"][0]
    random = random_images(batch_size, side)
    rand = measure_routes(model, device, random.images, batch_size, repeats=max(repeats, 10), source=random.source)
    print(f"   lat1 / lat2 on the real validation images: {lat1:7.2f} / {lat2:7.2f} ms per image   <- used")
    print(f"   lat1 / lat2 on one batch of random {side} px images (calibrate --random-images): "
          f"{rand.easy_ms:7.2f} / {rand.hard_ms:7.2f} ms per image")
    target = (lat1 + lat2) / 2
    measured = replace(rand, easy_ms=lat1, hard_ms=lat2)
    point = operating_point(ckpt, target_ms=target, latency=measured)
    tau = point.tau
    print(f"   target {target:.2f} ms -> k {(target - lat1) / (lat2 - lat1):.3f}, tau {tau:.4f}, "
          f"{100 * point.hard_ratio:.1f}% hard on the stored val scores, expected {point.expected_ms:.2f} ms")
    check = interleaved(model, batches, {**fixed, "tau": [tau] * len(batches)}, device, repeats)
    got, n_hard = check["tau"]
    lat1b, lat2b = check["easy"][0], check["hard"][0]
    share = n_hard / len(images)
    print(f"   achieved under tau: {got:7.2f} ms per image ({100 * share:.1f}% routed hard); "
          f"target {target:.2f} ms: error {100 * (got - target) / target:+.1f}% (goal within 5%)")
    print(f"   lat1 / lat2 re-measured alongside: {lat1b:.2f} / {lat2b:.2f} ms; linear model at the "
          f"achieved share: {lat1b + share * (lat2b - lat1b):.2f} ms "
          f"({100 * (got - (lat1b + share * (lat2b - lat1b))) / got:+.1f}% vs achieved)")


def figure_b(model, images, device, batch_size: int, repeats: int) -> None:
    print(f"\nb. mixed-route batches of {batch_size} ({_load()})")
    batches = [b for b in _batches(images, batch_size) if len(b) == batch_size]
    if not batches:
        raise DynamicDetError(f"fewer than {batch_size} validation images: lower --mixed-batch")
    plans = {k: [batch_tau(model, b, k) for b in batches] for k in MIXED_RATIOS}
    result = interleaved(model, batches, plans, device, repeats)
    lat1, lat2 = result[0.0][0], result[1.0][0]
    print(f"   {len(batches)} batches, {repeats} passes; lat1 {lat1:.2f}, lat2 {lat2:.2f} ms per image")
    print("       k   hard/batch   measured ms   lat1 + k (lat2 - lat1)   diff")
    for k in MIXED_RATIOS:
        ms, n_hard = result[k]
        share = n_hard / (len(batches) * batch_size)
        linear = lat1 + share * (lat2 - lat1)
        print(f"   {k:5.2f}   {n_hard / len(batches):10.2f}   {ms:11.2f}   {linear:22.2f}   "
              f"{100 * (ms - linear) / linear:+5.1f}%")


def figure_c(model, ckpt, dataset, device, batch_size: int) -> None:
    print(f"\nc. accuracy-latency curve over {len(RATIOS)} hard ratios, {len(dataset)} images, "
          f"batch {batch_size} ({_load()})")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        times = {}
        for draws in (0, 5):
            start = time.perf_counter()
            rows, _, _ = sweep(model, ckpt, dataset, device, out / f"sweep{draws}", RATIOS, random_draws=draws,
                               batch_size=batch_size, show_progress=False)
            times[draws] = time.perf_counter() - start
        start = time.perf_counter()
        single = [evaluate_route(model, dataset, row["tau"], device, out / "one", batch_size, show_progress=False)
                  for row in rows]
        one_by_one = time.perf_counter() - start
    worst = max(abs(r["AP"] - e.metrics["AP"]) for r, e in zip(rows, single))
    print(f"   evaluate.sweep, random draws 0: {times[0]:7.2f} s")
    print(f"   evaluate.sweep, random draws 5: {times[5]:7.2f} s")
    print(f"   evaluate_route x {len(rows)} thresholds: {one_by_one:7.2f} s")
    print(f"   speed-up {one_by_one / times[0]:.1f}x (draws 0), {one_by_one / times[5]:.1f}x (draws 5); "
          f"goal >= 4x. Largest AP difference sweep vs one by one: {worst:.2e}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("data", type=Path, help="data YAML with val_ann / val_images")
    ap.add_argument("--batch-size", type=int, default=1, help="batch size of the calibration (a)")
    ap.add_argument("--mixed-batch", type=int, default=8, help="batch size of the mixed-route batches (b)")
    ap.add_argument("--sweep-batch", type=int, default=8, help="batch size of the evaluations (c)")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes over the validation images (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default="abc", help="which figures to run, e.g. 'ab'")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.router is None:
        raise SystemExit(f"{args.checkpoint}: no trained router; run train-router first")
    model = model_from_checkpoint(ckpt, device).eval()
    dc = load_data_config(args.data)
    if not dc.has_val:
        raise SystemExit(f"{args.data}: no validation split")
    dataset = CocoDataset(dc.val_ann, dc.val_images, transforms=build_transforms(False))
    # Decoded once, as plain tensors (3,H,W in [0, 1]): the clock spans the model call only.
    images = [dataset[i][0].as_subclass(torch.Tensor).to(device) for i in range(len(dataset))]
    side = ckpt.recipe.model.transform.min_size[-1]
    print(f"{args.checkpoint}: {len(images)} validation images, {side} px recipe size, device "
          f"{device_name(device)}, {torch.get_num_threads()} threads, {args.repeats} passes per figure")

    if "a" in args.only:
        figure_a(model, ckpt, images, device, args.batch_size, args.repeats, side)
    if "b" in args.only:
        figure_b(model, images, device, args.mixed_batch, args.repeats)
    if "c" in args.only:
        figure_c(model, ckpt, dataset, device, args.sweep_batch)
    print(f"\nend: {_load()}")


if __name__ == "__main__":
    main()
