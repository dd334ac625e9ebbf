"""`evaluate`: COCO box AP at one operating point, or the whole accuracy-latency sweep.

A dataset opened with masks (a segmenting family, such as Mask R-CNN) also gets mask AP,
at the operating point and in every row of the sweep.

One operating point: the model runs once over the dataset under the chosen route (where it
pays, each route on full batches gathered across input batches: speed/batcher.py), and
the model time per image is measured.

The sweep: each detector runs ONCE over the dataset (backbone 1 shared), and every point of
the curve (hard ratios 0, 0.1, ..., 1 by default) is composed from those stored per-image
results (sweep.py), next to the same number of images routed at random.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dynamicdet_cli.checkpoint.types import Checkpoint, LatencyRecord
from dynamicdet_cli.core.atomic import write_json
from dynamicdet_cli.evaluation.coco import coco_metrics, to_coco_results
from dynamicdet_cli.data.coco import CocoDataset
from dynamicdet_cli.evaluation.inference import file_sizes, loader_for, read_for_inference, run_both_routes
from dynamicdet_cli.speed.batcher import Done, RouteBatcher
from dynamicdet_cli.core.progress import progress_bar
from dynamicdet_cli.speed.regime import Regime, find_latency
from dynamicdet_cli.evaluation.sweep import compose_sweep, write_sweep


@dataclass
class Evaluation:
    metrics: dict[str, float]
    hard_share: float
    latency_ms: float          # measured model time per image: each route's mean without its warm-up
                               # batch (with it, for a route nothing else took), weighted by its images
    n_images: int
    detections_path: Path


@torch.inference_mode()
def evaluate_route(model, dataset: CocoDataset, route, device: torch.device, out_dir: Path,
                   batch_size: int = 8, show_progress: bool = True) -> Evaluation:
    """COCO metrics of `model` on `dataset` under `route` (box, and mask when the dataset
    has masks: keys mask_AP, ...); writes detections.json (COCO results)."""
    model.eval()
    results, n_hard, n_images = [], 0, 0
    times = {(r, w): [0.0, 0] for r in ("easy", "hard") for w in (False, True)}  # (route, warm-up) -> [ms, images]
    batcher = RouteBatcher(model, route, batch_size)
    with progress_bar(show_progress) as bar:
        task = bar.add_task("evaluating", total=len(dataset))

        def collect(done: list[Done]) -> None:
            nonlocal results, n_hard, n_images
            for d in done:
                results += to_coco_results(d.detection, d.key, dataset.cat_ids)
                n_hard += d.detection["route"] == "hard"
                n_images += 1
                times[d.detection["route"], d.warmup][0] += d.ms
                times[d.detection["route"], d.warmup][1] += 1
            bar.advance(task, len(done))

        for images, targets in loader_for(read_for_inference(dataset, model), batch_size):
            if images:
                collect(batcher.add([im.to(device) for im in images], [int(t["image_id"]) for t in targets],
                                    original_sizes=file_sizes(dataset, targets)))
        collect(batcher.finish())
    results.sort(key=lambda r: r["image_id"])  # routes finish out of input order; stable within an image
    metrics = coco_metrics(dataset.coco, results, dataset.image_ids, masks=dataset.masks)
    path = write_json(out_dir / "detections.json", results)
    return Evaluation(metrics, n_hard / max(n_images, 1), _steady_ms(times, n_images), n_images, path)


def _steady_ms(times: dict[tuple[str, bool], list], n_images: int) -> float:
    """Mean time per image over the dataset with each route's first (warm-up) batch timed at
    that route's steady mean, as predict reports it; a route that ran only warm-up batches keeps
    their time."""
    total = 0.0
    for route in ("easy", "hard"):
        (steady, n_steady), (warm, n_warm) = times[route, False], times[route, True]
        mean = steady / n_steady if n_steady else (warm / n_warm if n_warm else 0.0)
        total += mean * (n_steady + n_warm)
    return total / max(n_images, 1)


def sweep(model, ckpt: Checkpoint, dataset: CocoDataset, device: torch.device, out_dir: Path,
          ratios: list[float], random_draws: int = 5, batch_size: int = 8,
          show_progress: bool = True) -> tuple[list[dict], dict, LatencyRecord | None]:
    """The accuracy-latency curve. Returns (rows, written paths, latency measurement used).

    The latency column comes from the measurement of this run's regime (device, batch size,
    threads, ...) only; without one it is left empty (measurement None)."""
    routes = run_both_routes(model, dataset, device, batch_size, show_progress=show_progress,
                             label="running both detectors")
    measured = find_latency(ckpt, Regime.of_run(model, device, batch_size))
    lat1, lat2 = (measured.easy_ms, measured.hard_ms) if measured else (None, None)
    rows = compose_sweep(dataset.coco, routes.image_ids, routes.easy, routes.hard, routes.scores,
                         ratios, lat1, lat2, random_draws=random_draws,
                         latency_curve=measured.curve_ms if measured else None, masks=dataset.masks)
    written = write_sweep(rows, out_dir)
    for name, results in (("easy", routes.easy), ("hard", routes.hard)):
        flat = [r for i in routes.image_ids for r in results[i]]
        written[f"detections_{name}"] = write_json(out_dir / f"detections_{name}.json", flat)
    return rows, written, measured
