"""The training loader reads images no larger than the model's input (CocoDataset.fit_to), and a
mosaic scales its four images to their quarters before augmenting them (data/mosaic.py): what
the model trains on must stay what it was, only cheaper to make."""

import pytest
import torch

from dynamicdet_cli.data import build_transforms
from dynamicdet_cli.data.mosaic import Mosaic
from dynamicdet_cli.model.transform import Transform
from helpers import PHOTO_COLOURS, coco_photos

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def test_an_image_larger_than_the_model_input_is_read_at_that_size(tmp_path):
    """A 320x240 photo under a model input of short 120 / long 160 is read at 160x120, boxes
    scaled with it, and the model's transform then makes of it what it makes of the full photo
    (the same interpolation: within one uint8 step), so training sees the same input."""
    data = coco_photos(tmp_path, [(320, 240)])
    image, target = data[0]
    fitted = data.fit_to(120, 160)
    small, small_target = fitted[0]
    assert tuple(image.shape) == (3, 240, 320) and tuple(small.shape) == (3, 120, 160)
    assert torch.allclose(small_target["boxes"], target["boxes"] / 2)
    assert small_target["boxes"].canvas_size == (120, 160)
    transform = Transform(min_size=120, max_size=160, image_mean=[0.0] * 3, image_std=[1.0] * 3)
    transform.train()
    whole, whole_targets = transform([image], [dict(target)])
    read, read_targets = transform([small], [dict(small_target)])
    assert whole.tensors.shape == read.tensors.shape
    assert (whole.tensors - read.tensors).abs().max() <= 1 / 255 + 1e-6
    assert torch.allclose(whole_targets[0]["boxes"], read_targets[0]["boxes"])


def test_smaller_images_are_read_as_they_are(tmp_path):
    data = coco_photos(tmp_path, [(64, 48)])
    fitted = data.fit_to(800, 1333)
    assert torch.equal(data[0][0], fitted[0][0])
    assert torch.equal(data[0][1]["boxes"], fitted[0][1]["boxes"])
    assert data.fit is None and fitted.fit == (800, 1333)  # a copy: the original reads as before


def test_masks_are_read_at_the_image_size(tmp_path):
    data = coco_photos(tmp_path, [(96, 64)], masks=True).fit_to(32, 48)
    image, target = data[0]
    assert tuple(image.shape[-2:]) == (32, 48) and tuple(target["masks"].shape) == (1, 32, 48)
    x1, y1, x2, y2 = target["boxes"][0].round().int().tolist()
    assert target["masks"][0, y1:y2, x1:x2].float().mean() > 0.8  # the mask still fills its box (within a row)
    assert target["masks"].sum() <= (x2 - x1 + 1) * (y2 - y1 + 1)


def test_a_mosaic_of_large_photos_is_made_at_the_model_input_size(tmp_path):
    """Four photos of different sizes, each larger than the model's input: the mosaic is the input
    size (the longest fitted side), and every box it keeps frames its own rectangle's colour."""
    data = coco_photos(tmp_path, [(400, 300), (300, 400), (360, 360), (480, 240)]).fit_to(96, 96)
    data.transforms = build_transforms(True, hflip=0.5, photometric=0.0)
    mosaics = Mosaic(data, prob=1.0)
    torch.manual_seed(0)
    seen = 0
    for index in range(len(data)):
        for _ in range(3):
            image, target = mosaics[index]
            assert tuple(image.shape) == (3, 96, 96) and image.dtype == torch.float32
            assert (target["boxes"][:, 2:] <= 96).all() and (target["boxes"][:, :2] >= 0).all()
            for box in target["boxes"]:
                x1, y1, x2, y2 = box.round().int().tolist()
                if (x2 - x1) < 4 or (y2 - y1) < 4:
                    continue  # cut to a sliver by its quadrant
                inside = image[:, y1 + 1:y2 - 1, x1 + 1:x2 - 1].reshape(3, -1).mean(1) * 255
                assert min(((inside - torch.tensor(c, dtype=torch.float32)).abs().max()) for c in PHOTO_COLOURS) < 12
                seen += 1
    assert seen >= 6


def test_a_mosaic_draws_the_same_for_the_same_seed(tmp_path):
    """Resume replays an epoch from its seed: the mosaic draws only from torch's generator."""
    data = coco_photos(tmp_path, [(80, 60)] * 4).fit_to(32, 48)
    data.transforms = build_transforms(True, hflip=0.5, photometric=1.0)
    mosaics = Mosaic(data, prob=0.7)
    torch.manual_seed(3)
    first = [mosaics[i] for i in range(4)]
    torch.manual_seed(3)
    again = [mosaics[i] for i in range(4)]
    for (a, ta), (b, tb) in zip(first, again):
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
