"""router/training.py: the whole train-router step on a tiny model (detector weights untouched,
targets from the training images, a held-out share or a router split)."""

from __future__ import annotations

from dataclasses import replace


import pytest
import torch

from dynamicdet_cli.checkpoint.types import LatencyRecord, OperatingPoint, TrainingRecord

from dynamicdet_cli.checkpoint.store import model_from_checkpoint
from dynamicdet_cli.data.coco import CocoDataset
from dynamicdet_cli.data.config import load_data_config
from dynamicdet_cli.data.shapes import make_shapes
from dynamicdet_cli.data.transforms import build_transforms
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.config.recipe import RouterTrainConfig
from dynamicdet_cli.router.cache import score_dataset
from dynamicdet_cli.router.summary import summary_table
from dynamicdet_cli.router import training
from dynamicdet_cli.router.training import train_router_checkpoint

FAST = RouterTrainConfig(epochs=3, lr=1e-3, weight_decay=1e-4, batch_size=4, views=1, loss_draws=1, seed=0)


# ----------------------------------------------------------------------------- the whole step

def test_train_router_checkpoint_keeps_detector_bit_for_bit(shapes, trained_ckpt):
    train_set, val_set = shapes
    before = {k: v.clone() for k, v in trained_ckpt.detector.items()}
    latency = (LatencyRecord("cpu", 8, 64, 2, easy_ms=1.0, hard_ms=2.0),)
    calibrated = replace(trained_ckpt, latency=latency, operating_points={"old": OperatingPoint(0.5, 0.5)})
    new, summary = train_router_checkpoint(calibrated, train_set, val_set, FAST, "cpu", show_progress=False,
                                           random_draws=2)
    assert new.detector.keys() == before.keys()
    assert all(torch.equal(new.detector[k], before[k]) for k in before)
    assert all(torch.equal(trained_ckpt.detector[k], before[k]) for k in before)  # input untouched
    assert trained_ckpt.router is None and new.router is not None

    val = new.validation
    assert list(val.image_ids) == val_set.image_ids and val.dataset == str(val_set.ann_file.resolve())
    assert val.images == str(val_set.image_dir.resolve())  # calibrate times these very images
    assert val.scores.shape == (len(val_set),) and ((val.scores > 0) & (val.scores < 1)).all()
    stats = new.router_stats
    assert all(v is None or type(v) in (int, float, str) for v in stats.values())
    assert summary["targets"] == f"the {len(train_set)} training images (as the paper)"
    assert stats["delta"] == pytest.approx(summary["delta"]) and stats["train_entries"] == len(train_set)
    assert 0.0 <= summary["train_hard_share"] <= 1.0 and summary["hard_share_50"] == 0.5
    for key in ("ap_easy", "ap_hard", "ap_router_50", "ap_random_50", "train_spearman", "val_spearman"):
        assert isinstance(summary[key], float)
    assert summary_table(summary).row_count >= 8
    # thresholds picked from another router's scores are void; measured latencies are not
    assert new.operating_points == {} and new.latency == latency

    # the stored router reproduces the stored validation scores
    model = model_from_checkpoint(new)
    ids, scores = score_dataset(model, val_set, "cpu", batch_size=8)
    assert ids == list(val.image_ids)
    torch.testing.assert_close(scores, val.scores, rtol=1e-4, atol=1e-6)


def test_untrained_checkpoint_is_refused(shapes, trained_ckpt):
    train_set, val_set = shapes
    fresh = replace(trained_ckpt, training=None)
    with pytest.raises(DynamicDetError, match="run train-detectors first"):
        train_router_checkpoint(fresh, train_set, val_set, FAST, "cpu", show_progress=False)


def test_other_classes_are_refused(shapes, trained_ckpt):
    train_set, val_set = shapes
    other = replace(trained_ckpt, classes=("cat", "dog", "bird", "fish", "cow"))
    with pytest.raises(DynamicDetError, match=r"classes differ from the checkpoint's: 5 against 5; only in "
                                              r"the training data: circle.*; only in the checkpoint: cat, dog"):
        train_router_checkpoint(other, train_set, val_set, FAST, "cpu", show_progress=False)


def test_class_mismatches_say_what_differs():
    from dynamicdet_cli.data.coco import class_mismatch
    assert class_mismatch(["a", "b"], ("a", "b"), "data", "checkpoint") is None
    more = class_mismatch(["a", "b", "c", "d", "e", "unused"], ["a", "b", "c", "d", "e"], "data", "checkpoint")
    assert "6 against 5; only in the data: unused" in more  # not two lists that print alike
    swapped = class_mismatch(["b", "a"], ["a", "b"], "validation data", "training data")
    assert "the same names in another category-id order ('b' where the training data has 'a')" in swapped


def test_missing_validation_set_is_refused(shapes, trained_ckpt):
    with pytest.raises(DynamicDetError, match="validation set"):
        train_router_checkpoint(trained_ckpt, shapes[0], None, FAST, "cpu", show_progress=False)


def test_targets_come_from_the_images_kept_out_of_step_1(shapes, trained_ckpt, monkeypatch):
    train_set, val_set = shapes
    held = train_set.image_ids[-4:]
    ckpt = replace(trained_ckpt, training=TrainingRecord(1, 0, "", router_image_ids=tuple(held)))
    cached, cache = [], training.cache_router_inputs
    monkeypatch.setattr(training, "cache_router_inputs",
                        lambda model, dataset, *a, **k: (cached.append(list(dataset.image_ids)), cache(model, dataset, *a, **k))[1])
    new, summary = train_router_checkpoint(ckpt, train_set, val_set, FAST, "cpu", show_progress=False, random_draws=2)
    assert cached[0] == list(held)  # the targets: exactly the images kept out, not any 4
    assert summary["targets"] == "4 training images kept out of step 1"
    assert summary["train_entries"] == 4 and new.router_stats["targets"] == summary["targets"]


def test_a_router_split_takes_precedence(shapes, trained_ckpt, tmp_path):
    train_set, val_set = shapes
    cfg = load_data_config(make_shapes(tmp_path / "r", n_train=2, n_val=2, n_router=5, size=64, seed=1))
    router_set = CocoDataset(cfg.router_ann, cfg.router_images, build_transforms(False))
    ckpt = replace(trained_ckpt, training=TrainingRecord(1, 0, "", router_image_ids=tuple(train_set.image_ids[-4:])))
    _, summary = train_router_checkpoint(ckpt, train_set, val_set, FAST, "cpu", show_progress=False,
                                         random_draws=2, router_set=router_set)
    assert summary["targets"] == "router split router.json (5 images)" and summary["train_entries"] == 5


def test_held_out_ids_missing_from_the_data_are_refused(shapes, trained_ckpt):
    train_set, val_set = shapes
    ckpt = replace(trained_ckpt, training=TrainingRecord(1, 0, "", router_image_ids=(10_001, 10_002)))
    with pytest.raises(DynamicDetError, match="kept 2 training images out of step 1.*only 0"):
        train_router_checkpoint(ckpt, train_set, val_set, FAST, "cpu", show_progress=False)


def test_the_target_images_are_read_at_the_model_input_and_the_validation_whole(trained_ckpt, tmp_path,
                                                                                 monkeypatch):
    """train-router reads its target images (the training split, or a router split) no larger than
    the model's training input, as step 1 did, and the validation images whole (their AP is
    counted in their own pixels)."""
    data = load_data_config(make_shapes(tmp_path / "data", n_train=4, n_val=2, n_router=2, size=96, seed=0))
    seen = {}

    def capture(ckpt, train_set, val_set, cfg, device, show_progress=True, router_set=None):
        seen.update(train=train_set, val=val_set, router=router_set)
        raise DynamicDetError("captured")

    monkeypatch.setattr(training, "train_router_checkpoint", capture)
    with pytest.raises(DynamicDetError, match="captured"):
        training.train_router_step(trained_ckpt, data, torch.device("cpu"))
    assert seen["train"].fit == (64, 64) and seen["router"].fit == (64, 64) and seen["val"].fit is None
    assert tuple(seen["train"][0][0].shape[-2:]) == (64, 64) and tuple(seen["val"][0][0].shape[-2:]) == (96, 96)
