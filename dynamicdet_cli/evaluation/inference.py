"""Running a model over a dataset: the loops evaluation, training and the router share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from dynamicdet_cli.evaluation.coco import coco_metrics, to_coco_results
from dynamicdet_cli.core.cpus import loader_workers
from dynamicdet_cli.data.coco import CocoDataset, collate
from dynamicdet_cli.model.transform import inference_sides
from dynamicdet_cli.core.progress import progress_bar


@dataclass
class RouteResults:
    """Both routes' detections on every image of a dataset, in COCO results format.

    image_ids: the dataset's image ids, in order; easy / hard: image id -> that detector's
    COCO results; scores: the router's difficulty per image (aligned with image_ids).
    """

    image_ids: list[int]
    easy: dict[int, list[dict]]
    hard: dict[int, list[dict]]
    scores: Tensor


def read_for_inference(dataset: CocoDataset, model) -> CocoDataset:
    """`dataset` read as predict reads an image: one larger than the model's input scaled down
    to it first (CocoDataset.fit_to at the inference size); hand the model each image's
    file_size as its original size, so its boxes come back in the annotations' pixels."""
    return dataset.fit_to(*inference_sides(model.transform))


def file_sizes(dataset: CocoDataset, targets: list[dict]) -> list[tuple[int, int]]:
    """Each target's image size as decoded: the frame COCOeval compares boxes in."""
    return [dataset.file_size(int(t["image_id"])) for t in targets]


def loader_for(dataset, batch_size: int, workers: int = 0) -> DataLoader:
    """An in-order loader (evaluation, caching)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=loader_workers(workers),
                      collate_fn=collate)


@torch.inference_mode()
def run_both_routes(model, dataset: CocoDataset, device: torch.device, batch_size: int = 8,
                    workers: int = 0, show_progress: bool = True, label: str = "evaluating") -> RouteResults:
    """Run each detector ONCE over `dataset` (backbone 1 shared) and keep every image's results."""
    model.eval()
    easy, hard, scores, ids = {}, {}, [], []
    with progress_bar(show_progress) as bar:
        task = bar.add_task(label, total=len(dataset))
        for images, targets in loader_for(read_for_inference(dataset, model), batch_size, workers):
            if not images:
                continue
            det_easy, det_hard, phi = model.detect_both([im.to(device) for im in images],
                                                        file_sizes(dataset, targets))
            for t, de, dh in zip(targets, det_easy, det_hard):
                image_id = int(t["image_id"])
                ids.append(image_id)
                easy[image_id] = to_coco_results(de, image_id, dataset.cat_ids)
                hard[image_id] = to_coco_results(dh, image_id, dataset.cat_ids)
            scores.append(phi.float().cpu())
            bar.advance(task, len(images))
    return RouteResults(ids, easy, hard, torch.cat(scores) if scores else torch.zeros(0))


def evaluate_both(model, dataset: CocoDataset, device: torch.device, batch_size: int = 8,
                  workers: int = 0, show_progress: bool = True) -> dict[str, dict[str, float]]:
    """COCO metrics of each detector alone: {"d1": {...}, "d2": {...}} (mask metrics too,
    keys mask_AP, ..., when the dataset has masks)."""
    routes = run_both_routes(model, dataset, device, batch_size, workers, show_progress)
    flat = lambda results: [r for i in routes.image_ids for r in results[i]]  # noqa: E731
    return {
        "d1": coco_metrics(dataset.coco, flat(routes.easy), routes.image_ids, dataset.masks),
        "d2": coco_metrics(dataset.coco, flat(routes.hard), routes.image_ids, dataset.masks),
    }
