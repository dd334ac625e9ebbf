"""Reading a COCO annotation file and checking it before pycocotools sees it: every error a
user's file can cause (missing keys, unknown ids, duplicate ids, malformed boxes or
segmentations, fields of the wrong type) is one DynamicDetError line naming the file and the
record.

Many exporters leave out the fields COCO gives a meaning by default: `iscrowd` (0) and
`area` (the object's pixel area, which COCOeval reads to sort objects by size). `check_coco`
fills those in the parsed data (the area from the mask when there is one, else from the box)
and says so in one warning; the file itself is never changed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dynamicdet_cli.core.errors import DynamicDetError, missing_file, warn


def read_coco_json(path: Path) -> dict:
    """The parsed object of a COCO annotation file (not yet checked: check_coco)."""
    if not path.is_file():
        raise missing_file(path, f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as err:
        raise DynamicDetError(f"{path.name}: not valid JSON (line {err.lineno}): {err.msg}") from None
    except RecursionError:
        raise DynamicDetError(f"{path.name}: JSON nested too deeply to be a COCO annotation file") from None
    except (UnicodeDecodeError, OSError) as err:
        raise DynamicDetError(f"{path.name}: cannot read: {err}") from None
    if not isinstance(data, dict):
        raise DynamicDetError(f"{path.name}: expected a COCO object with images/annotations/categories")
    return data


_REQUIRED = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def check_coco(data: dict, name: str) -> None:
    """Raise DynamicDetError on anything that would break pycocotools or the targets later;
    fill missing `area` and `iscrowd` in `data` (warning once)."""
    for section, keys in _REQUIRED.items():
        if not isinstance(data.get(section), list):
            raise DynamicDetError(f"{name}: missing list '{section}' (a COCO file needs images, "
                                  "annotations and categories)")
        for k, rec in enumerate(data[section]):
            missing = [key for key in keys if not isinstance(rec, dict) or key not in rec]
            if missing:
                raise DynamicDetError(f"{name}: {section}[{k}] lacks key(s) {', '.join(missing)}")
    image_ids = _unique_ids(data["images"], "image", name)
    cat_ids = _unique_ids(data["categories"], "category", name)
    _unique_ids(data["annotations"], "annotation", name)  # a repeated id makes COCOeval count one object twice
    if not cat_ids:
        raise DynamicDetError(f"{name}: 'categories' is empty")
    files: dict[str, Any] = {}
    for img in data["images"]:
        for k in ("width", "height"):  # some exporters write 640.0: a whole number all the same
            if isinstance(img[k], float) and img[k].is_integer():
                img[k] = int(img[k])
        if not all(_is_int(img[k]) and img[k] > 0 for k in ("width", "height")):
            raise DynamicDetError(f"{name}: image id {img['id']} has no positive whole-number width/height "
                                  f"(width {img['width']!r}, height {img['height']!r})")
        if not isinstance(img["file_name"], str) or not img["file_name"].strip():
            raise DynamicDetError(f"{name}: image id {img['id']} has file_name {img['file_name']!r}; "
                                  "expected the image's path (a non-empty string)")
        files.setdefault(img["file_name"], []).append(img["id"])
    twice = {f: ids for f, ids in files.items() if len(ids) > 1}
    if twice:  # merged exports: the image would be evaluated (or trained on) once per id
        f, ids = next(iter(twice.items()))
        warn(f"{name}: {len(twice)} file(s) listed under more than one image id, e.g. {f} as ids "
             f"{', '.join(map(str, ids[:4]))}: each id counts as an image of its own")
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise DynamicDetError(
                f"{name}: annotation {ann['id']} names unknown image id {ann['image_id']!r}"
            )
        if ann["category_id"] not in cat_ids:
            raise DynamicDetError(
                f"{name}: annotation {ann['id']} names unknown category id {ann['category_id']!r}"
            )
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite(v) for v in bbox)):
            raise DynamicDetError(f"{name}: annotation {ann['id']} has bbox {bbox!r}; expected [x, y, w, h]")
        if ann.get("iscrowd", 0) not in (0, 1) or isinstance(ann.get("iscrowd"), (bool, float)):
            raise DynamicDetError(f"{name}: annotation {ann['id']} has iscrowd {ann['iscrowd']!r}; expected 0 or 1")
        if "area" in ann and not (_is_finite(ann["area"]) and ann["area"] >= 0):
            raise DynamicDetError(f"{name}: annotation {ann['id']} has area {ann['area']!r}; "
                                  "expected a number >= 0 (or no area: it is then computed)")
    _fill_defaults(data, name)


def _fill_defaults(data: dict, name: str) -> None:
    """COCO's defaults for what exporters often leave out: iscrowd 0, area of the mask or box."""
    no_crowd = no_area = 0
    images = {img["id"]: img for img in data["images"]}
    for ann in data["annotations"]:
        if "iscrowd" not in ann:
            ann["iscrowd"] = 0
            no_crowd += 1
        if "area" not in ann:
            ann["area"] = _area(ann, images[ann["image_id"]])
            no_area += 1
    filled = [f"{n} without {key}" for n, key in ((no_area, "area"), (no_crowd, "iscrowd")) if n]
    if filled:
        warn(f"{name}: {' and '.join(filled)} of {len(data['annotations'])} annotation(s): used COCO's "
             "defaults (area of the mask, else of the box; iscrowd 0)")


def _area(ann: dict, image: dict) -> float:
    seg = ann.get("segmentation")
    if is_segmentation(seg):
        from pycocotools import mask as mask_util
        h, w = image["height"], image["width"]
        if isinstance(seg, list):
            rle = mask_util.merge(mask_util.frPyObjects(seg, h, w))
        elif isinstance(seg.get("counts"), list):
            rle = mask_util.frPyObjects(seg, h, w)
        else:
            rle = seg
        try:
            return float(mask_util.area(rle))
        except Exception:  # a mask pycocotools cannot read: the box's area, as below
            pass
    _, _, w, h = ann["bbox"]
    return float(max(w, 0) * max(h, 0))


def is_segmentation(seg: Any) -> bool:
    """Polygons (a non-empty list of [x1, y1, x2, y2, ...], 3+ points each) or an RLE dict."""
    if isinstance(seg, dict):
        return "counts" in seg and isinstance(seg.get("size"), list) and len(seg["size"]) == 2
    return (isinstance(seg, list) and bool(seg) and all(
        isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(_is_finite(v) for v in p) for p in seg))


def _unique_ids(records: list[dict], what: str, name: str) -> set[int]:
    ids: set[int] = set()
    for rec in records:
        if not _is_int(rec["id"]):
            raise DynamicDetError(f"{name}: {what} id {rec['id']!r} is not an integer")
        if rec["id"] in ids:
            raise DynamicDetError(f"{name}: duplicate {what} id {rec['id']}")
        ids.add(rec["id"])
    return ids


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
