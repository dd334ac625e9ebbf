"""timing_images: calibrate times the stored validation images by default, a folder with
--images, random images only with --random-images (or, with a warning, when the validation
images are gone)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torchvision.io import decode_image
from torchvision.transforms.v2 import functional as F

from dynamicdet_cli.checkpoint.types import Checkpoint, ValidationScores
from dynamicdet_cli.config.recipe import Recipe, with_overrides
from dynamicdet_cli.data.shapes import make_shapes
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.speed.timing_images import timing_images

N_VAL = 5


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapes")
    make_shapes(folder, n_train=1, n_val=N_VAL, size=48, seed=0)
    return folder


def ckpt_for(folder: Path, image_ids: list[int] | None = None, images: str | None = "val") -> Checkpoint:
    """A checkpoint as train-router leaves it: scores of `image_ids` (default: all, in file order)."""
    import json
    ids = image_ids or [im["id"] for im in json.loads((folder / "val.json").read_text())["images"]]
    validation = ValidationScores(tuple(ids), torch.rand(len(ids)), str(folder / "val.json"),
                                  None if images is None else str(folder / images))
    recipe = with_overrides(Recipe(), ["model.transform.min_size=[64]", "model.transform.max_size=64"])
    return Checkpoint(recipe, ("a",), (1,), {}, validation=validation)


def decoded(folder: Path) -> dict[int, torch.Tensor]:
    """image id -> the validation image as the model gets it (3,H,W float in [0, 1])."""
    import json
    coco = json.loads((folder / "val.json").read_text())
    return {im["id"]: F.to_dtype(decode_image(str(folder / "val" / im["file_name"])), torch.float32, scale=True)
            for im in coco["images"]}


def test_the_stored_validation_images_are_timed_in_their_stored_order(shapes):
    truth = decoded(shapes)
    ids = list(truth)[::-1]  # stored in another order than the annotation file's
    chosen = timing_images(ckpt_for(shapes, ids), batch_size=1)
    assert chosen.warning is None
    assert chosen.source == f"{N_VAL} validation images ({shapes / 'val'})"
    assert len(chosen.images) == N_VAL
    for image, image_id in zip(chosen.images, ids):
        assert torch.equal(image, truth[image_id])


def test_whole_batches_spread_over_the_set_or_cycled_to_fill_one(shapes):
    truth = decoded(shapes)
    ids = list(truth)
    chosen = timing_images(ckpt_for(shapes), batch_size=2)  # 5 images: 2 whole batches
    assert [next(i for i in ids if torch.equal(truth[i], im)) for im in chosen.images] == [ids[0], ids[1], ids[2], ids[3]]
    chosen = timing_images(ckpt_for(shapes), batch_size=1, limit=2)  # spread: the 1st and the 3rd
    assert [next(i for i in ids if torch.equal(truth[i], im)) for im in chosen.images] == [ids[0], ids[2]]
    chosen = timing_images(ckpt_for(shapes), batch_size=8)  # fewer than a batch: cycled
    assert len(chosen.images) == 8 and torch.equal(chosen.images[5], chosen.images[0])


@pytest.mark.parametrize("damage, reason", [
    ("no folder recorded", "does not record where its validation images are"),
    ("folder gone", "are gone"),
])
def test_without_the_validation_images_random_ones_are_timed_with_a_warning(shapes, tmp_path, damage, reason):
    if damage == "folder gone":
        copy = tmp_path / "copy"
        shutil.copytree(shapes, copy)
        ckpt = ckpt_for(copy)
        shutil.rmtree(copy / "val")
    else:
        ckpt = ckpt_for(shapes, images=None)  # written by an older train-router
    chosen = timing_images(ckpt, batch_size=2, limit=4)
    assert chosen.source == "4 random 64 px images"
    assert reason in chosen.warning and "--images DIR" in chosen.warning and "--random-images" in chosen.warning
    assert all(im.shape == (3, 64, 64) for im in chosen.images)


def test_random_images_only_when_asked(shapes):
    chosen = timing_images(ckpt_for(shapes), batch_size=1, limit=3, random=True, side=32)
    assert chosen.source == "3 random 32 px images" and chosen.warning is None
    assert chosen.images[0].shape == (3, 32, 32)


def test_a_folder_of_images(shapes, tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(shapes / "val", folder)
    (folder / "notes.txt").write_text("not an image\n")
    chosen = timing_images(ckpt_for(shapes), batch_size=1, folder=folder)
    assert chosen.source == f"{N_VAL} images of {folder}" and len(chosen.images) == N_VAL


@pytest.mark.parametrize("options, message", [
    ({"folder": Path("x"), "random": True}, "not both"),
    ({"side": 32}, "--image-size sets the side of random images"),
    ({"folder": Path("/nonexistent/folder")}, "not a folder"),
])
def test_image_option_errors(shapes, options, message):
    with pytest.raises(DynamicDetError, match=message):
        timing_images(ckpt_for(shapes), batch_size=1, **options)
