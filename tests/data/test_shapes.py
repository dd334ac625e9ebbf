"""The synthetic shapes dataset: determinism, COCO validity, difficulty trend."""

import json

import numpy as np
import pytest

from dynamicdet_cli.data import CocoDataset, load_data_config, make_shapes
from dynamicdet_cli.data import shapes
from dynamicdet_cli.data.shapes import CLASSES, render_image
from dynamicdet_cli.core.errors import DynamicDetError

# torchvision 0.29 deprecates its image codecs (in favour of torchcodec) on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _files(make_shapes(tmp_path / "a", n_train=6, n_val=2, size=64, seed=3).parent)
    b = _files(make_shapes(tmp_path / "b", n_train=6, n_val=2, size=64, seed=3).parent)
    c = _files(make_shapes(tmp_path / "c", n_train=6, n_val=2, size=64, seed=4).parent)
    assert a == b
    assert a["train/000000.png"] != c["train/000000.png"]
    assert {"data.yaml", "train.json", "val.json", "train/000005.png", "val/000001.png"} <= set(a)


def test_drawing_in_parallel_processes_writes_the_same_bytes(tmp_path, monkeypatch):
    serial = _files(make_shapes(tmp_path / "serial", n_train=20, n_val=3, size=48, seed=5).parent)
    monkeypatch.setattr(shapes, "PARALLEL_FROM", 4)
    monkeypatch.setattr(shapes, "usable_cores", lambda: 2)  # two workers even on a one-core machine
    parallel = _files(make_shapes(tmp_path / "parallel", n_train=20, n_val=3, size=48, seed=5).parent)
    assert parallel == serial


def test_output_loads_as_coco_dataset(tmp_path):
    cfg = load_data_config(make_shapes(tmp_path, n_train=8, n_val=3, size=64))
    train = CocoDataset(cfg.train_ann, cfg.train_images)
    val = CocoDataset(cfg.val_ann, cfg.val_images)
    assert len(train) == 8 and len(val) == 3 and train.classes == list(CLASSES)
    assert train.cat_ids == list(range(1, len(CLASSES) + 1)) and train.n_degenerate == 0
    for i in range(len(train)):
        image, target = train[i]
        assert image.shape == (3, 64, 64)
        boxes = target["boxes"]
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 64
        assert 0.0 <= train.image_info(i)["difficulty"] <= 1.0
    data = json.loads(cfg.train_ann.read_text())
    assert all(a["iscrowd"] == 0 and a["area"] > 0 for a in data["annotations"])


def test_hard_images_have_more_and_smaller_objects():
    def stats(d):
        counts, sides = [], []
        for k in range(20):
            _, objects = render_image(np.random.default_rng(k), d, 128)
            counts.append(len(objects))
            sides += [np.sqrt((x2 - x1) * (y2 - y1)) for _, (x1, y1, x2, y2), _, _ in objects]
        return np.mean(counts), np.mean(sides), min(sides)

    easy_n, easy_side, _ = stats(0.05)
    hard_n, hard_side, hard_min = stats(0.95)
    assert easy_n <= 3.5 and hard_n >= 2.5 * easy_n
    assert easy_side >= 2.5 * hard_side
    assert hard_min >= 7  # smallest objects stay around 8 px at 128 px


def test_easy_images_have_strong_contrast_and_no_noise():
    pixels, objects = render_image(np.random.default_rng(0), 0.0, 128)
    background = pixels[0, 0].astype(int)
    assert (pixels == pixels[0, 0]).all(axis=-1).mean() > 0.3  # plain background
    for _, (x1, y1, x2, y2), _, _ in objects:
        inside = pixels[y1:y2, x1:x2].astype(int)
        assert np.abs(inside - background).max() > 60


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(DynamicDetError, match="too small"):
        make_shapes(tmp_path, size=8)
    with pytest.raises(DynamicDetError, match="n_train"):
        make_shapes(tmp_path, n_train=0)


# -- instance masks ----------------------------------------------------------------------


def test_masks_are_exactly_the_painted_pixels_of_each_shape():
    """At difficulty 0 nothing but the shapes is drawn (no noise, clutter, gradient or
    distractors): each mask's pixels all carry one colour other than the background's, and
    every pixel outside the masks is background."""
    for seed in range(5):
        pixels, objects = render_image(np.random.default_rng(seed), 0.0, 64)
        background = pixels[0, 0]
        covered = np.zeros(pixels.shape[:2], dtype=bool)
        for _, _, area, mask in objects:
            assert mask.dtype == bool and mask.sum() == area > 0
            colors = np.unique(pixels[mask].reshape(-1, 3), axis=0)
            assert len(colors) == 1 and (colors[0] != background).any()
            assert not (covered & mask).any()  # visible masks do not overlap
            covered |= mask
        assert (pixels[~covered] == background).all()


def test_written_masks_lie_in_their_boxes_and_are_the_rendered_ones(tmp_path):
    from pycocotools.coco import COCO

    cfg = load_data_config(make_shapes(tmp_path, n_train=12, n_val=2, size=64, seed=7))
    coco = COCO(str(cfg.train_ann))
    for image_index in range(12):
        rng = np.random.default_rng([7, 0, image_index])  # as make-shapes draws train image i
        _, objects = render_image(rng, float(rng.uniform()), 64)
        anns = coco.imgToAnns[image_index + 1]
        assert len(anns) == len(objects)
        for ann, (_, _, area, drawn) in zip(anns, objects):
            mask = coco.annToMask(ann).astype(bool)
            assert (mask == drawn).all()
            assert ann["area"] == int(mask.sum()) == area
            x, y, w, h = ann["bbox"]
            outside = mask.copy()
            outside[y:y + h, x:x + w] = False
            assert mask.any() and not outside.any()


def test_a_val_split_can_follow_a_range_or_drift_from_easy_to_hard(tmp_path):
    """--val-difficulty: a range keeps every val image's d inside it, drift makes d rise along
    the file order; the train split and each image's other random draws are unchanged."""
    from dynamicdet_cli.data.shapes import parse_difficulty

    plain = tmp_path / "plain"
    make_shapes(plain, n_train=2, n_val=12, size=48, seed=1)
    plain_d = [im["difficulty"] for im in json.loads((plain / "val.json").read_text())["images"]]
    for spec, check in (("0.6-1", lambda ds: all(0.6 <= d <= 1.0 for d in ds)),
                        ("drift", lambda ds: ds == sorted(ds) and ds[0] < 1 / 12 and ds[-1] > 11 / 12),
                        ("drift:0.2-0.5", lambda ds: ds == sorted(ds) and all(0.2 <= d <= 0.5 for d in ds))):
        out = tmp_path / spec.replace(":", "_")
        make_shapes(out, n_train=2, n_val=12, size=48, seed=1, val_difficulty=parse_difficulty(spec))
        ds = [im["difficulty"] for im in json.loads((out / "val.json").read_text())["images"]]
        assert check(ds), (spec, ds)
        assert ds != plain_d
        assert _files(out)["train.json"] == _files(plain)["train.json"]
        assert (out / "train" / "000001.png").read_bytes() == (plain / "train" / "000001.png").read_bytes()
    assert sorted(plain_d) != plain_d  # the default split does not drift


@pytest.mark.parametrize("spec", ["hard", "1-0", "0.5", "0.2-1.5", "drift:0.3"])
def test_make_shapes_refuses_a_bad_difficulty_in_one_line(tmp_path, spec):
    from typer.testing import CliRunner

    from dynamicdet_cli.cli.app import typer_app
    from helpers import one_error_line

    result = CliRunner().invoke(typer_app, ["make-shapes", str(tmp_path / "d"), "--train", "1", "--val", "2",
                                            "--size", "32", "--val-difficulty", spec])
    one_error_line(result, f"difficulty {spec!r}", "drift")
    assert not (tmp_path / "d").exists()
