"""YOLO-format data (Ultralytics' data YAML, images/ and labels/*.txt): the in-memory COCO index
it becomes, every label-line check naming its file and line, the YAML's own checks, and
training and evaluating on a YOLO-format copy of the generated shapes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dynamicdet_cli.cli.app import typer_app
from dynamicdet_cli.data.coco import CocoDataset
from dynamicdet_cli.data.config import load_data_config
from dynamicdet_cli.data.shapes import make_shapes
from dynamicdet_cli.data.yolo import YoloLabels
from dynamicdet_cli.core.errors import DynamicDetError
from helpers import coco_to_yolo, one_error_line

TINY = Path(__file__).resolve().parents[2] / "recipes" / "shapes-tiny.yaml"
FAST = ["model.transform.min_size=[64]", "model.transform.max_size=64", "train.batch_size=2",
        "train.workers=0", "train.warmup_iters=1"]
pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*args):
    return CliRunner().invoke(typer_app, [str(a) for a in args])


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("coco"), n_train=4, n_val=4, size=64, seed=0).parent


@pytest.fixture
def yolo(shapes_coco, tmp_path) -> Path:
    """A fresh YOLO-format copy per test (tests edit its label files)."""
    return coco_to_yolo(shapes_coco, tmp_path / "yolo")


def open_split(data_yaml: Path, split: str = "train") -> CocoDataset:
    dc = load_data_config(data_yaml)
    return CocoDataset(getattr(dc, f"{split}_ann"), getattr(dc, f"{split}_images"))


def first_label(yolo: Path) -> Path:
    return sorted((yolo.parent / "labels" / "train").glob("*.txt"))[0]


# ----------------------------------------------------------------------------- the index

def test_the_index_holds_the_same_images_boxes_and_classes_as_the_coco_original(shapes_coco, yolo):
    for split in ("train", "val"):
        coco, ours = CocoDataset(shapes_coco / f"{split}.json", shapes_coco / split), open_split(yolo, split)
        assert ours.classes == coco.classes and ours.cat_ids == [0, 1, 2, 3, 4]
        assert len(ours) == len(coco) and ours.n_boxes == coco.n_boxes > 0
        for index in range(len(coco)):
            assert ours.image_info(index)["file_name"] == coco.image_info(index)["file_name"]
            assert (ours.image_info(index)["width"], ours.image_info(index)["height"]) == (64, 64)  # from the header
            (image_a, target_a), (image_b, target_b) = coco[index], ours[index]
            assert torch.equal(image_a, image_b)
            assert torch.equal(target_a["labels"], target_b["labels"])
            assert torch.allclose(target_a["boxes"], target_b["boxes"], atol=1e-3)


def test_an_image_without_a_label_file_has_no_objects(yolo):
    label = first_label(yolo)
    label.unlink()
    ds = open_split(yolo)
    index = next(i for i in range(len(ds)) if ds.image_info(i)["file_name"] == label.with_suffix(".png").name)
    _, target = ds[index]
    assert target["boxes"].shape == (0, 4) and target["labels"].numel() == 0


def test_names_as_a_list_and_the_yaml_folder_as_the_default_root(yolo):
    yolo.write_text("train: images/train\nval: images/val\nnames: [circle, square, triangle, cross, ring]\n")
    assert open_split(yolo, "val").classes == ["circle", "square", "triangle", "cross", "ring"]


# ----------------------------------------------------------------------------- label lines

@pytest.mark.parametrize("line, needle", [
    ("0 0.5 0.5 0.2", "4 fields, expected 5 (class cx cy w h)"),
    ("0 0.5 0.5 0.2 0.2 0.3", "6 fields, expected 5"),
    ("5 0.5 0.5 0.2 0.2", "class 5 is outside 0..4"),
    ("-1 0.5 0.5 0.2 0.2", "class -1 is outside 0..4"),
    ("0 1.5 0.5 0.2 0.2", "cx = 1.5 is outside [0, 1]"),
    ("0 0.5 0.5 0.2 -0.1", "h = -0.1 is outside [0, 1]"),
    ("0 0.5 nan 0.2 0.2", "cy = nan is outside [0, 1]"),
    ("zero 0.5 0.5 0.2 0.2", "is not five numbers"),
])
def test_a_bad_label_line_names_its_file_and_line(yolo, line, needle):
    label = first_label(yolo)
    label.write_text(label.read_text() + "\n" + line + "\n")  # an empty line first: still counted
    number = len(label.read_text().splitlines())
    with pytest.raises(DynamicDetError) as err:
        open_split(yolo)
    assert f"{label}, line {number}: " in str(err.value) and needle in str(err.value), str(err.value)


def test_a_bad_label_line_is_one_error_line_in_the_cli(yolo, tmp_path):
    label = first_label(yolo)
    label.write_text("3 0.5 0.5 0.2 0.2 0.1\n")
    result = cli("train-detectors", TINY, "--data", yolo, "--out", tmp_path / "run", "--no-progress",
                 *[a for s in FAST for a in ("--set", s)])
    one_error_line(result, f"{label}, line 1", "6 fields")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the YAML

@pytest.mark.parametrize("text, needle", [
    ("train: images/train\nnames: {0: a, 2: b}\n", "'names' keys must be the class indices 0..1"),
    ("train: images/train\nnames: {0: a, x: b}\n", "'names' keys must be the class indices 0..1"),
    ("train: images/train\nnames: {0: a, '1': b}\n", "'names' keys must be the class indices 0..1"),
    ("train: images/train\nnames: [a, b]\nnc: 3\n", "nc is 3 but 'names' lists 2 classes"),
    ("train: images/train\nnames: [a, a]\n", "a given more than once"),
    ("train: images/train\nnames: []\n", "'names' must list the class names"),
    ("train: images/train\nname: [a]\n", "did you mean 'names'?"),
    ("train: images/train\nvall: images/val\nnames: [a]\n", "did you mean 'val'?"),
    ("train: images/nowhere\nnames: [a]\n", "does not exist"),
    ("train: [images/train, images/val]\nnames: [a]\n", "must be one image folder"),
    ("train: labels/train\nnames: [a]\n", "no 'images' folder"),
    ("val: images/val\nnames: [a]\n", "missing key 'train'"),
    ("path: nowhere\ntrain: images/train\nnames: [a]\n", "not a folder"),
])
def test_yaml_mistakes_are_named(yolo, text, needle):
    yolo.write_text(text)
    with pytest.raises(DynamicDetError, match=r"^data\.yaml: ") as err:
        load_data_config(yolo)
    assert needle in str(err.value), str(err.value)


def test_a_missing_label_folder_is_named(yolo):
    shutil.rmtree(yolo.parent / "labels" / "val")
    with pytest.raises(DynamicDetError, match="no label folder .*labels/val for the val images"):
        load_data_config(yolo)


def test_loading_the_yaml_reads_no_label_file(yolo):
    first_label(yolo).write_text("not a label line\n")
    dc = load_data_config(yolo)  # lazy: only the folders are checked
    assert isinstance(dc.train_ann, YoloLabels) and dc.train_ann.names[0] == "circle"
    with pytest.raises(DynamicDetError, match="line 1"):
        CocoDataset(dc.train_ann, dc.train_images)


def test_an_unreadable_image_is_skipped_or_named(yolo):
    bad = yolo.parent / "images" / "train" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DynamicDetError, match="broken.png: cannot open image.*--skip-bad-images"):
        open_split(yolo)
    dc = load_data_config(yolo)
    ds = CocoDataset(dc.train_ann, dc.train_images, skip_bad_images=True)
    assert [Path(p).name for p, _ in ds.skipped] == ["broken.png"] and len(ds) == 4


# ----------------------------------------------------------------------------- train and evaluate

def test_train_and_evaluate_on_yolo_data_match_the_coco_copy(shapes_coco, yolo, tmp_path):
    """One epoch of training on the YOLO-format copy, then pycocotools on both formats of the
    validation images: the same boxes make the same AP."""
    run = tmp_path / "run"
    result = cli("train-detectors", TINY, "--data", yolo, "--out", run, "--no-progress", "--epochs", 1,
                 *[a for s in FAST for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["classes"] == ["circle", "square", "triangle", "cross", "ring"] and ckpt["category_ids"] == [0, 1, 2, 3, 4]
    metrics = {}
    for name, data in (("yolo", yolo), ("coco", shapes_coco / "data.yaml")):
        out = tmp_path / f"eval-{name}"
        result = cli("evaluate", run / "last.pt", "--data", data, "--point", "hard", "--out", out, "--no-progress")
        assert result.exit_code == 0, result.output
        metrics[name] = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["coco"]["AP50"] > 0  # something to compare (after one epoch, AP is small)
    for key in ("AP", "AP50", "AP75"):
        assert metrics["yolo"][key] == pytest.approx(metrics["coco"][key], rel=1e-3), key


def test_calibrate_finds_the_yolo_validation_images_again(yolo):
    """train-router records a YOLO split by its label folder; calibrate times those images."""
    from dynamicdet_cli.checkpoint.types import Checkpoint, ValidationScores
    from dynamicdet_cli.config.recipe import Recipe
    from dynamicdet_cli.speed.timing_images import validation_images
    val = open_split(yolo, "val")
    scores = ValidationScores(tuple(val.image_ids[:2]), torch.rand(2), str(val.ann_file.resolve()),
                              str(val.image_dir.resolve()))
    ckpt = Checkpoint(Recipe(), tuple(val.classes), tuple(range(len(val.classes))), {}, validation=scores)
    timed = validation_images(ckpt, batch_size=2)
    assert len(timed.images) == 2
    assert torch.equal(timed.images[1], val[1][0].as_subclass(torch.Tensor))


def test_a_box_past_the_edge_is_clipped_and_named_by_file_and_line_but_rounding_is_not(yolo):
    label = first_label(yolo)
    label.write_text("0 0.9 0.5 0.4 0.2\n"        # reaches 1.1: clipped to the edge
                     "1 0.85 0.5 0.300001 0.2\n")  # reaches 1.0000005: label rounding, on the edge
    ds = open_split(yolo)
    assert ds.n_clipped == 1
    assert f"clipped 1 box(es) reaching beyond the image to its edges (e.g. {label}, line 1)" in ds.box_report()
    index = next(i for i in range(len(ds)) if ds.image_info(i)["file_name"] == label.with_suffix(".png").name)
    boxes = ds[index][1]["boxes"]
    assert boxes[:, 2].tolist() == [64.0, 64.0]
