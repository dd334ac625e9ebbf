"""The images `calibrate` times the two routes on: real ones unless random ones are asked for.

A route's time depends on the image, not only on its size: the proposals the RPN keeps, the
boxes NMS sees and the detections per image all follow the content, and the input size
follows the aspect ratio. Random noise of the recipe's size made the easy route look slower
than on real images (docs/benchmarks.md#calibration-accuracy). So by default the routes are
timed on the validation images
whose router scores the checkpoint stores (the very images tau is chosen on), or on a folder
of the user's images; random images only when asked for, or when the validation images are
gone (with a warning that says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from dynamicdet_cli.checkpoint.types import Checkpoint
from dynamicdet_cli.core.errors import DynamicDetError


@dataclass
class TimingImages:
    """images: each 3,H,W float32 in [0, 1], read as predict reads an image (one larger than
    the model's input scaled down to it first, data/transforms.py fit_image), a multiple of the
    batch size in number; sizes: each image's own size (height, width) as decoded, the frame
    the model's output is given in (None: the images' sizes); source: what they are, shown and
    stored with the measurement; warning: why the default (the validation images) could not be
    used."""

    images: list[Tensor]
    source: str
    warning: str | None = None
    sizes: list[tuple[int, int]] | None = None


def timing_images(ckpt: Checkpoint, batch_size: int, limit: int = 128, folder: Path | None = None,
                  random: bool = False, side: int | None = None) -> TimingImages:
    """The images to time: `folder`'s, random ones of `side` px (default: the recipe's input
    size) if `random`, else the checkpoint's validation images (random ones, with a warning,
    when they cannot be found). At most `limit` images, spread evenly over the set."""
    if folder is not None and random:
        raise DynamicDetError("give --images DIR or --random-images, not both")
    if side is not None and not random:
        raise DynamicDetError("--image-size sets the side of random images: give it with --random-images")
    side = side or int(ckpt.recipe.model.transform.min_size[-1])
    if random:
        return random_images(_count(limit, limit, batch_size), side)
    if folder is not None:
        return folder_images(folder, batch_size, limit, ckpt.recipe.model.transform.inference_input())
    try:
        return validation_images(ckpt, batch_size, limit)
    except DynamicDetError as err:
        fallback = random_images(_count(limit, limit, batch_size), side)
        fallback.warning = (f"timing random {side} px images instead of real ones: {err}. Give --images DIR "
                            "to time your own images (random ones make the easy route look slower than it "
                            "is), or --random-images to choose random ones")
        return fallback


def validation_images(ckpt: Checkpoint, batch_size: int, limit: int = 128) -> TimingImages:
    """The validation images whose router scores the checkpoint stores, in their stored order."""
    from dynamicdet_cli.data.coco import CocoDataset
    from dynamicdet_cli.data.transforms import build_transforms

    val = ckpt.validation
    ann, folder = (val.dataset, val.images) if val is not None else (None, None)
    if not ann or not folder:
        raise DynamicDetError("the checkpoint does not record where its validation images are (train-router "
                              "of an older dynamicdet; rerun it to record them)")
    if not Path(ann).exists() or not Path(folder).is_dir():
        missing = ann if not Path(ann).exists() else folder
        raise DynamicDetError(f"the validation images recorded in the checkpoint are gone ({missing} not found)")
    if Path(ann).is_dir():  # YOLO-format data: the recorded "dataset" is the split's label folder
        from dynamicdet_cli.data.yolo import YoloLabels
        ann = YoloLabels(images=Path(folder), labels=Path(ann), names=ckpt.classes)
    dataset = CocoDataset(ann, folder, transforms=build_transforms(False))
    position = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    ids = [i for i in val.image_ids if i in position]
    if len(ids) < len(val.image_ids):
        raise DynamicDetError(f"{ann} no longer holds the validation images whose scores the checkpoint stores")
    chosen = _spread(ids, _count(len(ids), limit, batch_size))
    fitted = dataset.fit_to(*ckpt.recipe.model.transform.inference_input())
    images = [fitted[position[i]][0].as_subclass(torch.Tensor) for i in chosen]
    sizes = [dataset.file_size(i) for i in chosen]
    return TimingImages(images, f"{len(images)} validation images ({folder})", sizes=sizes)


def folder_images(folder: Path, batch_size: int, limit: int = 128,
                  fit: tuple[int, int] | None = None) -> TimingImages:
    """Up to `limit` of the images in `folder` (files that are not images are left out), each
    larger than `fit` (the model's inference_input) scaled down to it, as predict reads it."""
    from dynamicdet_cli.data.coco import BadImage, load_rgb
    from dynamicdet_cli.data.images import list_images
    from dynamicdet_cli.data.transforms import fit_image

    if not Path(folder).is_dir():
        raise DynamicDetError(f"--images {folder}: not a folder")
    paths = list_images([str(folder)])
    decoded = []
    for path in _spread(paths, min(len(paths), limit)):
        try:
            image = load_rgb(path)
        except BadImage:
            continue  # not an image: predict would skip it too
        size = tuple(image.shape[-2:])
        if fit is not None:
            image = fit_image(image, *fit)
        decoded.append((F.to_dtype(image, torch.float32, scale=True), size))  # 3,H,W in [0, 1]
    if not decoded:
        raise DynamicDetError(f"--images {folder}: no readable images in it")
    chosen = _spread(decoded, _count(len(decoded), limit, batch_size))
    return TimingImages([image for image, _ in chosen], f"{len(chosen)} image{'s' * (len(chosen) != 1)} of {folder}",
                        sizes=[size for _, size in chosen])


def random_images(n: int, side: int, seed: int = 0) -> TimingImages:
    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, side, side, generator=gen) for _ in range(n)]  # each 3,side,side
    return TimingImages(images, f"{n} random {side} px images")


def _count(available: int, limit: int, batch_size: int) -> int:
    """How many images to time: at most `limit` and what there is, in whole batches (at
    least one: a set smaller than a batch is cycled to fill it)."""
    return max(batch_size, min(available, limit) // batch_size * batch_size)


def _spread(items: list, n: int) -> list:
    """n of `items` spread evenly over them (cycling when n exceeds their number)."""
    if n >= len(items):
        return [items[i % len(items)] for i in range(n)]
    return [items[i * len(items) // n] for i in range(n)]
