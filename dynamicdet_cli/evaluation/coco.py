"""COCO box AP (and mask AP) through pycocotools, without files and without pycocotools' chatter.

Metric convention: every function here returns pycocotools' six headline numbers as
`{"AP", "AP50", "AP75", "APs", "APm", "APl"}`, floats in [0, 1]. A value of -1.0 means
"no ground-truth objects of that kind among the evaluated images" (pycocotools' own
convention, kept because it survives JSON and CSV, unlike NaN). Missing detections are
never -1: images whose ground truth has objects but which got no detections score 0.

Mask AP: results that carry a `segmentation` (COCO RLE, from a model that outputs masks)
are evaluated with iou_type="segm"; `coco_metrics(..., masks=True)` returns the box metrics
and the mask metrics under the same names prefixed "mask_" ("mask_AP", ...). Everything
below works the same for either iou_type, the sweep's composition included.

Two ways in:
- `coco_evaluate(gt, results, image_ids)`: one-shot evaluation of a results list.
- `evaluate_images(...)` once per detector, then `mixed_stats(easy, hard, hard_ids)` for
  any split of the images between the two. pycocotools' per-image matching only looks at
  one image's detections, so the per-image records of two runs can be mixed and then
  accumulated; that gives exactly the AP of the composed results list at the cost of
  `accumulate()` alone (no IoUs, no matching), which is what makes a sweep cheap
  (and `headline_only=True`, enough for AP/AP50/AP75, accumulates much faster: one area
  range and one detection limit instead of 4 x 3; docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

from dynamicdet_cli.core.errors import DynamicDetError

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # order of COCOeval.stats[:6]
MASK_PREFIX = "mask_"  # mask metrics are the box metrics' names with this prefix
IOU_TYPES = ("bbox", "segm")
NON_FINITE = ("the model produced NaN or infinite outputs, so its weights are damaged; nothing was "
              "written: use a checkpoint that loads with a checksum, or retrain")


def to_coco_results(pred: dict, image_id: int, cat_ids: list[int]) -> list[dict]:
    """Convert one image's prediction into COCO detection results.

    `pred` is torchvision's eval output for one image: boxes FloatTensor[N, 4] in x1y1x2y2
    pixels, labels Int64Tensor[N] with contiguous ids 1..C, scores FloatTensor[N]. Label `l`
    maps to COCO category `cat_ids[l - 1]`. Returns N dicts
    `{image_id, category_id, bbox: [x, y, w, h] (2 decimals), score (4 decimals)}`; when
    `pred` also holds masks (FloatTensor[N, 1, H, W] probabilities, Mask R-CNN's output in
    the image's pixels), each dict gains `segmentation`: the mask at probability > 0.5 as
    COCO compressed RLE ({"size": [H, W], "counts": str}).
    """
    boxes = pred["boxes"].detach().float().cpu()
    labels = pred["labels"].detach().cpu()
    scores = pred["scores"].detach().float().cpu()
    if not (bool(torch.isfinite(boxes).all()) and bool(torch.isfinite(scores).all())):
        raise DynamicDetError(NON_FINITE)
    if labels.numel() and (labels.min() < 1 or labels.max() > len(cat_ids)):
        raise ValueError(f"labels must lie in 1..{len(cat_ids)}, got {labels.unique().tolist()}")
    xywh = box_convert(boxes, "xyxy", "xywh").tolist()  # N,4
    results = [
        {
            "image_id": int(image_id),
            "category_id": cat_ids[label - 1],
            "bbox": [round(v, 2) for v in box],
            "score": round(score, 4),
        }
        for box, label, score in zip(xywh, labels.tolist(), scores.tolist())
    ]
    if "masks" in pred:
        for result, rle in zip(results, encode_masks(pred["masks"])):
            result["segmentation"] = rle
    return results


def encode_masks(masks: torch.Tensor, threshold: float = 0.5) -> list[dict]:
    """Mask probabilities FloatTensor[N, 1, H, W] -> N COCO compressed RLEs of mask > threshold."""
    binary = (masks.detach().float().cpu()[:, 0] > threshold).numpy().astype(np.uint8)  # N,H,W
    if binary.shape[0] == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))  # H,W,N in Fortran order
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def coco_metrics(coco_gt: COCO, results: list[dict], image_ids: list[int], masks: bool = False) -> dict[str, float]:
    """Box metrics of `results`, and with `masks` the mask metrics too (keys "mask_AP", ...)."""
    metrics = coco_evaluate(coco_gt, results, image_ids)
    if masks:
        segm = coco_evaluate(coco_gt, results, image_ids, iou_type="segm")
        metrics.update({MASK_PREFIX + k: v for k, v in segm.items()})
    return metrics


def coco_evaluate(coco_gt: COCO, results: list[dict], image_ids: list[int], iou_type: str = "bbox") -> dict[str, float]:
    """Box AP (iou_type "bbox") or mask AP ("segm") of `results` against `coco_gt`, over `image_ids` only.

    Results for other images are ignored; an empty `results` list is valid (AP 0 wherever
    the ground truth has objects). See the module docstring for the -1 convention.
    """
    return accumulate_stats(evaluate_images(coco_gt, results, image_ids, iou_type))


def evaluate_images(coco_gt: COCO, results: list[dict], image_ids: Iterable[int], iou_type: str = "bbox") -> COCOeval:
    """Run pycocotools' per-image matching (`evaluate()`, not `accumulate()`).

    iou_type "bbox" matches boxes; "segm" matches masks (every result needs a
    `segmentation`, every ground-truth annotation one pycocotools can decode). The returned
    COCOeval can be summarised with `accumulate_stats` or mixed with another one of the
    same iou_type over the same images with `mixed_stats`. `results` is not modified.
    """
    assert iou_type in IOU_TYPES, iou_type
    image_ids = sorted({int(i) for i in image_ids})
    if not image_ids:
        raise DynamicDetError("no images to evaluate: the image list is empty")
    unknown = [i for i in image_ids if i not in coco_gt.imgs]
    if unknown:
        raise DynamicDetError(
            f"{len(unknown)} image id(s) (e.g. {unknown[0]}) are not in the annotations file: "
            "evaluate against the annotations the images came from"
        )
    coco_dt = _results_coco(coco_gt, results, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
    # Only evalImgs and the params are needed later; the IoU matrices and the grouped
    # annotations would otherwise stay alive as long as the evaluator (a sweep keeps two).
    evaluator.ious, evaluator._gts, evaluator._dts = {}, {}, {}
    return evaluator


def accumulate_stats(evaluator: COCOeval) -> dict[str, float]:
    """Accumulate an evaluated COCOeval into the six headline metrics."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
        evaluator.summarize()
    return {key: float(value) for key, value in zip(METRIC_KEYS, evaluator.stats)}


def mixed_stats(
    easy: COCOeval, hard: COCOeval, hard_ids: Iterable[int], headline_only: bool = False
) -> dict[str, float]:
    """Metrics of the results that take `hard`'s detections for `hard_ids`, `easy`'s otherwise.

    Both evaluators must come from `evaluate_images` over the same ground truth and images.
    Equal to `coco_evaluate` on the composed results list, without re-matching any image.
    With `headline_only`, only {"AP", "AP50", "AP75"} are computed, much faster (one
    area range and one detection limit instead of 4 x 3).
    """
    p_easy, p_hard = easy._paramsEval, hard._paramsEval
    assert p_easy.imgIds == p_hard.imgIds and p_easy.catIds == p_hard.catIds, "different images"
    hard_ids = {int(i) for i in hard_ids}
    # evalImgs is laid out [category][area range][image] with images in params.imgIds order.
    from_hard = [int(i) in hard_ids for i in p_easy.imgIds]
    n_img = len(from_hard)
    mixed = copy.copy(easy)  # shallow: shares params and gt; accumulate only reads them
    mixed.evalImgs = [
        h if from_hard[j % n_img] else e
        for j, (e, h) in enumerate(zip(easy.evalImgs, hard.evalImgs))
    ]
    return _headline_stats(mixed) if headline_only else accumulate_stats(mixed)


class ResampledAP:
    """Box AP (area "all", most detections) of any routing of the images between two
    detectors, over any resample of the images: what a bootstrap needs thousands of times.

    Built once from two evaluators of `evaluate_images` over the same images; then
    `ap(from_hard, counts)` scores the routing `from_hard` (bool per image, in
    `image_ids` order) over the resample that holds image i `counts[i]` times. It is
    pycocotools' accumulate() arithmetic with each image's records weighted by its count
    (a repeated image counts again, as in a results list that repeats it), on detections
    sorted by score once for all calls; only the order among detections of one score may
    differ from pycocotools' (which is arbitrary there too).
    """

    def __init__(self, easy: COCOeval, hard: COCOeval):
        p = easy._paramsEval
        assert p.imgIds == hard._paramsEval.imgIds and p.areaRngLbl[0] == "all", "different images"
        self.image_ids = list(p.imgIds)
        n_img, n_area, max_det = len(p.imgIds), len(p.areaRng), p.maxDets[-1]
        self.rec_thrs = p.recThrs
        self.categories = []  # per category: (image of each det, source 0/1, tp T,n, fp T,n, npig per image)
        for k in range(len(p.catIds)):
            parts, npig = [], np.zeros(n_img)
            for source, ev in enumerate((easy, hard)):
                for i in range(n_img):
                    e = ev.evalImgs[k * n_area * n_img + i]  # [category][area "all"][image]
                    if e is None:
                        continue
                    if source == 0:
                        npig[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
                    scores = np.asarray(e["dtScores"][:max_det], dtype=float)
                    if scores.size:
                        parts.append((scores, np.full(scores.size, i), np.full(scores.size, source),
                                      e["dtMatches"][:, :max_det] != 0, e["dtIgnore"][:, :max_det] != 0))
            if not parts:
                self.categories.append(None if not npig.any() else (np.zeros(0, int), np.zeros(0, int),
                                                                    np.zeros((len(p.iouThrs), 0), bool),
                                                                    np.zeros((len(p.iouThrs), 0), bool), npig))
                continue
            scores, image, source, matched, ignored = (np.concatenate(x, axis=-1) for x in zip(*parts))
            order = np.argsort(-scores, kind="mergesort")
            tp, fp = matched & ~ignored, ~matched & ~ignored  # T,n each
            # Without ignored detections (no crowd ground truth) fp = ~tp, so tp + fp sums need no
            # cumsum per IoU threshold: None marks that case.
            fp = fp[:, order] if ignored.any() else None
            self.categories.append((image[order], source[order], tp[:, order], fp, npig))

    def ap(self, from_hard, counts) -> float:
        """AP of routing `from_hard` (bool N) over the resample with image counts `counts` (N)."""
        from_hard, counts = np.asarray(from_hard, bool), np.asarray(counts, float)
        precisions = []
        for category in self.categories:
            if category is None:
                continue
            image, source, tp, fp, npig_per_image = category
            n_gt = float(counts @ npig_per_image)
            if n_gt == 0:
                continue  # no ground truth of this category in the resample: -1, left out
            weight = counts[image] * (source == from_hard[image])  # n: 0 for the other route's detections
            kept = weight > 0  # a detection of weight 0 changes no sum: leave it out
            weight, tp = weight[kept], tp[:, kept]
            tp_sum = np.cumsum(tp * weight, axis=1)  # T,n
            # counts are whole numbers, so these float sums are exact and tp_sum + fp_sum is the
            # cumulated weight itself when no detection is ignored
            seen = np.cumsum(weight) if fp is None else tp_sum + np.cumsum(fp[:, kept] * weight, axis=1)
            recall = tp_sum / n_gt
            precision = tp_sum / (seen + np.spacing(1))
            precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # the envelope
            q = np.zeros((tp.shape[0], len(self.rec_thrs)))
            for t in range(tp.shape[0]):
                index = np.searchsorted(recall[t], self.rec_thrs, side="left")
                reached = index < recall.shape[1]
                q[t, reached] = precision[t, index[reached]]
            precisions.append(q)
        return float(np.mean(precisions)) if precisions else -1.0


def _headline_stats(evaluator: COCOeval) -> dict[str, float]:
    """AP, AP50, AP75 (area "all", most detections) as COCOeval.summarize computes them."""
    params = copy.copy(evaluator.params)
    # accumulate() finds area ranges by their position in this list, so "all" must stay first.
    assert params.areaRngLbl[0] == "all"
    params.areaRng, params.areaRngLbl = params.areaRng[:1], params.areaRngLbl[:1]
    params.maxDets = params.maxDets[-1:]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate(params)
    precision = evaluator.eval["precision"][..., 0, 0]  # T,R,K (IoU thr, recall thr, category)

    def mean_ap(p: np.ndarray) -> float:
        valid = p[p > -1]  # -1 marks categories without ground truth
        return float(valid.mean()) if valid.size else -1.0

    iou = params.iouThrs
    return {
        "AP": mean_ap(precision),
        "AP50": mean_ap(precision[np.isclose(iou, 0.5)]),
        "AP75": mean_ap(precision[np.isclose(iou, 0.75)]),
    }


def _results_coco(coco_gt: COCO, results: list[dict], iou_type: str = "bbox") -> COCO:
    """A results COCO object, like `coco_gt.loadRes(results)` but cheaper and side-effect free.

    loadRes fails on an empty list, mutates the caller's dicts and deep-copies the
    categories; here the gt's image and category lists are shared (read-only) and each
    result is copied with the fields COCOeval needs (id, area, iscrowd): the area is the
    box's in bbox mode and the mask's in segm mode, as loadRes sets it.
    """
    unknown = {r["image_id"] for r in results} - coco_gt.imgs.keys()
    if unknown:
        raise DynamicDetError(
            f"detections refer to {len(unknown)} image id(s) missing from the annotations "
            f"(e.g. {next(iter(unknown))}): predictions and annotations do not match"
        )
    if iou_type == "segm" and not all("segmentation" in r for r in results):
        raise DynamicDetError("mask AP needs a mask with every detection; these results have boxes only")
    area = (lambda r: float(mask_util.area(r["segmentation"]))) if iou_type == "segm" else \
        (lambda r: r["bbox"][2] * r["bbox"][3])
    anns = [
        {**r, "id": n, "area": area(r), "iscrowd": 0}
        for n, r in enumerate(results, start=1)  # ids start at 1: COCOeval treats 0 as "unmatched"
    ]
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": coco_gt.dataset["images"],
        "categories": coco_gt.dataset["categories"],
        "annotations": anns,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt
