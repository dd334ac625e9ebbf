"""predict: bad and odd image files, mixed routes under a threshold, glob inputs, the outputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_png, read_file

from dynamicdet_cli.errors import DynamicDetError
from dynamicdet_cli.model.build import build_model
from dynamicdet_cli.predict import list_images, predict, summary_table
from dynamicdet_cli.recipe import load_recipe, with_overrides

# torchvision 0.29 deprecates its image codecs (in favour of torchcodec) on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning",
                                        "ignore:The image encoding:DeprecationWarning")

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["circle", "square", "triangle"]
CAT_IDS = [3, 7, 9]  # not 1..3, so a label/category mix-up shows


@pytest.fixture(scope="module")
def model():
    """The tiny recipe at 64 px, 3 classes, keeping every detection (untrained scores are low)."""
    recipe = with_overrides(load_recipe(REPO / "recipes" / "shapes-tiny.yaml"), [
        "model.transform.min_size=64", "model.transform.max_size=64", "model.roi_heads.score_thresh=0.0"])
    torch.manual_seed(0)
    return build_model(recipe.model, num_classes=3).eval()


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Good: an RGB PNG, a grayscale PNG, an RGB JPEG. Bad: a truncated PNG, a text file."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_noise(48, 64, 0)).save(folder / "a_rgb.png")
    Image.fromarray(_noise(40, 40, 1)[..., 0], mode="L").save(folder / "b_gray.png")
    Image.fromarray(_noise(64, 32, 2)).save(folder / "c_photo.jpg", quality=90)
    good = (folder / "a_rgb.png").read_bytes()
    (folder / "d_corrupt.png").write_bytes(good[:60])  # a PNG header and then nothing
    (folder / "e_notes.txt").write_text("not an image\n")
    return folder


def _run(model, paths, out, route="hard", **kw):
    kw = {"conf": 0.0, "progress": False, **kw}
    return predict(model, paths, route, out, CLASSES, CAT_IDS, **kw)


def test_good_images_written_bad_ones_skipped(model, mixed_folder, tmp_path):
    paths = list_images([str(mixed_folder)])
    assert [p.name for p in paths] == ["a_rgb.png", "b_gray.png", "c_photo.jpg", "d_corrupt.png", "e_notes.txt"]
    out = tmp_path / "out"
    summary = _run(model, paths, out, batch_size=2)

    assert (summary.n_images, summary.n_skipped) == (3, 2)
    assert {p.name for p, _ in summary.skipped} == {"d_corrupt.png", "e_notes.txt"}
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(line["file"]).name for line in lines] == ["a_rgb.png", "b_gray.png", "c_photo.jpg"]
    assert [(line["width"], line["height"]) for line in lines] == [(64, 48), (40, 40), (32, 64)]
    assert all(line["route"] == "hard" for line in lines) and summary.n_hard == 3
    dets = [d for line in lines for d in line["detections"]]
    assert dets, "score_thresh 0 and conf 0 keep the untrained model's detections"
    assert summary.n_detections == len(dets)
    for d in dets:
        assert d["label"] in CLASSES and d["category_id"] == CAT_IDS[CLASSES.index(d["label"])]
        x1, y1, x2, y2 = d["box"]
        assert x1 <= x2 and y1 <= y2

    coco = json.loads((out / "predictions_coco.json").read_text())
    assert len(coco) == len(dets) and {r["image_id"] for r in coco} <= {0, 1, 2}
    images = json.loads((out / "images.json").read_text())
    assert [i["id"] for i in images["images"]] == [0, 1, 2]  # position among all the files
    assert images["categories"] == [{"id": c, "name": n} for c, n in zip(CAT_IDS, CLASSES)]

    renders = sorted(p.name for p in (out / "render").iterdir())
    assert renders == ["a_rgb.png", "b_gray.png", "c_photo.png"]  # no temporary files left
    drawn = decode_png(read_file(str(out / "render" / "b_gray.png")))
    assert drawn.shape == (3, 40, 40)
    assert set(summary.latency_ms) == {"easy", "hard"} and summary.latency_ms["easy"] is None
    assert summary.latency_ms["hard"] > 0
    assert summary_table(summary).row_count >= 5


def test_conf_filters_json_and_no_render(model, mixed_folder, tmp_path):
    out = tmp_path / "out"
    summary = _run(model, list_images([str(mixed_folder / "*.png")]), out, conf=1.0, render=False)
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(line["detections"] == [] for line in lines)
    assert json.loads((out / "predictions_coco.json").read_text()) == []
    assert not (out / "render").exists() and summary.renders == []


def test_only_bad_files_raise(model, mixed_folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("d_corrupt.png", "e_notes.txt"):
        (bad / name).write_bytes((mixed_folder / name).read_bytes())
    with pytest.raises(DynamicDetError, match="no readable images among 2 files"):
        _run(model, list_images([str(bad)]), tmp_path / "out")
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def test_threshold_route_follows_difficulty(model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(_noise(56, 56, 10 + i) // (1 + i)).save(folder / f"img{i}.png")  # darker and darker
    paths = list_images([str(folder)])
    _run(model, paths, tmp_path / "probe", route="easy", render=False)
    probe = (tmp_path / "probe" / "predictions.jsonl").read_text().splitlines()
    phi = sorted(json.loads(line)["difficulty"] for line in probe)
    assert phi[0] < phi[-1], "the images need different difficulties for this test"
    tau = (phi[2] + phi[3]) / 2

    summary = _run(model, paths, tmp_path / "out", route=tau, batch_size=4, render=False)
    lines = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [line["route"] for line in lines] == ["hard" if line["difficulty"] > tau else "easy" for line in lines]
    assert summary.n_hard == 3
    assert summary.latency_ms["easy"] > 0 and summary.latency_ms["hard"] > 0


def test_list_images_globs_files_and_errors(mixed_folder, tmp_path):
    assert [p.name for p in list_images([str(mixed_folder / "*.png")])] == ["a_rgb.png", "b_gray.png", "d_corrupt.png"]
    # a file named twice (directly and through a folder) is listed once, in first-seen order
    both = list_images([str(mixed_folder / "c_photo.jpg"), str(mixed_folder)])
    assert both[0].name == "c_photo.jpg" and len(both) == 5
    with pytest.raises(DynamicDetError, match="no file matches"):
        list_images([str(tmp_path / "nothing*.png")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DynamicDetError, match="no files"):
        list_images([str(empty)])


def test_bad_arguments(model, mixed_folder, tmp_path):
    paths = list_images([str(mixed_folder)])
    with pytest.raises(DynamicDetError, match="confidence"):
        _run(model, paths, tmp_path / "o", conf=2.0)
    with pytest.raises(DynamicDetError, match="route"):
        _run(model, paths, tmp_path / "o", route="medium")
