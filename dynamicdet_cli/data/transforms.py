"""Training and evaluation transforms on (image, target) pairs, built on transforms.v2.

Input and output follow the dataset's contract: image a tv_tensors.Image [3, H, W]
(uint8 or float), target dict(boxes=BoundingBoxes XYXY, labels=int64 [N], image_id=int).
The output image is always float32 in [0, 1]; boxes move with the image, boxes that become
degenerate are removed together with their labels, and non-tensor entries (image_id) pass
through untouched.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dynamicdet_cli.core.errors import DynamicDetError

Transform = Callable[[tv_tensors.Image, dict[str, Any]], tuple[tv_tensors.Image, dict[str, Any]]]

# Mid-gray keeps the padded border close to the data mean, so zoom-out adds no strong edges.
_ZOOM_FILL = {tv_tensors.Image: 0.5, "others": 0}


def build_transforms(
    train: bool, hflip: float = 0.5, photometric: float = 0.5, zoom_out: float = 0.0
) -> Transform:
    """Return `f(image, target) -> (image, target)`.

    train=True: horizontal flip (prob `hflip`), photometric distortion (prob `photometric`),
    zoom-out onto a gray canvas up to 2x the side (prob `zoom_out`), then box sanitizing.
    train=False: only the conversion to float32 in [0, 1].
    """
    for name, p in (("hflip", hflip), ("photometric", photometric), ("zoom_out", zoom_out)):
        if not 0.0 <= p <= 1.0:
            raise DynamicDetError(f"augmentation probability {name}={p} must be in [0, 1]")
    # Float first, so the photometric ops and the zoom fill work in the [0, 1] range.
    steps: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True)]
    if train:
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(p=hflip))
        if photometric > 0:
            steps.append(v2.RandomPhotometricDistort(p=photometric))
        if zoom_out > 0:
            steps.append(v2.RandomZoomOut(fill=_ZOOM_FILL, side_range=(1.0, 2.0), p=zoom_out))
        steps.append(v2.SanitizeBoundingBoxes(labels_getter=_labels))
    return v2.Compose(steps)


def _labels(inputs: Any) -> torch.Tensor:
    # inputs is the (image, target) tuple passed to Compose; naming the key avoids
    # SanitizeBoundingBoxes' heuristic search for a "labels"-like entry.
    return inputs[1]["labels"]


def model_scale(height: int, width: int, short: int, long: int) -> float:
    """The factor by which the model's transform (model/transform.py) scales an image of this
    size to (`short`, `long`): the short side to `short` unless the long side would pass `long`
    (training at its largest: max(min_size), max_size; inference: min_size[-1], max_size)."""
    return min(short / min(height, width), long / max(height, width))


def fitted_size(height: int, width: int, short: int, long: int) -> tuple[int, int]:
    """The size an image of (height, width) is read at to go no larger than the model's resize
    to (`short`, `long`) makes it: as it is when that resize does not shrink it, else the
    resize's own size (its floor of the sides, at least one pixel each, as model/transform.py)."""
    scale = model_scale(height, width, short, long)
    if scale >= 1.0:
        return height, width
    return max(1, int(math.floor(height * scale))), max(1, int(math.floor(width * scale)))


def fit_image(image: torch.Tensor, short: int, long: int) -> torch.Tensor:
    """A decoded image (3,H,W, uint8 or uint16) scaled down, as decoded, to the size the model's
    resize to (`short`, `long`) would give it, with the model's own interpolation (bilinear, no
    antialias): what the model makes of it is then what it makes of the whole image, within one
    uint8 step, without a float copy of the whole image. Smaller images come back as they are.
    Inference reads large photos this way (predict, evaluate, calibrate), and hands the model
    the file's size for its output (model.detect's original_sizes), so boxes and masks come
    back in the file's pixels."""
    size = fitted_size(*image.shape[-2:], short, long)
    if tuple(image.shape[-2:]) == size:
        return image
    return _resize_pixels(image, size, antialias=False)


def _resize_pixels(image: torch.Tensor, size: tuple[int, int], antialias: bool) -> torch.Tensor:
    """Bilinear resize of a 3,H,W image; uint8 stays uint8, uint16 becomes float32 in [0, 1]."""
    if image.dtype not in (torch.uint8, torch.float32):  # 16-bit PNG: torch resizes uint8 and float
        image = F.to_dtype(image, torch.float32, scale=True)
    return torch.nn.functional.interpolate(image.as_subclass(torch.Tensor)[None], size=list(size),
                                           mode="bilinear", align_corners=False, antialias=antialias)[0]


def resize_sample(image: torch.Tensor, target: dict[str, Any], size: tuple[int, int],
                  antialias: bool) -> tuple[tv_tensors.Image, dict[str, Any]]:
    """(image, target) resized to `size` (height, width): the image bilinearly (uint8 stays uint8,
    so a large photo is never held as float32 at full size), boxes scaled with it, instance masks
    by nearest neighbour. `antialias=False` is the model's own interpolation (what it would have
    done to the image), True smooths a large reduction (mosaic's quarters). Other entries are
    kept."""
    height, width = size
    if tuple(image.shape[-2:]) == (height, width):
        return image, target
    out = tv_tensors.Image(_resize_pixels(image, size, antialias))
    target = dict(target)
    target["boxes"] = F.resize(target["boxes"], [height, width])
    if "masks" in target:
        target["masks"] = F.resize(target["masks"], [height, width])  # a Mask: nearest neighbour
    return out, target
