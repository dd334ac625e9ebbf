"""Dy-Mask R-CNN through the CLI, end to end, on the tiny mask recipe:

make-shapes -> build -> train-detectors -> train-router -> info -> calibrate -> evaluate (one
point and the sweep, mask AP next to box AP) -> predict (masks in the JSON and the pictures),
and the one-line refusal of box-only data before any training starts.

Synthetic shapes at 64 px (8 training, 6 validation images), one epoch of batch 2, two router
epochs: the module's fixtures build everything once, in well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from pycocotools import mask as mask_util
from torchvision.io import decode_png, read_file

from dynamicdet_cli.config.recipe import load_recipe, recipe_to_dict
from helpers import one_error_line
from test_cli_pipeline import FAST_SETS, N_VAL, cli, data, load, ok  # noqa: F401 (data: a shared fixture)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning",
                                        "ignore:The image encoding:DeprecationWarning",
                                        "ignore::DeprecationWarning")

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
MASK_TINY = RECIPES / "shapes-mask-tiny.yaml"


@pytest.fixture(scope="module")
def model(data, tmp_path_factory) -> Path:
    """One epoch of both Mask R-CNN detectors (with evaluation), then the router."""
    run = tmp_path_factory.mktemp("train") / "run"
    out = ok(cli("train-detectors", MASK_TINY, "--data", data / "data.yaml", "--out", run, "--epochs", 1,
                 "--no-progress", *FAST_SETS))
    assert "done: 1 epoch(s)" in out and "mask AP" in out  # the epoch table shows mask AP
    path = run.parent / "model.pt"
    ok(cli("train-router", run / "last.pt", "--data", data / "data.yaml", "-o", path,
           "--set", "router.epochs=2", "--no-progress"))
    ok(cli("calibrate", path, "--hard-ratio", 0.5, "--name", "half", "--repeats", 1, "--max-images", 6))
    return path


def test_build_records_the_family(tmp_path):
    path = tmp_path / "fresh.pt"
    ok(cli("build", MASK_TINY, "-o", path, *FAST_SETS))
    ckpt = load(path)
    assert ckpt["recipe"]["model"]["family"] == "mask_rcnn"
    assert any(k.startswith("head1.roi_heads.mask_predictor.") for k in ckpt["detector"])
    assert any(k.startswith("head2.roi_heads.mask_head.") for k in ckpt["detector"])
    out = ok(cli("info", path))  # FLOPs per route, counted on a forward pass with masks
    assert "Dy-mask_rcnn" in out and "GFLOPs" in out


def test_training_records_mask_ap_of_both_detectors(model):
    ckpt = load(model)
    assert ckpt["recipe"]["model"]["family"] == "mask_rcnn"
    val = ckpt["training"]["val"]
    assert {"d1_AP", "d2_AP", "d1_mask_AP", "d2_mask_AP"} <= set(val)
    assert ckpt["router"] is not None and len(ckpt["validation"]["image_ids"]) == N_VAL


def test_info_shows_the_family(model):
    out = ok(cli("info", model, "--no-flops"))
    assert "mask_rcnn" in out


def test_evaluate_reports_box_and_mask_ap(model, data, tmp_path):
    out = ok(cli("evaluate", model, "--data", data / "data.yaml", "--point", "half", "--out", tmp_path,
                 "--no-progress"))
    assert "box and mask metrics" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert {"AP", "AP50", "mask_AP", "mask_AP50"} <= set(metrics)
    detections = json.loads((tmp_path / "detections.json").read_text())
    assert detections and all("segmentation" in d for d in detections)


def test_evaluate_sweep_has_mask_columns(model, data, tmp_path):
    ok(cli("evaluate", model, "--data", data / "data.yaml", "--sweep", "--ratios", "0,0.5,1", "--draws", 1,
           "--out", tmp_path, "--no-progress"))
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["k"] for r in rows] == [0.0, 0.5, 1.0]
    assert all(-1.0 <= r["mask_AP"] <= 1.0 for r in rows)
    with open(tmp_path / "sweep.csv", newline="") as fh:
        assert "mask_AP" in next(csv.reader(fh))
    # the sweep's ends are each detector alone: the same numbers a one-route evaluation gives
    ok(cli("evaluate", model, "--data", data / "data.yaml", "--point", "easy", "--out", tmp_path / "easy",
           "--no-progress"))
    easy = json.loads((tmp_path / "easy" / "metrics.json").read_text())["metrics"]
    assert rows[0]["mask_AP"] == pytest.approx(easy["mask_AP"], abs=1e-9)


def test_predict_writes_and_draws_masks(model, data, tmp_path):
    out_dir = tmp_path / "pred"
    ok(cli("predict", data / "val", "--checkpoint", model, "--point", "half", "--out", out_dir, "--conf", 0.0,
           "--no-progress"))
    lines = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == N_VAL
    detections = [d for line in lines for d in line["detections"]]
    assert detections, "an untrained-ish model at conf 0 still returns detections"
    for d in detections:
        rle = d["segmentation"]
        assert rle["size"] == [64, 64]
        mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})  # valid RLE
    coco = json.loads((out_dir / "predictions_coco.json").read_text())
    assert len(coco) == len(detections) and all("segmentation" in r for r in coco)
    rendered = decode_png(read_file(str(out_dir / "render" / "000000.png")))
    assert rendered.shape[0] == 3 and rendered.shape[-1] == 512  # scaled up to 512 px, caption on top


def test_render_draws_the_masks(tmp_path):
    from dynamicdet_cli.predict import _render

    image = torch.full((3, 64, 64), 0.5)
    masks = torch.zeros(1, 1, 64, 64)
    masks[0, 0, 10:30, 10:30] = 0.9
    det = {"boxes": torch.tensor([[40.0, 40, 60, 60]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.8]),
           "difficulty": 0.3, "route": "easy"}
    plain = decode_png(read_file(str(_render(image, det, ["a"], tmp_path / "plain.png"))))
    with_mask = decode_png(read_file(str(_render(image, {**det, "masks": masks}, ["a"], tmp_path / "mask.png"))))
    changed = (plain != with_mask).any(dim=0)  # H,W
    ys, xs = changed.nonzero(as_tuple=True)
    height = plain.shape[1] - 512  # the caption strip above the 512 px image
    # only the mask's square changed (scaled by 8), not the box at 40-60
    assert changed.any() and xs.min() >= 80 - 2 and xs.max() < 240 + 2 and ys.min() >= height + 80 - 2


def test_box_only_data_is_refused_before_training(data, tmp_path):
    coco = json.loads((data / "train.json").read_text())
    for ann in coco["annotations"]:
        del ann["segmentation"]
    (tmp_path / "boxes.json").write_text(json.dumps(coco))
    run = tmp_path / "run"
    one_error_line(cli("train-detectors", MASK_TINY, "--train-ann", tmp_path / "boxes.json",
                       "--train-images", data / "train", "--out", run, "--no-progress", *FAST_SETS),
                   "has no instance mask", "mask_rcnn")
    assert not run.exists()  # nothing started, nothing written


def test_tiny_mask_recipe_is_the_tiny_recipe_with_mask_heads():
    """shapes-mask-tiny.yaml repeats shapes-tiny.yaml (one level of inheritance): keep them equal."""
    mask, boxes = recipe_to_dict(load_recipe(MASK_TINY)), recipe_to_dict(load_recipe(RECIPES / "shapes-tiny.yaml"))
    assert mask["model"].pop("family") == "mask_rcnn" and boxes["model"].pop("family") == "faster_rcnn"
    mask["model"].pop("mask_head"), boxes["model"].pop("mask_head")
    assert mask == boxes


def test_full_size_mask_recipe_is_torchvisions_mask_rcnn():
    cfg = load_recipe(RECIPES / "dy-mask-rcnn-r50-fpn.yaml").model
    assert cfg.family == "mask_rcnn" and cfg.backbone.depth == 50
    assert cfg.mask_head.layers == (256, 256, 256, 256) and cfg.mask_head.resolution == 14
