"""Mask AP: COCO RLE results from mask probabilities, and the sweep's composed mask AP against
a direct pycocotools evaluation of the same routing."""

import contextlib
import copy
import io

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dynamicdet_cli.evaluation.coco import coco_metrics, to_coco_results
from dynamicdet_cli.data import make_shapes
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.evaluation.sweep import MASK_COLUMNS, compose_sweep

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _quiet_coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.fixture(scope="module")
def val_json(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    make_shapes(folder, n_train=1, n_val=12, size=64, seed=3)
    return folder / "val.json"


def test_masks_become_rle_of_the_thresholded_probabilities():
    probs = torch.zeros(2, 1, 10, 12)
    probs[0, 0, 2:5, 3:9] = 0.8
    probs[1, 0, 6:9, 1:4] = 0.51
    probs[1, 0, 0, 0] = 0.5  # not above the threshold
    pred = {"boxes": torch.tensor([[3.0, 2, 9, 5], [1.0, 6, 4, 9]]), "labels": torch.tensor([1, 2]),
            "scores": torch.tensor([0.9, 0.4]), "masks": probs}
    results = to_coco_results(pred, 7, [3, 8])
    for r, p in zip(results, probs):
        decoded = mask_util.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
        assert isinstance(r["segmentation"]["counts"], str)  # JSON-ready
        assert (decoded.astype(bool) == (p[0] > 0.5).numpy()).all()
    assert "segmentation" not in to_coco_results({k: v for k, v in pred.items() if k != "masks"}, 7, [3, 8])[0]


def _results(gt: COCO, shift: int, keep_every: int, seed: int) -> dict[int, list[dict]]:
    """Per image: the ground-truth masks shifted right by `shift` px (every `keep_every`-th
    dropped), random scores, and one false positive; boxes as given."""
    rng = np.random.default_rng(seed)
    out = {}
    for image_id in sorted(gt.imgs):
        rows = []
        for k, ann in enumerate(gt.imgToAnns[image_id]):
            if keep_every and k % keep_every == keep_every - 1:
                continue
            mask = np.roll(gt.annToMask(ann), shift, axis=1)
            rle = mask_util.encode(np.asfortranarray(mask))
            rows.append({"image_id": image_id, "category_id": ann["category_id"], "bbox": ann["bbox"],
                         "score": float(rng.uniform(0.2, 1.0)),
                         "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()}})
        false = np.zeros((64, 64), np.uint8)
        false[:8, :8] = 1
        rle = mask_util.encode(np.asfortranarray(false))
        rows.append({"image_id": image_id, "category_id": 1, "bbox": [0, 0, 8, 8], "score": 0.5,
                     "segmentation": {"size": [64, 64], "counts": rle["counts"].decode()}})
        out[image_id] = rows
    return out


def _direct_mask_ap(val_json, results: list[dict], image_ids: list[int]) -> dict[str, float]:
    """pycocotools alone, as its README does it: loadRes + COCOeval(segm) on a fresh gt."""
    gt = _quiet_coco(val_json)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, "segm")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1])}


def test_composed_sweep_mask_ap_equals_pycocotools_at_the_same_routing(val_json):
    gt = _quiet_coco(val_json)
    ids = sorted(gt.imgs)
    easy = _results(gt, shift=2, keep_every=3, seed=0)   # worse masks, some objects missed
    hard = _results(gt, shift=0, keep_every=0, seed=1)   # exact masks
    scores = torch.linspace(0, 1, len(ids))[torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))]
    rows = compose_sweep(gt, ids, easy, hard, scores, [0.0, 0.25, 0.5, 1.0], None, None,
                         random_draws=0, bootstrap=0, masks=True)
    for row in rows:
        hard_ids = {ids[i] for i in (scores > row["tau"]).nonzero().flatten().tolist()}
        composed = [r for i in ids for r in (hard if i in hard_ids else easy)[i]]
        direct = _direct_mask_ap(val_json, composed, ids)
        assert row["mask_AP"] == pytest.approx(direct["AP"], abs=1e-9)
        assert row["mask_AP50"] == pytest.approx(direct["AP50"], abs=1e-9)
    # the routes differ in mask quality, so the composition is tested, not a constant
    assert rows[0]["mask_AP"] < rows[-1]["mask_AP"] - 0.05
    assert set(MASK_COLUMNS) <= set(rows[0])


def test_box_only_sweep_has_no_mask_columns(val_json):
    gt = _quiet_coco(val_json)
    ids = sorted(gt.imgs)
    results = _results(gt, 0, 0, 0)
    rows = compose_sweep(gt, ids, results, results, torch.rand(len(ids)), [0.5], None, None, random_draws=0)
    assert "mask_AP" not in rows[0]


def test_coco_metrics_reports_mask_ap_next_to_box_ap(val_json):
    gt = _quiet_coco(val_json)
    ids = sorted(gt.imgs)
    flat = [r for i in ids for r in _results(gt, 2, 0, 0)[i]]
    metrics = coco_metrics(gt, flat, ids, masks=True)
    assert {"AP", "AP50", "mask_AP", "mask_AP50", "mask_APl"} <= set(metrics)
    assert metrics["mask_AP"] == pytest.approx(_direct_mask_ap(val_json, flat, ids)["AP"], abs=1e-9)
    assert metrics["AP"] > metrics["mask_AP"]  # exact boxes, shifted masks
    boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in flat]
    with pytest.raises(DynamicDetError, match="mask AP needs a mask"):
        coco_metrics(gt, boxes_only, ids, masks=True)
