"""Opening the data a command or an API call names: which files, then the datasets.

`resolve_data` turns the ways a user names data (a data YAML, or annotation and image paths
given one by one) into one DataConfig; `open_dataset` opens one split as a CocoDataset with
the recipe's augmentation (training) or none (evaluation), with instance masks when the
detector family needs them, and refuses a split nothing can be learned or measured from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dynamicdet_cli.core.errors import DynamicDetError, warn
from dynamicdet_cli.data.coco import CocoDataset
from dynamicdet_cli.data.config import DataConfig, load_data_config
from dynamicdet_cli.data.transforms import build_transforms


def resolve_data(data: Path | None = None, train_ann: Path | None = None, train_images: Path | None = None,
                 val_ann: Path | None = None, val_images: Path | None = None, *, need_train: bool = True) -> DataConfig:
    """A data YAML (`data`), or the splits' paths: exactly one of the two ways."""
    if data is not None:
        if train_ann or train_images or val_ann or val_images:
            raise DynamicDetError("give either --data or --train-ann/--train-images/--val-ann/--val-images, not both")
        return load_data_config(data)
    if (val_ann is None) != (val_images is None):
        raise DynamicDetError("give both --val-ann and --val-images, or neither")
    if need_train and not (train_ann and train_images):
        raise DynamicDetError("no data: give --data data.yaml, or --train-ann and --train-images")
    if not need_train and not (val_ann and val_images):
        raise DynamicDetError("no data: give --data data.yaml, or --val-ann and --val-images")
    return DataConfig(train_ann, train_images, val_ann, val_images)


def open_dataset(ann, images, train: bool, augment=None, skip_bad: bool = False,
                 masks: bool = False) -> CocoDataset:
    """One split. `augment`: the recipe's AugmentConfig (training only); `masks`: load instance
    masks (model.build.needs_masks of the family). Unreadable images are an error unless
    `skip_bad`, then counted in a warning; degenerate or clipped boxes are reported."""
    tf = build_transforms(True, augment.hflip, augment.photometric, augment.zoom_out) if train else build_transforms(False)
    ds = CocoDataset(ann, images, transforms=tf, skip_bad_images=skip_bad, masks=masks)
    skipped = f"skipped {len(ds.skipped)} unreadable image(s) of {ann}, e.g. {ds.skipped[0][0]}: {ds.skipped[0][1]}" \
        if ds.skipped else ""
    if not ds.image_ids:  # the error says it all: no warning line before it
        raise DynamicDetError(f"{ann}: no usable images" + (f" ({skipped})" if skipped else ""))
    if train and ds.n_boxes == 0:
        raise DynamicDetError(f"{ann}: no usable box to train on ({ds.box_report()})")
    if skipped:
        warn(skipped)
    if ds.n_degenerate or ds.n_clipped:
        warn(ds.box_report())
    return ds


@dataclass(frozen=True)
class Splits:
    """The opened splits of a DataConfig: val and router are None when it names none."""

    train: CocoDataset
    val: CocoDataset | None
    router: CocoDataset | None


def open_splits(dc: DataConfig, masks: bool, augment=None, skip_bad: bool = False) -> Splits:
    """Every split `dc` names, with instance masks if `masks` (model.build.needs_masks of the
    family). With `augment` (the recipe's AugmentConfig) the training split is augmented, as
    train-detectors reads it; without, every split is read as the model sees it at test time
    (train-router)."""
    train = open_dataset(dc.train_ann, dc.train_images, augment is not None, augment, skip_bad, masks)
    val = open_dataset(dc.val_ann, dc.val_images, False, None, skip_bad, masks) if dc.has_val else None
    router = open_dataset(dc.router_ann, dc.router_images, False, None, skip_bad, masks) if dc.has_router else None
    return Splits(train, val, router)
