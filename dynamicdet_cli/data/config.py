"""The data YAML: where a dataset's splits live (COCO JSON and image folders; a YOLO-format
YAML is read by data/yolo.py into the same DataConfig)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dynamicdet_cli.core.errors import DynamicDetError, missing_file


@dataclass(frozen=True)
class DataConfig:
    """Where a dataset lives. Paths are absolute or relative to the data YAML's folder
    (resolved at load). For YOLO-format data (data/yolo.py) each `*_ann` is a YoloLabels (the
    split's label folder and class names) instead of a COCO JSON path. `val_ann`/`val_images` are both set or both None, and so are
    `router_ann`/`router_images`: an optional split of images the detectors never train on,
    whose losses are the router's targets (train-router)."""

    train_ann: Path | Any
    train_images: Path
    val_ann: Path | Any | None = None
    val_images: Path | None = None
    router_ann: Path | Any | None = None
    router_images: Path | None = None

    @property
    def has_val(self) -> bool:
        return self.val_ann is not None

    @property
    def has_router(self) -> bool:
        return self.router_ann is not None


_DATA_KEYS = ("train_ann", "train_images", "val_ann", "val_images", "router_ann", "router_images")


def load_data_config(path: str | Path) -> DataConfig:
    """Read a data YAML (keys train_ann, train_images, optional val_ann, val_images and
    router_ann, router_images) and check that every path it names exists. A YOLO-format
    data YAML (path, train, val, names) is read by data/yolo.py."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, f"data file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DynamicDetError(f"{path.name}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise DynamicDetError(f"{path.name}: expected a mapping with keys {', '.join(_DATA_KEYS)}")
    from dynamicdet_cli.data.yolo import is_yolo_yaml, yolo_data_config  # yolo.py builds on this module
    if is_yolo_yaml(raw):
        return yolo_data_config(path, raw)
    if "images" in raw and "annotations" in raw:
        raise DynamicDetError(f"{path.name}: this is a COCO annotation file, and --data takes a data YAML naming "
                              "one (train_ann, train_images, val_ann, val_images); give it as --train-ann or "
                              "--val-ann with its image folder, or write a data YAML")
    for key in raw:
        if key not in _DATA_KEYS:
            close = difflib.get_close_matches(str(key), _DATA_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(_DATA_KEYS)}"
            raise DynamicDetError(f"{path.name}: unknown key '{key}'{hint}")
    for key in ("train_ann", "train_images"):
        if raw.get(key) is None:
            raise DynamicDetError(f"{path.name}: missing key '{key}'")
    for split in ("val", "router"):
        if (raw.get(f"{split}_ann") is None) != (raw.get(f"{split}_images") is None):
            raise DynamicDetError(f"{path.name}: give both {split}_ann and {split}_images, or neither")
    resolved = {}
    for key in _DATA_KEYS:
        if raw.get(key) is None:
            continue
        if not isinstance(raw[key], str):
            raise DynamicDetError(f"{path.name}: '{key}' must be a path string")
        p = Path(raw[key]).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not p.exists():
            raise DynamicDetError(f"{path.name}: {key} points to {p}, which does not exist")
        resolved[key] = p
    return DataConfig(**resolved)
