"""CocoDataset, collate, transforms and the data YAML: image modes, empty and bad data."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from dynamicdet_cli.data import CocoDataset, build_transforms, collate, load_data_config
from dynamicdet_cli.core.errors import DynamicDetError

# torchvision 0.29 deprecates its image codecs (in favour of torchcodec) on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

W, H = 20, 16


def write_coco(tmp_path: Path, images, annotations, categories=None, name="ann.json") -> Path:
    """Write a COCO file; `images` is a list of (id, file_name)."""
    categories = categories if categories is not None else [{"id": 1, "name": "a"}]
    data = {
        "images": [{"id": i, "file_name": f, "width": W, "height": H} for i, f in images],
        "annotations": [
            {"id": k + 1, "iscrowd": 0, **a} for k, a in enumerate(annotations)
        ],
        "categories": categories,
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def save_rgb(path: Path, color=(255, 0, 0)) -> None:
    Image.new("RGB", (W, H), color).save(path)


@pytest.fixture
def one_image(tmp_path):
    save_rgb(tmp_path / "a.png")
    return tmp_path


# -- image modes -----------------------------------------------------------------------


def _mode_image(mode: str) -> Image.Image:
    if mode == "I;16":
        arr = np.full((H, W), 65535, dtype=np.uint16)
        arr[:, : W // 2] = 0
        return Image.fromarray(arr)
    if mode == "P":
        im = Image.new("P", (W, H), 1)
        im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        return im
    if mode == "RGBA":
        return Image.new("RGBA", (W, H), (0, 0, 255, 128))
    return Image.new(mode, (W, H), 255 if mode == "L" else (255, 0, 0))


@pytest.mark.parametrize("mode,ext", [("L", "png"), ("RGBA", "png"), ("P", "png"),
                                      ("I;16", "png"), ("RGB", "jpg"), ("RGB", "bmp")])
def test_image_modes_decode_to_float_rgb(tmp_path, mode, ext):
    _mode_image(mode).save(tmp_path / f"x.{ext}")
    ds = CocoDataset(write_coco(tmp_path, [(1, f"x.{ext}")], []), tmp_path)
    image, _ = ds[0]
    assert isinstance(image, tv_tensors.Image)
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert 0.0 <= image.min() and image.max() <= 1.0
    if mode == "I;16":  # 16-bit range scaled, not clipped at 255
        assert image[:, :, 0].max() == 0.0 and image[:, :, -1].min() == 1.0
    if mode == "P":  # palette index 1 is red
        assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


# -- targets ---------------------------------------------------------------------------


def test_image_without_boxes_gives_empty_target(one_image):
    ds = CocoDataset(write_coco(one_image, [(1, "a.png")], []), one_image)
    _, target = ds[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["labels"].dtype == torch.int64 and target["image_id"] == 1


def test_boxes_xyxy_clipped_degenerate_dropped_and_counted(one_image):
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5]},
        {"image_id": 1, "category_id": 1, "bbox": [15, 10, 10, 10]},  # clipped to 20x16
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 4]},  # zero width
        {"image_id": 1, "category_id": 1, "bbox": [30, 2, 5, 5]},  # outside: zero after clip
    ]
    ds = CocoDataset(write_coco(one_image, [(1, "a.png")], anns), one_image)
    assert ds.n_degenerate == 2 and ds.dropped == {"of zero size": 1, "outside the image": 1}
    assert ds.n_clipped == 1
    assert ds.box_report().startswith("ann.json: dropped 2 box(es): 1 of zero size (e.g. annotation ")
    _, target = ds[0]
    assert target["boxes"].tolist() == [[2, 3, 6, 8], [15, 10, 20, 16]]
    assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(target["boxes"].canvas_size) == (H, W)


def test_crowd_annotations_ignored(one_image):
    anns = [{"image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5], "iscrowd": 1},
            {"image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}]
    path = write_coco(one_image, [(1, "a.png")], [])
    data = json.loads(path.read_text())
    data["annotations"] = [{"id": k + 1, **a} for k, a in enumerate(anns)]
    path.write_text(json.dumps(data))
    _, target = CocoDataset(path, one_image)[0]
    assert target["boxes"].tolist() == [[1, 1, 5, 5]]


def test_noncontiguous_category_ids_map_to_contiguous_labels(one_image):
    cats = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    anns = [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2]},
            {"image_id": 1, "category_id": 3, "bbox": [0, 0, 3, 3]}]
    ds = CocoDataset(write_coco(one_image, [(1, "a.png")], anns, cats), one_image)
    assert ds.cat_ids == [3, 7] and ds.classes == ["three", "seven"] and ds.num_classes == 2
    _, target = ds[0]
    assert target["labels"].tolist() == [2, 1]
    assert [ds.label_to_cat_id(int(lab)) for lab in target["labels"]] == [7, 3]


def test_all_images_kept_sorted_including_negatives(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        save_rgb(tmp_path / name)
    anns = [{"image_id": 5, "category_id": 1, "bbox": [0, 0, 2, 2]}]
    ds = CocoDataset(write_coco(tmp_path, [(9, "a.png"), (5, "b.png"), (2, "c.png")], anns), tmp_path)
    assert ds.image_ids == [2, 5, 9] and len(ds) == 3
    assert ds.image_info(1)["file_name"] == "b.png"


# -- user errors -----------------------------------------------------------------------


def test_malformed_json_names_file_and_line(one_image):
    path = one_image / "broken.json"
    path.write_text('{\n  "images": [\n  oops\n}')
    with pytest.raises(DynamicDetError, match=r"broken.json: not valid JSON \(line 3\)"):
        CocoDataset(path, one_image)


def test_missing_annotation_file(one_image):
    with pytest.raises(DynamicDetError, match="nope.json"):
        CocoDataset(one_image / "nope.json", one_image)


def test_missing_keys(one_image):
    path = one_image / "ann.json"
    path.write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(DynamicDetError, match="ann.json: missing list 'annotations'"):
        CocoDataset(path, one_image)
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [],
                                "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(DynamicDetError, match="ann.json: images.0. lacks key.s. width, height"):
        CocoDataset(path, one_image)


def test_unknown_image_id(one_image):
    anns = [{"image_id": 42, "category_id": 1, "bbox": [0, 0, 2, 2]}]
    with pytest.raises(DynamicDetError, match="ann.json: .*unknown image id 42"):
        CocoDataset(write_coco(one_image, [(1, "a.png")], anns), one_image)


def test_unknown_category_id(one_image):
    anns = [{"image_id": 1, "category_id": 9, "bbox": [0, 0, 2, 2]}]
    with pytest.raises(DynamicDetError, match="ann.json: .*unknown category id 9"):
        CocoDataset(write_coco(one_image, [(1, "a.png")], anns), one_image)


def test_bad_bbox(one_image):
    anns = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 2]}]
    with pytest.raises(DynamicDetError, match="ann.json: annotation 1 has bbox"):
        CocoDataset(write_coco(one_image, [(1, "a.png")], anns), one_image)


def test_missing_image_file_raises_at_construction(one_image):
    with pytest.raises(DynamicDetError, match="ghost.png"):
        CocoDataset(write_coco(one_image, [(1, "a.png"), (2, "ghost.png")], []), one_image)


def test_undecodable_image_raises_on_access(one_image):
    (one_image / "junk.png").write_bytes(b"not an image at all")
    ds = CocoDataset(write_coco(one_image, [(1, "junk.png")], []), one_image)
    with pytest.raises(DynamicDetError, match="junk.png: cannot decode image"):
        ds[0]


def test_size_mismatch_raises(tmp_path):
    Image.new("RGB", (W + 1, H)).save(tmp_path / "a.png")
    ds = CocoDataset(write_coco(tmp_path, [(1, "a.png")], []), tmp_path)
    with pytest.raises(DynamicDetError, match="a.png: image is 21x16 but ann.json says 20x16"):
        ds[0]


def test_skip_bad_images_skips_and_reports(tmp_path):
    save_rgb(tmp_path / "good.png")
    good = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.png").write_bytes(b"garbage")
    images = [(1, "good.png"), (2, "truncated.png"), (3, "junk.png"), (4, "missing.png")]
    ds = CocoDataset(write_coco(tmp_path, images, []), tmp_path, skip_bad_images=True)
    assert ds.image_ids == [1]
    assert sorted(Path(p).name for p, _ in ds.skipped) == ["junk.png", "missing.png", "truncated.png"]
    assert dict((Path(p).name, r) for p, r in ds.skipped)["missing.png"] == "file not found"
    # A file that breaks after construction (or whose pixels break past a header that reads, as a
    # truncated JPEG's) is skipped at access time, said once, and collate drops it.
    from dynamicdet_cli.core.errors import set_warning_sink
    (tmp_path / "good.png").write_bytes(b"broken later")
    said = []
    set_warning_sink(said.append)
    try:
        assert ds[0] is None and ds[0] is None
    finally:
        set_warning_sink(None)
    assert len(said) == 1 and said[0].startswith(f"skipped {tmp_path / 'good.png'}: ")
    images_out, targets = collate([None, None])
    assert images_out == [] and targets == []


# -- collate and transforms ------------------------------------------------------------


def test_collate_lists_and_drops_none(one_image):
    ds = CocoDataset(write_coco(one_image, [(1, "a.png")], []), one_image)
    images, targets = collate([ds[0], None, ds[0]])
    assert len(images) == 2 and len(targets) == 2 and images[0].shape == (3, H, W)


def test_hflip_mirrors_boxes(one_image):
    anns = [{"image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5]}]
    tf = build_transforms(train=True, hflip=1.0, photometric=0.0)
    plain = CocoDataset(write_coco(one_image, [(1, "a.png")], anns), one_image)
    flipped = CocoDataset(write_coco(one_image, [(1, "a.png")], anns), one_image, transforms=tf)
    (image, target), (fimage, ftarget) = plain[0], flipped[0]
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    assert ftarget["boxes"].tolist() == [[W - x2, y1, W - x1, y2]]
    assert torch.equal(fimage, image.flip(-1))
    assert ftarget["labels"].tolist() == [1] and ftarget["image_id"] == 1


def test_train_transforms_keep_contract_with_empty_boxes(one_image):
    tf = build_transforms(train=True, hflip=1.0, photometric=1.0, zoom_out=1.0)
    ds = CocoDataset(write_coco(one_image, [(1, "a.png")], []), one_image, transforms=tf)
    image, target = ds[0]
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["image_id"] == 1


def test_train_transforms_keep_boxes_inside_after_zoom(one_image):
    anns = [{"image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5]}]
    tf = build_transforms(train=True, zoom_out=1.0)
    ds = CocoDataset(write_coco(one_image, [(1, "a.png")], anns), one_image, transforms=tf)
    torch.manual_seed(0)
    image, target = ds[0]
    h, w = image.shape[-2:]
    (x1, y1, x2, y2), = target["boxes"].tolist()
    assert (h, w) != (H, W) and x2 - x1 == 4 and y2 - y1 == 5 and x2 <= w and y2 <= h


def test_eval_transforms_only_convert_dtype():
    image = tv_tensors.Image(torch.full((3, 4, 4), 255, dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(4, 4)),
              "labels": torch.zeros(0, dtype=torch.int64), "image_id": 3}
    out, out_target = build_transforms(train=False)(image, target)
    assert out.dtype == torch.float32 and out.max() == 1.0 and out_target["image_id"] == 3


def test_bad_probability_is_user_error():
    with pytest.raises(DynamicDetError, match="hflip=1.5"):
        build_transforms(train=True, hflip=1.5)


# -- data YAML -------------------------------------------------------------------------


def test_data_config_relative_paths(one_image):
    write_coco(one_image, [(1, "a.png")], [], name="train.json")
    (one_image / "data.yaml").write_text("train_ann: train.json\ntrain_images: .\n")
    cfg = load_data_config(one_image / "data.yaml")
    assert cfg.train_ann == one_image / "train.json" and cfg.val_ann is None and not cfg.has_val
    with pytest.raises(Exception):
        cfg.train_ann = Path("x")  # frozen


@pytest.mark.parametrize("text,message", [
    ("train_ann: train.json\ntrain_image: .\n", "unknown key 'train_image'; did you mean 'train_images'"),
    ("train_ann: train.json\n", "missing key 'train_images'"),
    ("train_ann: nope.json\ntrain_images: .\n", "train_ann points to .*nope.json"),
    ("train_ann: train.json\ntrain_images: .\nval_ann: train.json\n", "both val_ann and val_images"),
    ("[1, 2", "not valid YAML"),
])
def test_data_config_errors(one_image, text, message):
    write_coco(one_image, [(1, "a.png")], [], name="train.json")
    (one_image / "data.yaml").write_text(text)
    with pytest.raises(DynamicDetError, match=message):
        load_data_config(one_image / "data.yaml")


def test_no_warning_on_clean_data(one_image):
    anns = [{"image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5]}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CocoDataset(write_coco(one_image, [(1, "a.png")], anns), one_image)


def test_real_exports_quirks_are_read_or_named(tmp_path):
    """640.0 as a width is a whole number; a file under two ids is warned of; a Windows path and a
    turned image are named as the cause, not only as a missing file or a size mismatch."""
    from dynamicdet_cli.core.errors import set_warning_sink
    save_rgb(tmp_path / "a.png")
    path = write_coco(tmp_path, [(1, "a.png"), (2, "a.png")], [])
    data = json.loads(path.read_text())
    data["images"][0]["width"] = float(W)
    path.write_text(json.dumps(data))
    said = []
    set_warning_sink(said.append)
    try:
        ds = CocoDataset(path, tmp_path)
    finally:
        set_warning_sink(None)
    assert ds.image_ids == [1, 2] and tuple(ds[0][0].shape) == (3, H, W)
    assert said == ["ann.json: 1 file(s) listed under more than one image id, e.g. a.png as ids 1, 2: each id "
                    "counts as an image of its own"]
    (tmp_path / "sub").mkdir()
    save_rgb(tmp_path / "sub" / "b.png")
    with pytest.raises(DynamicDetError, match="Windows backslashes: write / between folders"):
        CocoDataset(write_coco(tmp_path, [(1, "sub\\b.png")], [], name="win.json"), tmp_path)
    Image.new("RGB", (H, W)).save(tmp_path / "turned.png")  # 16x20 where the file says 20x16
    turned = CocoDataset(write_coco(tmp_path, [(1, "turned.png")], [], name="turned.json"), tmp_path)
    with pytest.raises(DynamicDetError, match="width and height swapped: where an EXIF orientation tag"):
        turned[0]
