"""YOLO-format data (Ultralytics' layout), read through the same dataset as COCO data.

The data YAML, as Ultralytics writes it:

    path: ../shapes-yolo     # dataset root (here: relative to the YAML's folder); default: that folder
    train: images/train      # one image folder per split, relative to `path`
    val: images/val          # optional
    router: images/router    # optional (dynamicdet's router split, see DataConfig)
    names: [circle, square]  # class names, a list or {0: circle, 1: square}; `nc`, if given, must agree

Labels live beside the images with `images` replaced by `labels` in the folder's path
(images/train/a/x.png -> labels/train/a/x.txt), one object per line: `class cx cy w h`, the
class a 0-based index into `names`, the box centre and size normalised to [0, 1] by the image
width and height. An image without a label file is an image with no objects.

Nothing is read when the YAML is loaded but the folder layout. Opening a split reads its label
files and each image's header (its size, turned as its EXIF orientation says) into an
in-memory COCO index (`YoloLabels.to_coco`), which CocoDataset uses as it uses a COCO JSON: the
same box checks, and pycocotools for evaluation. COCO category id = class index, so
predictions_coco.json speaks the label files' class numbers. Pixels are decoded per item.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image, UnidentifiedImageError

from dynamicdet_cli.data.coco import TURNED, SKIP_HINT
from dynamicdet_cli.data.config import DataConfig
from dynamicdet_cli.data.images import IMAGE_SUFFIXES
from dynamicdet_cli.core.errors import DynamicDetError

# What Pillow or torchvision decode among Ultralytics' image suffixes.
_SPLITS = ("train", "val", "router")
# Ultralytics keys that do not concern detection here: accepted and not used (a `download`
# script is never run).
_IGNORED = ("test", "download")
_KEYS = ("path", *_SPLITS, "names", "nc", *_IGNORED)
_FIELDS = ("cx", "cy", "w", "h")
_ROUNDING = 1e-5  # normalised: more than the rounding of six decimals on cx and w/2 together


@dataclass(frozen=True)
class YoloLabels:
    """One split of a YOLO-format dataset: its image folder, its label folder, the class names.
    Stands where a COCO JSON path stands (DataConfig.train_ann, CocoDataset's ann_file)."""

    images: Path
    labels: Path
    names: tuple[str, ...]

    @property
    def name(self) -> str:
        """How messages name this split (as they name a COCO file)."""
        return str(self.labels)

    def __str__(self) -> str:
        return str(self.labels)

    def to_coco(self, skip_bad_images: bool = False) -> tuple[dict, list[tuple[str, str]]]:
        """The split as a COCO dict (images, annotations, categories) and the images left out
        as (path, reason): those whose header does not open, with skip_bad_images (else an error).

        Raises DynamicDetError naming the file and line of the first bad label line: a wrong
        number of fields, a field that is not a number, a class outside 0..len(names)-1, a
        coordinate outside [0, 1].
        """
        images, annotations, skipped = [], [], []
        for path in sorted(p for p in self.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            size = _image_size(path)
            if isinstance(size, str):
                if not skip_bad_images:
                    raise DynamicDetError(f"{path}: {size}; {SKIP_HINT}")
                skipped.append((str(path), size))
                continue
            rel = path.relative_to(self.images)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": rel.as_posix(), "width": size[0], "height": size[1]})
            label_file = (self.labels / rel).with_suffix(".txt")
            if label_file.is_file():
                for number, cls, box in _read_labels(label_file, len(self.names)):
                    x1, y1, x2, y2 = _pixels(box, *size)
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls,
                                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                        "iscrowd": 0, "source": f"{label_file}, line {number}"})
        categories = [{"id": i, "name": n} for i, n in enumerate(self.names)]
        return {"images": images, "annotations": annotations, "categories": categories}, skipped


def _image_size(path: Path) -> tuple[int, int] | str:
    """(width, height) as shown (EXIF orientation applied) from the header, or why not."""
    try:
        with Image.open(path) as im:
            size = im.size
            if im.getexif().get(ExifTags.Base.Orientation, 1) in TURNED:
                size = size[::-1]
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        return f"cannot open image: {err}"
    return size


def _pixels(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, ...]:
    """Normalised (cx, cy, w, h) -> pixel (x1, y1, x2, y2). An edge past the image by no more than
    label files' rounding (six decimals) is put on the image's edge, not reported as clipped."""
    cx, cy, w, h = box
    edges = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    edges = [0.0 if -_ROUNDING < e < 0.0 else 1.0 if 1.0 < e < 1.0 + _ROUNDING else e for e in edges]
    return edges[0] * width, edges[1] * height, edges[2] * width, edges[3] * height


def _read_labels(path: Path, n_classes: int) -> list[tuple[int, int, tuple[float, float, float, float]]]:
    """(line number, class, (cx, cy, w, h)) per non-empty line of one label file, each checked."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DynamicDetError(f"{path}: cannot read label file: {err}") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}, line {number}"
        if len(fields) != 5:
            raise DynamicDetError(f"{where}: {len(fields)} fields, expected 5 (class cx cy w h); "
                                  "segmentation polygons are not read")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DynamicDetError(f"{where}: {line.strip()!r} is not five numbers (class cx cy w h)") from None
        cls = values[0]
        if not cls.is_integer():
            raise DynamicDetError(f"{where}: class {fields[0]} is not a whole number (a class index 0..{n_classes - 1})")
        if not 0 <= cls < n_classes:
            raise DynamicDetError(f"{where}: class {fields[0]} is outside 0..{n_classes - 1} "
                                  f"(the data YAML names {n_classes} classes)")
        for name, value in zip(_FIELDS, values[1:]):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise DynamicDetError(f"{where}: {name} = {fields[_FIELDS.index(name) + 1]} is outside [0, 1] "
                                      "(YOLO coordinates are normalised by the image size)")
        out.append((number, int(cls), tuple(values[1:])))
    return out


# -- data YAML -------------------------------------------------------------------------------

def is_yolo_yaml(raw: dict) -> bool:
    """Whether a data YAML's mapping is YOLO-format (rather than dynamicdet's COCO keys)."""
    return "names" in raw or ("train" in raw and "train_ann" not in raw)


def yolo_data_config(path: Path, raw: dict) -> DataConfig:
    """DataConfig of a YOLO-format data YAML at `path` (already parsed into `raw`)."""
    for key in raw:
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(_KEYS)}"
            raise DynamicDetError(f"{path.name}: unknown key '{key}' of a YOLO-format data file{hint}")
    names = _names(path, raw)
    root = raw.get("path")
    if root is not None and not isinstance(root, str):
        raise DynamicDetError(f"{path.name}: 'path' must be a folder path string")
    root = path.parent if root is None else _relative_to(Path(root).expanduser(), path.parent)
    if not root.is_dir():
        raise DynamicDetError(f"{path.name}: path points to {root}, which is not a folder")
    if raw.get("train") is None:
        raise DynamicDetError(f"{path.name}: missing key 'train' (the training images folder, e.g. images/train)")
    splits = {}
    for split in _SPLITS:
        if raw.get(split) is not None:
            labels = _split(path, root, split, raw[split], names)
            splits[f"{split}_ann"], splits[f"{split}_images"] = labels, labels.images
    return DataConfig(**splits)


def _relative_to(p: Path, folder: Path) -> Path:
    return p if p.is_absolute() else folder / p


def _names(path: Path, raw: dict) -> tuple[str, ...]:
    names = raw.get("names")
    if isinstance(names, dict):
        if any(type(k) is not int for k in names) or sorted(names) != list(range(len(names))):
            raise DynamicDetError(f"{path.name}: 'names' keys must be the class indices 0..{len(names) - 1}, "
                                  f"got {sorted(names, key=str)[:6]}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DynamicDetError(f"{path.name}: 'names' must list the class names, e.g. names: [cat, dog] "
                              "or names: {0: cat, 1: dog}")
    names = [str(n) for n in names]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DynamicDetError(f"{path.name}: class name(s) {', '.join(twice)} given more than once in 'names'")
    nc = raw.get("nc")
    if nc is not None and nc != len(names):
        raise DynamicDetError(f"{path.name}: nc is {nc} but 'names' lists {len(names)} classes")
    return tuple(names)


def _split(path: Path, root: Path, split: str, value, names: tuple[str, ...]) -> YoloLabels:
    """The image and label folders of one split, checked to exist."""
    if not isinstance(value, str):
        raise DynamicDetError(f"{path.name}: '{split}' must be one image folder (a path string), got {value!r}")
    images = _relative_to(Path(value).expanduser(), root)
    if images.is_file():
        raise DynamicDetError(f"{path.name}: {split} points to the file {images}; give the folder of its images "
                              "(image list files are not read)")
    if not images.is_dir():
        raise DynamicDetError(f"{path.name}: {split} points to {images}, which does not exist")
    parts = images.parts
    if "images" not in parts:
        raise DynamicDetError(f"{path.name}: {split} points to {images}, whose path has no 'images' folder to "
                              "find the labels beside (the layout is images/<split> and labels/<split>)")
    at = len(parts) - 1 - parts[::-1].index("images")  # the last 'images', as Ultralytics replaces it
    labels = Path(*parts[:at], "labels", *parts[at + 1:])
    if not labels.is_dir():
        raise DynamicDetError(f"{path.name}: no label folder {labels} for the {split} images in {images}")
    return YoloLabels(images=images, labels=labels, names=names)
