"""Instance masks in CocoDataset: polygons and RLE through pycocotools, masks moving with
the boxes under augmentation, and data without masks refused before training."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from torchvision import tv_tensors

from dynamicdet_cli.data import CocoDataset, build_transforms
from dynamicdet_cli.core.errors import DynamicDetError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

W, H = 24, 16


def _rle(mask: np.ndarray, compressed: bool = True) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).flatten(order="F")  # uncompressed RLE: run lengths, column-major, zeros first
    runs, value, count = [], 0, 0
    for v in flat:
        if v == value:
            count += 1
        else:
            runs.append(count)
            value, count = v, 1
    runs.append(count)
    return {"size": [H, W], "counts": runs}


def _square(x1, y1, x2, y2) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


def write_data(tmp_path: Path, segmentations: list, boxes: list | None = None) -> Path:
    """One image with one annotation per segmentation (None: the key is left out); boxes
    [x, y, w, h] per annotation, made up when not given."""
    Image.new("RGB", (W, H), (200, 10, 10)).save(tmp_path / "a.png")
    anns = []
    for k, seg in enumerate(segmentations, start=1):
        box = boxes[k - 1] if boxes else [2 * k, 2, 6, 8]
        ann = {"id": k, "image_id": 1, "category_id": 1, "bbox": box, "iscrowd": 0, "area": 48}
        if seg is not None:
            ann["segmentation"] = seg
        anns.append(ann)
    data = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}], "annotations": anns,
            "categories": [{"id": 1, "name": "a"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_polygon_rle_and_uncompressed_rle_decode_to_their_masks(tmp_path):
    want = [_square(2, 2, 8, 10), _square(4, 3, 10, 9), _square(6, 4, 12, 10)]
    polygon = [[2, 2, 8, 2, 8, 10, 2, 10]]  # the square's corners, pixel edges
    ann = write_data(tmp_path, [polygon, _rle(want[1]), _rle(want[2], compressed=False)])
    image, target = CocoDataset(ann, tmp_path, build_transforms(False), masks=True)[0]
    masks = target["masks"]
    assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8
    assert masks.shape == (3, H, W) and len(target["boxes"]) == 3
    for got, expected in zip(masks, want):
        assert (got.numpy().astype(bool) == expected).all()


def test_without_masks_the_target_has_none(tmp_path):
    ann = write_data(tmp_path, [None])
    _, target = CocoDataset(ann, tmp_path, build_transforms(False))[0]
    assert "masks" not in target


def test_an_image_without_objects_gets_an_empty_mask_stack(tmp_path):
    ann = write_data(tmp_path, [])
    _, target = CocoDataset(ann, tmp_path, build_transforms(False), masks=True)[0]
    assert target["masks"].shape == (0, H, W)


@pytest.mark.parametrize("bad", [None, [], [[1, 2, 3, 4]], {"counts": "abc"}])
def test_annotations_without_a_usable_mask_are_refused_at_construction(tmp_path, bad):
    ann = write_data(tmp_path, [_rle(_square(2, 2, 8, 10)), bad])
    with pytest.raises(DynamicDetError, match="annotation 2 has no instance mask") as err:
        CocoDataset(ann, tmp_path, masks=True)
    assert "\n" not in str(err.value)
    CocoDataset(ann, tmp_path)  # a box-only dataset does not care


def test_rle_of_another_size_is_refused(tmp_path):
    rle = _rle(_square(2, 2, 8, 10))
    rle["size"] = [H + 1, W]
    with pytest.raises(DynamicDetError, match="annotation 1 has an RLE mask of size"):
        CocoDataset(write_data(tmp_path, [rle]), tmp_path, masks=True)


def test_flip_and_zoom_move_masks_with_their_boxes(tmp_path):
    ann = write_data(tmp_path, [_rle(_square(2, 2, 8, 10)), _rle(_square(4, 3, 10, 9))],
                     boxes=[[2, 2, 6, 8], [4, 3, 6, 6]])  # each mask's tight box
    flip_zoom = build_transforms(True, hflip=1.0, photometric=0.0, zoom_out=1.0)
    torch.manual_seed(0)
    image, target = CocoDataset(ann, tmp_path, flip_zoom, masks=True)[0]
    masks, boxes = target["masks"], target["boxes"]
    assert len(masks) == len(boxes) == 2  # nothing dropped: the loop below checks both
    assert masks.shape[-2:] == image.shape[-2:] and tuple(image.shape[-2:]) != (H, W)  # zoomed out
    for mask, box in zip(masks, boxes):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        torch.testing.assert_close(tight, box.as_subclass(torch.Tensor))  # the box is still the mask's extent


def test_sanitizing_drops_the_masks_of_dropped_boxes():
    canvas = (H, W)
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[2.0, 2, 8, 10], [5.0, 5, 5, 9]]), format="XYXY", canvas_size=canvas)
    masks = tv_tensors.Mask(torch.stack([torch.from_numpy(_square(2, 2, 8, 10)), torch.zeros(H, W, dtype=torch.bool)]).to(torch.uint8))
    target = {"boxes": boxes, "labels": torch.tensor([1, 1]), "masks": masks, "image_id": 1}
    image = tv_tensors.Image(torch.rand(3, H, W))
    _, out = build_transforms(True, hflip=0.0, photometric=0.0)(image, target)
    assert len(out["boxes"]) == len(out["labels"]) == len(out["masks"]) == 1
    assert (out["masks"][0] == masks[0]).all()


def test_a_crowd_annotation_without_a_mask_is_refused_too(tmp_path):
    """Crowd boxes are not trained on, but mask AP reads every ground-truth mask."""
    ann = write_data(tmp_path, [_rle(_square(2, 2, 8, 10)), None])
    data = json.loads(ann.read_text())
    data["annotations"][1]["iscrowd"] = 1
    ann.write_text(json.dumps(data))
    with pytest.raises(DynamicDetError, match="annotation 2 has no instance mask"):
        CocoDataset(ann, tmp_path, masks=True)
