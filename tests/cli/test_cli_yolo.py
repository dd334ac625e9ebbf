"""Every command on the yolo family, through the CLI: recipes/shapes-yolo-tiny.yaml end to end.

build -> info -> train-detectors (with the weight average and mosaic on) -> train-router ->
calibrate -> evaluate (one point, sweep) -> predict -> export (ONNX, pt2). The shapes at 64 px, one
epoch of batch 2, as tests/test_cli_one_stage.py does for FCOS: these tests check that every
command runs on the family and keeps its contracts, not what it learns.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console

from dynamicdet_cli.export.exporter import ExportResult, export_table
from test_cli_pipeline import FAST_SETS, N_VAL, cli, data, load, ok  # noqa: F401 (data: a shared fixture)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning",
                                        "ignore:The image encoding:DeprecationWarning")

YOLO_TINY = Path(__file__).resolve().parents[2] / "recipes" / "shapes-yolo-tiny.yaml"
CLASSES = {"circle", "square", "triangle", "cross", "ring"}
TRAIN_SETS = [*FAST_SETS, "--set", "train.augment.mosaic=1.0", "--set", "train.ema_decay=0.9"]


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    """One epoch of both YOLO detectors, every training image a mosaic, weights averaged."""
    folder = tmp_path_factory.mktemp("train") / "run"
    ok(cli("train-detectors", YOLO_TINY, "--train-ann", data / "train.json", "--train-images", data / "train",
           "--val-ann", data / "val.json", "--val-images", data / "val", "--out", folder, "--epochs", 1,
           "--no-progress", *TRAIN_SETS))
    return folder


@pytest.fixture(scope="module")
def model(run, data) -> Path:
    """The router on top (two epochs), then a stored 50% point."""
    path = run.parent / "model.pt"
    ok(cli("train-router", run / "last.pt", "--data", data / "data.yaml", "-o", path,
           "--set", "router.epochs=2", "--no-progress"))
    ok(cli("calibrate", path, "--hard-ratio", 0.5, "--name", "half", "--repeats", 1, "--max-images", 4))
    return path


def test_training_saves_the_weight_average(run):
    ckpt, state = load(run / "last.pt"), load(run / "state.pt")
    assert ckpt["recipe"]["model"]["family"] == "yolo" and ckpt["recipe"]["train"]["ema_decay"] == 0.9
    assert state["ema"] is not None and int(state["ema"]["n_averaged"]) == 4  # 8 images, batch 2
    key = "backbone1.stem.0.weight"
    assert torch.equal(ckpt["detector"][key], state["ema"][f"module.{key}"])
    assert not torch.equal(ckpt["detector"][key], state["model"][key])  # the average, not the last step
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"d1/loss_cls", "d1/loss_box", "d1/loss_dfl"} <= set(record) and "val" in record


def test_info_shows_the_family_and_each_routes_cost(model):
    out = ok(cli("info", model))
    assert "family yolo" in out and "router trained;" in out
    assert "2 x CSP (width 0.125, depth 0.33), SPPF + PAN over stages [2, 3, 4]" in out
    easy, hard = (float(x) for x in re.findall(r"([\d.]+) M params", out))
    assert 0 < easy < hard


def test_evaluate_the_sweep_and_predict(model, data, tmp_path):
    ok(cli("evaluate", model, "--data", data / "data.yaml", "--sweep", "--ratios", "0,0.5,1", "--draws", 1,
           "--out", tmp_path / "sweep", "--no-progress"))
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["hard_share"] for r in rows][::2] == [0.0, 1.0]
    out_dir = tmp_path / "pred"
    ok(cli("predict", data / "val", "--checkpoint", model, "--point", "half", "--out", out_dir, "--conf", 0.0,
           "--no-progress"))
    lines = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == N_VAL and {line["route"] for line in lines} == {"easy", "hard"}
    labels = {d["label"] for line in lines for d in line["detections"]}
    assert labels and labels <= CLASSES


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_export_onnx_writes_batch_free_graphs_and_the_postprocess(model, tmp_path):
    pytest.importorskip("onnx")
    ok(cli("export", model, "--format", "onnx", "-o", tmp_path / "x"))
    meta = json.loads((tmp_path / "x" / "dynamicdet.json").read_text())
    assert meta["family"] == "yolo"
    assert {g["batch"] for g in meta["onnx"]["graphs"].values()} == {"any"}
    assert meta["onnx"]["graphs"]["easy"]["outputs"] == ["boxes", "scores"]
    post = meta["postprocess"]
    assert post["where"].startswith("outside the graphs") and 0 < post["nms_thresh"] <= 1
    result = cli("export", model, "--format", "torchscript", "-o", tmp_path / "ts")
    assert result.exit_code == 2 and "supports faster_rcnn only" in result.output


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_export_pt2_names_its_sizes_and_writes_without_torchs_warning(model, tmp_path, caplog):
    """The export table said the programs take any image size (their sides must be multiples of
    32, at least 64), and torch warned about the temporary file's name; docs/export.md's pt2
    snippet runs in tests/cli/test_bad_inputs_2.py."""
    folder = tmp_path / "exported-pt2"
    with caplog.at_level(logging.WARNING):
        ok(cli("export", model, "--format", "pt2", "-o", folder))
    assert not [r for r in caplog.records if "ending in .pt2" in r.getMessage()]  # the temporary file's name
    meta = json.loads((folder / "dynamicdet.json").read_text())
    table = Console(width=400, record=True, file=io.StringIO())
    table.print(export_table(ExportResult(folder, sorted(folder.glob("*.pt2")), meta)))
    assert table.export_text().count("sides multiples of 32, at least 64") == 3
