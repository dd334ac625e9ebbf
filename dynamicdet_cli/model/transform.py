"""The resize/normalise/batch transform: torchvision's GeneralizedRCNNTransform, with every
resized side kept at one pixel at least.

torchvision scales an image so that its short side reaches min_size without its long side
passing max_size, and floors the result; for an image as thin as 10000x10 the short side then
floors to 0 pixels and interpolate fails. Such images are legal, so here each side is at least
1 pixel (the batch is then padded to a multiple of 32, the stride the backbones need, as for any
image). For every other image the sizes, and the random draw of a training size, are exactly
torchvision's. The method stays scriptable (TorchScript export scripts the transform).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torchvision
from torch import Tensor
from torchvision.models.detection.transform import (GeneralizedRCNNTransform, _resize_image_and_masks,
                                                    resize_boxes, resize_keypoints)


class Transform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform whose resize never gives a side of 0 pixels."""

    def resize(self, image: Tensor,
               target: Optional[Dict[str, Tensor]] = None) -> Tuple[Tensor, Optional[Dict[str, Tensor]]]:
        h, w = image.shape[-2:]
        if self.training:
            if self._skip_resize:
                return image, target
            size = self.torch_choice(self.min_size)
        else:
            size = self.min_size[-1]
        if torchvision._is_tracing() or self.fixed_size is not None:
            image, target = _resize_image_and_masks(image, size, self.max_size, target, self.fixed_size)
        else:
            scale = min(float(size) / float(min(h, w)), float(self.max_size) / float(max(h, w)))
            out = [max(1, int(math.floor(h * scale))), max(1, int(math.floor(w * scale)))]  # torchvision floors too
            image = torch.nn.functional.interpolate(image[None], size=out, mode="bilinear", align_corners=False)[0]
            if target is not None and "masks" in target:
                masks = torch.nn.functional.interpolate(target["masks"][:, None].float(), size=out)
                target["masks"] = masks[:, 0].byte()  # N,H,W
        if target is None:
            return image, target
        target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        if "keypoints" in target:
            target["keypoints"] = resize_keypoints(target["keypoints"], (h, w), image.shape[-2:])
        return image, target


def inference_sides(transform: GeneralizedRCNNTransform) -> Tuple[int, int]:
    """(short, long): the sides `transform` gives an image at inference (its last min_size, and
    max_size); what inference reads a larger image down to (data/transforms.py fit_image)."""
    return int(transform.min_size[-1]), int(transform.max_size)
