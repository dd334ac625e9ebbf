"""evaluation/coco.py: pycocotools AP on in-memory results, label mapping, image restriction."""

import contextlib
import copy
import io

import pytest
import torch
from pycocotools.coco import COCO

from dynamicdet_cli.evaluation.coco import (
    METRIC_KEYS,
    coco_evaluate,
    evaluate_images,
    mixed_stats,
    to_coco_results,
)
from dynamicdet_cli.core.errors import DynamicDetError

CAT_IDS = [3, 7]  # non-contiguous on purpose: label 1 -> 3, label 2 -> 7

# image id -> [(category_id, [x, y, w, h])]; small (<32^2), medium and large objects
GT_BOXES = {
    1: [(3, [10, 10, 20, 20]), (7, [50, 50, 60, 60])],
    2: [(7, [100, 100, 150, 150]), (3, [5, 5, 16, 16])],
    3: [(3, [30, 40, 120, 110])],
}


def make_gt(boxes=GT_BOXES) -> COCO:
    anns = [
        {"id": n, "image_id": img, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3],
         "iscrowd": 0}
        for n, (img, cat, bbox) in enumerate(
            ((img, cat, bbox) for img, objs in boxes.items() for cat, bbox in objs), start=1
        )
    ]
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "width": 320, "height": 320} for i in boxes],
        "categories": [{"id": c, "name": f"c{c}"} for c in CAT_IDS],
        "annotations": anns,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def perfect_results(image_ids=GT_BOXES):
    return [
        {"image_id": img, "category_id": cat, "bbox": list(map(float, bbox)), "score": 0.9}
        for img in image_ids for cat, bbox in GT_BOXES[img]
    ]


def test_perfect_predictions_give_ap_one():
    stats = coco_evaluate(make_gt(), perfect_results(), list(GT_BOXES))
    assert set(stats) == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert stats[key] == pytest.approx(1.0), key


def test_empty_results_give_zeros():
    stats = coco_evaluate(make_gt(), [], list(GT_BOXES))
    assert stats == {key: 0.0 for key in METRIC_KEYS}


def test_absent_object_sizes_are_minus_one():
    # image 3 has a single large object: no small / medium ground truth to score
    stats = coco_evaluate(make_gt(), perfect_results([3]), [3])
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["APs"] == -1.0 and stats["APm"] == -1.0


def test_to_coco_results_maps_labels_and_boxes():
    pred = {
        "boxes": torch.tensor([[10.0, 20.0, 40.123, 60.0], [0.0, 0.0, 5.0, 5.0]]),
        "labels": torch.tensor([2, 1]),
        "scores": torch.tensor([0.912345, 0.5]),
    }
    out = to_coco_results(pred, image_id=42, cat_ids=CAT_IDS)
    assert out == [
        {"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 30.12, 40.0], "score": 0.9123},
        {"image_id": 42, "category_id": 3, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.5},
    ]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "scores": torch.zeros(0)}
    assert to_coco_results(empty, 1, CAT_IDS) == []


def test_torchvision_predictions_round_trip_to_ap_one():
    results = []
    for img, objs in GT_BOXES.items():
        xyxy = [[x, y, x + w, y + h] for _, (x, y, w, h) in objs]
        pred = {
            "boxes": torch.tensor(xyxy, dtype=torch.float32),
            "labels": torch.tensor([CAT_IDS.index(cat) + 1 for cat, _ in objs]),
            "scores": torch.full((len(objs),), 0.8),
        }
        results += to_coco_results(pred, img, CAT_IDS)
    assert coco_evaluate(make_gt(), results, list(GT_BOXES))["AP"] == pytest.approx(1.0)


def test_evaluation_is_restricted_to_image_ids():
    gt = make_gt()
    results = perfect_results([1])  # images 2 and 3 get no detections
    assert coco_evaluate(gt, results, [1])["AP"] == pytest.approx(1.0)
    assert coco_evaluate(gt, results, [1, 2, 3])["AP"] < 0.9
    # detections for images outside the list are ignored, not counted as false positives
    assert coco_evaluate(gt, perfect_results(), [1])["AP"] == pytest.approx(1.0)


def test_results_are_not_mutated_and_gt_is_reusable():
    gt = make_gt()
    results = perfect_results()
    before = copy.deepcopy(results)
    first = coco_evaluate(gt, results, list(GT_BOXES))
    assert results == before
    assert coco_evaluate(gt, results, list(GT_BOXES)) == first


def test_unknown_image_ids_raise():
    gt = make_gt()
    with pytest.raises(DynamicDetError, match="not in the annotations"):
        coco_evaluate(gt, [], [1, 99])
    bad = [{"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]
    with pytest.raises(DynamicDetError, match="missing from the annotations"):
        coco_evaluate(gt, bad, [1])


def test_mixed_stats_equal_evaluating_the_composed_results():
    gt = make_gt()
    ids = list(GT_BOXES)
    easy_results = perfect_results([1])
    hard_results = perfect_results([2, 3])
    easy, hard = evaluate_images(gt, easy_results, ids), evaluate_images(gt, hard_results, ids)
    for hard_ids in ([], [2], [2, 3], [1, 2, 3]):
        composed = [r for r in easy_results if r["image_id"] not in hard_ids]
        composed += [r for r in hard_results if r["image_id"] in hard_ids]
        full = coco_evaluate(gt, composed, ids)
        assert mixed_stats(easy, hard, hard_ids) == full
        headline = mixed_stats(easy, hard, hard_ids, headline_only=True)
        assert headline == {key: full[key] for key in ("AP", "AP50", "AP75")}
