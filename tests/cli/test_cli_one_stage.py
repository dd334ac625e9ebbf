"""Every command on a one-stage family, through the CLI: recipes/shapes-fcos-tiny.yaml end to end.

build -> info (recipe and checkpoint) -> make-shapes -> train-detectors -> train-router ->
calibrate -> evaluate (one point, sweep) -> predict. The shapes at 64 px (8 training, 6
validation images), one epoch of batch 2 and two router epochs, as tests/test_cli_pipeline.py
does for Faster R-CNN: these tests check that every command runs on the family and keeps its
contracts, not what it learns.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from helpers import one_error_line
from test_cli_pipeline import FAST_SETS, N_VAL, cli, data, load, ok  # noqa: F401 (data: a shared fixture)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning",
                                        "ignore:The image encoding:DeprecationWarning")

FCOS_TINY = Path(__file__).resolve().parents[2] / "recipes" / "shapes-fcos-tiny.yaml"
CLASSES = {"circle", "square", "triangle", "cross", "ring"}


@pytest.fixture(scope="module")
def model(data, tmp_path_factory) -> Path:
    """One epoch of both FCOS detectors, then the router (two epochs), then a stored 50% point."""
    run = tmp_path_factory.mktemp("train") / "run"
    ok(cli("train-detectors", FCOS_TINY, "--train-ann", data / "train.json", "--train-images", data / "train",
           "--out", run, "--epochs", 1, "--no-progress", *FAST_SETS))
    path = run.parent / "model.pt"
    ok(cli("train-router", run / "last.pt", "--data", data / "data.yaml", "-o", path,
           "--set", "router.epochs=2", "--no-progress"))
    ok(cli("calibrate", path, "--hard-ratio", 0.5, "--name", "half", "--repeats", 1, "--max-images", 4))
    return path


def test_a_checkpoint_records_its_family(model, tmp_path):
    ckpt = load(model)
    assert ckpt["recipe"]["model"]["family"] == "fcos"
    assert ckpt["router"] is not None and len(ckpt["validation"]["image_ids"]) == N_VAL
    assert any(k.startswith("head1.head.classification_head.") for k in ckpt["detector"])
    built = tmp_path / "built.pt"
    ok(cli("build", FCOS_TINY, "-o", built, "--set", "model.family=retinanet",
           "--set", "model.retinanet.anchor_sizes=[16,32,64,128,256]"))
    assert load(built)["recipe"]["model"]["family"] == "retinanet"


def test_info_shows_family_and_cost_per_route_of_a_checkpoint_and_a_recipe(model):
    out = ok(cli("info", model))
    assert "family fcos" in out and "router trained;" in out
    easy, hard = (float(x) for x in re.findall(r"([\d.]+) GMACs", out))
    assert 0 < easy < hard
    out = ok(cli("info", FCOS_TINY, "--set", "model.family=retinanet",
                 "--set", "model.retinanet.anchor_sizes=[16,32,64,128,256]"))
    assert "dynamicdet recipe" in out and "family retinanet" in out and "at 128x128" in out
    assert len(re.findall(r"GMACs", out)) == 2
    one_error_line(cli("info", model, "--set", "model.family=retinanet"), "--set applies to a recipe")


def test_evaluate_a_point_and_the_sweep(model, data, tmp_path):
    out = ok(cli("evaluate", model, "--data", data / "data.yaml", "--point", "half", "--out", tmp_path / "one",
                 "--no-progress"))
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["images"] == N_VAL and {"AP", "AP50"} <= set(metrics["metrics"])
    assert 0 < metrics["hard_share"] < 1
    ok(cli("evaluate", model, "--data", data / "data.yaml", "--sweep", "--ratios", "0,0.5,1", "--draws", 1,
           "--out", tmp_path / "sweep", "--no-progress"))
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["hard_share"] for r in rows][::2] == [0.0, 1.0]
    assert "COCO box metrics" in out


def test_predict_writes_and_renders_detections_by_route(model, data, tmp_path):
    out_dir = tmp_path / "pred"
    ok(cli("predict", data / "val", "--checkpoint", model, "--point", "half", "--out", out_dir, "--conf", 0.0,
           "--no-progress"))
    lines = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == N_VAL
    assert {line["route"] for line in lines} == {"easy", "hard"}
    labels = {d["label"] for line in lines for d in line["detections"]}
    assert labels and labels <= CLASSES  # every label is one of the 5 classes: none leaks from index 0
    assert len(list((out_dir / "render").iterdir())) == N_VAL
    torch.testing.assert_close(torch.tensor(sorted(line["difficulty"] for line in lines)),
                               load(model)["validation"]["scores"].sort().values, rtol=1e-4, atol=1e-5)
