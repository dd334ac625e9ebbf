"""Mosaic augmentation: four training images in the quadrants around a random centre.

    canvas   the longest side S of the four images, square, mid-gray
    centre   (cx, cy) uniform in [S/4, 3S/4]
    image k  resized so its longer side is S/2, its corner at the centre: image 0 above-left,
             1 above-right, 2 below-left, 3 below-right; what falls outside its quadrant is cut

An image then holds the objects of four, at half their size, next to other contexts (YOLOv4's
mosaic). Boxes (and instance masks) move with their pixels; boxes cut to under a pixel are
dropped with their labels. The randomness is torch's global generator, which train.py seeds
per epoch, so a resumed epoch draws the same mosaics.

Each of the four is read as its file holds it, scaled to its quarter (side S/2) while still
uint8, and only then converted and augmented (flip, photometric distortion, ...), so the
augmentations work on a quarter of the pixels: the hue change's colour conversions took most of
a mosaic's time when they ran on the full images (figures: docs/benchmarks.md, Data loading).
S is the longest side of the four
as the dataset reads them (CocoDataset.fit_to: at most the model's input size).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from dynamicdet_cli.data.transforms import resize_sample

_FILL = 0.5  # mid-gray, as the zoom-out's canvas


class Mosaic(Dataset):
    """`dataset`'s samples, each replaced with probability `prob` by a mosaic of it and three
    other samples drawn at random. `dataset` is a CocoDataset (or anything with its `load`,
    `fitted_size` and `transforms`); a sample is (image 3,H,W float in [0, 1], target dict with
    boxes XYXY, labels and optionally masks), as CocoDataset returns them after its transforms."""

    def __init__(self, dataset: Dataset, prob: float):
        self.dataset = dataset
        self.prob = prob

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if float(torch.rand(())) >= self.prob:
            return self.dataset[index]
        picked = [index, *(int(i) for i in torch.randint(len(self.dataset), (3,)))]
        loaded = [self.dataset.load(i) for i in picked]
        if any(s is None for s in loaded):  # an unreadable image under --skip-bad-images
            return self.dataset[index] if loaded[0] is not None else None
        side = max(max(self.dataset.fitted_size(*image.shape[-2:])) for image, _ in loaded)
        quarters = [self._quarter(image, target, side) for image, target in loaded]
        centre = (torch.rand(2) * 0.5 + 0.25).tolist()
        return mosaic(quarters, centre, side)

    def _quarter(self, image, target, side: int):
        """One of the four: its longer side scaled to side / 2 (smoothly: a large reduction),
        then converted to float and given the dataset's augmentations."""
        h, w = image.shape[-2:]
        scale = side / 2 / max(h, w)
        image, target = resize_sample(image, target, (max(1, round(h * scale)), max(1, round(w * scale))),
                                      antialias=True)
        image = tv_tensors.Image(F.to_dtype(image, torch.float32, scale=True))
        transforms = getattr(self.dataset, "transforms", None)
        return transforms(image, target) if transforms is not None else (image, target)


def mosaic(samples: list[tuple[torch.Tensor, dict[str, Any]]], centre: tuple[float, float],
           side: int | None = None):
    """Four (image, target) samples as one (see the module docstring); centre as fractions of S.
    `side` is S (default: the longest side of the four); each image is scaled to S/2 (at once if
    it is that size already, as Mosaic gives them)."""
    image0 = samples[0][0]
    side = side or max(max(image.shape[-2:]) for image, _ in samples)
    cx, cy = int(centre[0] * side), int(centre[1] * side)
    canvas = torch.full((3, side, side), _FILL, dtype=image0.dtype)
    has_masks = all("masks" in t for _, t in samples)
    boxes, labels, masks = [], [], []
    for k, (image, target) in enumerate(samples):
        h, w = image.shape[-2:]
        scale = side / 2 / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            image = F.resize(image, [nh, nw], antialias=True)
        # the quadrant [qx0, qx1) x [qy0, qy1), and where the image's origin lands on the canvas
        right, below = k in (1, 3), k in (2, 3)
        qx0, qx1 = (cx, side) if right else (0, cx)
        qy0, qy1 = (cy, side) if below else (0, cy)
        ox = cx if right else cx - nw
        oy = cy if below else cy - nh
        x0, x1 = max(qx0, ox), min(qx1, ox + nw)
        y0, y1 = max(qy0, oy), min(qy1, oy + nh)
        if x1 <= x0 or y1 <= y0:
            continue
        canvas[:, y0:y1, x0:x1] = image[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        b = target["boxes"].as_subclass(torch.Tensor).float() * torch.tensor([nw / w, nh / h, nw / w, nh / h])
        b = b + torch.tensor([ox, oy, ox, oy], dtype=b.dtype)
        b = torch.stack([b[:, 0].clamp(x0, x1), b[:, 1].clamp(y0, y1), b[:, 2].clamp(x0, x1), b[:, 3].clamp(y0, y1)], 1)
        keep = ((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)
        boxes.append(b[keep])
        labels.append(target["labels"][keep])
        if has_masks:
            m = F.resize(target["masks"].as_subclass(torch.Tensor)[keep], [nh, nw],
                         interpolation=F.InterpolationMode.NEAREST)
            placed = torch.zeros((m.shape[0], side, side), dtype=m.dtype)
            placed[:, y0:y1, x0:x1] = m[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
            masks.append(placed)
    out = dict(samples[0][1])
    out["boxes"] = tv_tensors.BoundingBoxes(torch.cat(boxes) if boxes else torch.zeros(0, 4), format="XYXY",
                                            canvas_size=(side, side))
    out["labels"] = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    if has_masks:
        out["masks"] = tv_tensors.Mask(torch.cat(masks) if masks else torch.zeros(0, side, side, dtype=torch.uint8))
    return tv_tensors.Image(canvas), out
