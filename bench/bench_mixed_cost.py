"""Bench: where does the extra cost of batches that mix routes come from?

    python bench/bench_mixed_cost.py CKPT [--threads 2] [--repeats 8] [--max-images 128] [--json OUT]

CKPT: a checkpoint whose validation images are recorded (train-router records them). Over
those images in batches of 8, half of them taking each route, the mean model time per image
of five ways to run them, against the line lat1 + 0.5 (lat2 - lat1) from the all-easy and
all-hard passes of the same run, and against the first way:

  whole batches       batches alternate between the routes, each batch run whole at once:
                      what no splitting and no waiting cost;
  + copy              the same, each batch's features (and a hard batch's pixels) copied
                      twice first (as a RouteBatcher sets waiting images aside, then gathers
                      them; easy images wait without their pixels, which detector 1 never reads);
  + wait              each easy batch run only after the next batch's backbone 1 (as a
                      regrouped image waits for its route's batch to fill);
  + copy + wait       both: what regrouping costs;
  split per batch     every batch half easy, half hard, split by route (model.detect).

Passes take turns, the order reversed every repeat; medians over --repeats passes (also
written to OUT as JSON, name -> ms per image, with --json; bench_malloc.py reads them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.models.detection.image_list import ImageList

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynamicdet_cli.speed.calibrate import threshold_for_hard_ratio  # noqa: E402
from dynamicdet_cli.checkpoint.store import load_checkpoint, model_from_checkpoint  # noqa: E402
from dynamicdet_cli.speed.timing_images import timing_images  # noqa: E402
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it

BATCH = 8


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--max-images", type=int, default=128)
    ap.add_argument("--json", type=Path, help="write the medians here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt).eval()
    images = timing_images(ckpt, BATCH, args.max_images).images
    batches = [images[i:i + BATCH] for i in range(0, len(images) - BATCH + 1, BATCH)][: len(images) // (2 * BATCH) * 2]

    def backbone1(batch):
        image_list, _, _ = model.prepare(batch)
        feats = model.backbone1(image_list.tensors)
        return image_list, feats, model.difficulty(feats, image_list)

    def copied(image_list, feats, pixels: bool):
        """Set aside in two halves and gathered again: two copies, as a RouteBatcher makes."""
        halves = [list(range(BATCH // 2)), list(range(BATCH // 2, BATCH))]
        x = torch.cat([image_list.tensors[h] for h in halves]) if pixels else image_list.tensors
        return ImageList(x, image_list.image_sizes), {k: torch.cat([v[h] for h in halves]) for k, v in feats.items()}

    def whole(route):
        for batch in batches:
            image_list, feats, _ = backbone1(batch)
            model.run_route(route, image_list, feats)

    def alternating(copy: bool, wait: bool):
        for j in range(0, len(batches), 2):
            easy = backbone1(batches[j])[:2]
            easy = copied(*easy, pixels=False) if copy else easy
            if not wait:
                model.run_route("easy", *easy)
            hard = backbone1(batches[j + 1])[:2]
            if wait:
                model.run_route("easy", *easy)
            model.run_route("hard", *(copied(*hard, pixels=True) if copy else hard))

    with torch.inference_mode():
        taus = [threshold_for_hard_ratio(backbone1(b)[2], 0.5) for b in batches]

    def split():
        for batch, tau in zip(batches, taus):
            model(batch, route=tau)

    plans = {"all easy": lambda: whole("easy"), "all hard": lambda: whole("hard"),
             "whole batches": lambda: alternating(False, False), "+ copy": lambda: alternating(True, False),
             "+ wait": lambda: alternating(False, True), "+ copy + wait": lambda: alternating(True, True),
             "split per batch": split}
    times = {name: [] for name in plans}
    n_images = len(batches) * BATCH
    with torch.inference_mode():
        for name in plans:  # warm-up
            plans[name]()
        for rep in range(args.repeats):
            for name in (list(plans) if rep % 2 == 0 else list(plans)[::-1]):
                start = time.perf_counter()
                plans[name]()
                times[name].append(1000 * (time.perf_counter() - start) / n_images)
    median = {name: statistics.median(t) for name, t in times.items()}
    if args.json:
        args.json.write_text(json.dumps(median))
    line = (median["all easy"] + median["all hard"]) / 2
    print(f"{args.checkpoint}: {n_images} validation images, batches of {BATCH}, half hard; "
          f"{args.threads} threads, {args.repeats} passes")
    base = median["whole batches"]
    for name, ms in median.items():
        print(f"   {name:16s} {ms:6.2f} ms per image   vs the line {100 * (ms / line - 1):+5.1f}%"
              f"   vs whole batches {100 * (ms / base - 1):+5.1f}%")


if __name__ == "__main__":
    main()
