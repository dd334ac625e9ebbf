"""Shared fixtures: a tiny recipe, a tiny model built from it, small random images, and a
tiny shapes dataset with an (untrained) checkpoint for router training.

The tiny recipe is recipes/shapes-tiny.yaml (ResNet-10, FPN 64) at 64 px, so one forward pass
of both routes takes a few tens of milliseconds on a 2-core CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dynamicdet_cli.model.build import build_model
from dynamicdet_cli.config.recipe import Recipe, load_recipe, with_overrides

# Every command's --device defaults to auto, a GPU where there is one: on a GPU machine the suite
# would move its CPU tests (bit-exact comparisons, thread counts) there. Tests that want CUDA
# name it (tests/test_cuda.py); subprocesses inherit this.
os.environ.setdefault("DYNAMICDET_DEVICE", "cpu")

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
TINY_SIZE = 64  # image side of the tiny recipe, pixels
TINY_OVERRIDES = [f"model.transform.min_size={TINY_SIZE}", f"model.transform.max_size={TINY_SIZE}"]


@pytest.fixture
def one_thread():
    """Run the test on one CPU thread. Tiny convolutions gain nothing from threads, and when the
    2 cores are shared with another process, spinning OpenMP threads make a 64 px forward pass
    ~50x slower. Restored afterwards: other tests' numbers may depend on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_recipe() -> Recipe:
    """recipes/shapes-tiny.yaml resized to 64 px (5 classes)."""
    return with_overrides(load_recipe(RECIPES / "shapes-tiny.yaml"), TINY_OVERRIDES)


@pytest.fixture
def make_model(tiny_recipe, one_thread):
    """make_model(*overrides, seed=0) -> a fresh DynamicDetector in eval mode, the same weights
    for the same overrides and seed."""
    def make(*overrides: str, seed: int = 0):
        recipe = with_overrides(tiny_recipe, list(overrides))
        torch.manual_seed(seed)
        return build_model(recipe.model).eval()
    return make


@pytest.fixture
def tiny_model(make_model):
    """The tiny recipe's model, seed 0, eval mode."""
    return make_model()


def _random_images(n: int, size: int = TINY_SIZE, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g) for _ in range(n)]  # each 3,H,W in [0, 1]


@pytest.fixture
def make_images():
    """make_images(n, size=64, seed=0) -> n random square images, 3,size,size in [0, 1]."""
    return _random_images


@pytest.fixture
def images() -> list[torch.Tensor]:
    """Four random 64x64 images in [0, 1] (the same every time)."""
    return _random_images(4)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """12 training and 8 validation shapes images of 64 px, opened without augmentation."""
    from dynamicdet_cli.data.coco import CocoDataset
    from dynamicdet_cli.data.config import load_data_config
    from dynamicdet_cli.data.shapes import make_shapes
    from dynamicdet_cli.data.transforms import build_transforms
    cfg = load_data_config(make_shapes(tmp_path_factory.mktemp("shapes"), n_train=12, n_val=8, size=64, seed=0))
    plain = build_transforms(False)
    return (CocoDataset(cfg.train_ann, cfg.train_images, plain), CocoDataset(cfg.val_ann, cfg.val_images, plain))


@pytest.fixture(scope="session")
def trained_ckpt(shapes, tiny_recipe):
    """A tiny model's checkpoint marked as having trained detectors (the weights are fresh)."""
    from dataclasses import replace

    from dynamicdet_cli.checkpoint.store import new_checkpoint
    from dynamicdet_cli.checkpoint.types import TrainingRecord
    train_set, _ = shapes
    torch.manual_seed(0)
    model = build_model(tiny_recipe.model, num_classes=train_set.num_classes)
    ckpt = new_checkpoint(tiny_recipe, train_set.classes, train_set.cat_ids, model)
    return replace(ckpt, training=TrainingRecord(epochs=1, steps=0, run=""))
