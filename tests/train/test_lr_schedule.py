"""The learning-rate schedule: linear warm-up, then cosine, with the warm-up kept to a fifth of
a short run (train/loop.py's lr_factor)."""

from __future__ import annotations

import pytest

from dynamicdet_cli.config.recipe import TrainConfig
from dynamicdet_cli.train.loop import lr_factor


def _curve(total: int, **keys) -> list[float]:
    cfg = TrainConfig(**keys)
    return [lr_factor(step, total, cfg) for step in range(total)]


def test_a_long_run_warms_up_for_the_recipe_steps_then_decays_to_zero():
    curve = _curve(10_000, warmup_iters=500, schedule="cosine")
    assert curve[0] == pytest.approx(0.001)
    assert all(a < b for a, b in zip(curve[:500], curve[1:501]))  # rising until step 500
    assert curve[500] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(curve[500:], curve[501:]))  # then only falling
    assert curve[-1] < 1e-6


def test_a_warm_up_longer_than_a_fifth_of_the_run_is_cut_to_a_fifth():
    # dy-yolo's 5000 warm-up steps in a 1500-step fine-tuning run: the peak at step 300, not never
    curve = _curve(1500, warmup_iters=5000, schedule="cosine")
    assert max(curve) == pytest.approx(1.0) and curve.index(max(curve)) == 300
    assert curve[299] < 1.0 and curve[-1] < 1e-5
    # within a fifth, the recipe's own warm-up stands
    assert _curve(1500, warmup_iters=200, schedule="cosine").index(1.0) == 200


def test_tiny_runs_keep_a_one_step_warm_up_and_none_means_none():
    assert _curve(4, warmup_iters=1, schedule="cosine")[0] == pytest.approx(0.001)
    assert _curve(4, warmup_iters=0, schedule="cosine")[0] == 1.0
    assert _curve(4, warmup_iters=0, schedule="constant") == [1.0] * 4


def test_schedule_notes_name_what_a_short_run_changes_and_nothing_else():
    from dynamicdet_cli.config.recipe import load_recipe
    from dynamicdet_cli.train.loop import schedule_notes
    from conftest import RECIPES

    tiny, coco = load_recipe(RECIPES / "shapes-yolo-tiny.yaml").train, load_recipe(RECIPES / "dy-yolo-s.yaml").train
    assert schedule_notes(tiny, 2560) == []  # its own run: warm-up within a fifth, the cap never binds
    assert schedule_notes(coco, 554_700) == []  # COCO at batch 64 for 300 epochs
    warm, average = schedule_notes(coco, 5000)  # a fine-tuning run
    assert warm.startswith("lr warm-up: 1000 steps, not train.warmup_iters=5000")
    assert "train.ema_decay=0.9999 reaches back about 10000 steps, more than this run's 5000" in average


def test_a_run_no_longer_than_the_mosaic_off_epochs_still_sees_mosaics_and_says_so(shapes):
    from dataclasses import replace

    from dynamicdet_cli.config.recipe import load_recipe
    from dynamicdet_cli.data.mosaic import Mosaic
    from dynamicdet_cli.train.loop import _augmented, schedule_notes
    from conftest import RECIPES

    coco = load_recipe(RECIPES / "dy-yolo-s.yaml").train  # mosaic_off_epochs 10 of 300
    train_set, _ = shapes
    assert isinstance(_augmented(train_set, coco, 289), Mosaic)
    assert _augmented(train_set, coco, 290) is train_set  # its own run: the last 10 epochs plain
    short = replace(coco, epochs=10)  # a fine-tuning run
    assert [isinstance(_augmented(train_set, short, e), Mosaic) for e in range(10)] == [True] * 8 + [False] * 2
    mosaic_note, = [n for n in schedule_notes(short, 5000) if n.startswith("mosaic")]
    assert mosaic_note == ("mosaic: off for the last 2 epochs, not augment.mosaic_off_epochs=10: "
                           "at most a fifth of this run's 10 epochs")
    assert not any(n.startswith("mosaic") for n in schedule_notes(coco, 554_700))
