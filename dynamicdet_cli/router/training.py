"""Step 2 of DynamicDet, the whole `train-router` command: both detectors frozen, the router
fitted to which images detector 2 helps, its validation scores stored.

The parts: router_cache.py (L1, L2 and v once per image), router_fit.py (the paper's loss,
the exact median Delta, early stopping), router_summary.py (what the router learned).

Where the targets come from (the summary always says):
- a router split of the data (data YAML `router_ann`/`router_images`): images the
  detectors never trained on;
- else the training images that train-detectors kept out of step 1
  (`train.router_holdout`, recorded in the checkpoint);
- else the training images themselves, as the paper does on COCO. On small data the
  detectors may memorise those, and their L1 - L2 then says little about unseen images.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from dynamicdet_cli.checkpoint.store import first_non_finite, model_from_checkpoint, router_state
from dynamicdet_cli.checkpoint.types import Checkpoint, ValidationScores
from dynamicdet_cli.config.recipe import parse_override, with_overrides
from dynamicdet_cli.data.coco import class_mismatch
from dynamicdet_cli.data.config import DataConfig
from dynamicdet_cli.data.open import open_splits
from dynamicdet_cli.data.transforms import Transform, build_transforms
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.evaluation.inference import run_both_routes
from dynamicdet_cli.model.build import needs_masks
from dynamicdet_cli.router.cache import cache_router_inputs
from dynamicdet_cli.router.fit import exact_median, reset_router, train_router
from dynamicdet_cli.router.summary import router_summary


def _check_inputs(ckpt: Checkpoint, datasets: dict) -> None:
    if ckpt.training is None:
        raise DynamicDetError("detectors never trained: run train-detectors first (the router learns which "
                              "images detector 2 helps, which fresh detectors cannot tell)")
    if datasets.get("validation") is None:
        raise DynamicDetError("train-router needs a validation set (its router scores calibrate the "
                              "thresholds): give val_ann/val_images")
    family = ckpt.family
    for name, ds in datasets.items():
        if ds is not None and needs_masks(family) and not ds.masks:
            raise DynamicDetError(f"the {name} data was opened without instance masks, but the detectors "
                                  f"({family}) need them for their losses: open it with masks=True")
        problem = class_mismatch(ds.classes, ckpt.classes, f"{name} data", "checkpoint") if ds is not None else None
        if problem:
            raise DynamicDetError(problem)


def view_augmentation(ckpt: Checkpoint) -> Transform:
    """The checkpoint recipe's training augmentation, for the extra cached views."""
    aug = ckpt.recipe.train.augment
    return build_transforms(True, aug.hflip, aug.photometric, aug.zoom_out)


def router_targets(ckpt: Checkpoint, train_set, router_set=None):
    """(dataset whose losses are the targets, a phrase saying where they come from)."""
    if router_set is not None:
        return router_set, f"router split {Path(router_set.ann_file).name} ({len(router_set)} images)"
    held = list(ckpt.training.router_image_ids) if ckpt.training is not None else []
    if held:
        subset = train_set.restricted_to(held)
        if len(subset) != len(held):
            raise DynamicDetError(f"the checkpoint kept {len(held)} training images out of step 1 for the router, "
                                  f"but only {len(subset)} of them are in this training set; use the same data")
        return subset, f"{len(subset)} training images kept out of step 1"
    return train_set, f"the {len(train_set)} training images (as the paper)"


def train_router_checkpoint(ckpt: Checkpoint, train_set, val_set, cfg, device, show_progress: bool = True,
                            random_draws: int = 10, router_set=None) -> tuple[Checkpoint, dict]:
    """The whole of `train-router`: returns (new checkpoint, summary); the caller saves it.

    train_set / val_set / router_set: CocoDatasets with evaluation transforms (no
    augmentation; extra views use the checkpoint recipe's train.augment); router_set is an
    optional split for the targets (see the module docstring). cfg: RouterTrainConfig. The
    router starts from fresh weights seeded by cfg.seed; the detector weights of the result
    are the very tensors read (store_detector is not called).
    """
    _check_inputs(ckpt, {"training": train_set, "validation": val_set, "router": router_set})
    device = torch.device(device)
    model = model_from_checkpoint(ckpt, device)
    reset_router(model.router, cfg.seed)
    targets, source = router_targets(ckpt, train_set, router_set)
    augment = view_augmentation(ckpt) if cfg.views > 1 else None
    # Images go through the detectors in the batches they were trained in (known to fit in
    # memory); cfg.batch_size is the router's batch over cached vectors.
    images_per_batch = ckpt.recipe.train.batch_size

    start = time.perf_counter()
    train_cache = cache_router_inputs(model, targets, device, images_per_batch, cfg.views, cfg.loss_draws,
                                      augment, cfg.seed, show_progress=show_progress).average_views()
    cache_seconds = time.perf_counter() - start
    delta = exact_median(train_cache.gain)
    history = train_router(model.router, train_cache, delta, cfg.epochs, cfg.lr, cfg.weight_decay,
                           cfg.batch_size, cfg.seed, cfg.holdout)
    # One pass of both detectors over val gives the stored scores and the summary's APs.
    routes = run_both_routes(model, val_set, device, images_per_batch, show_progress=show_progress,
                             label="val: both routes")
    val_cache = cache_router_inputs(model, val_set, device, images_per_batch, 1, cfg.loss_draws,
                                    None, cfg.seed, show_progress=show_progress, label="val: L1, L2")
    summary = router_summary(model, train_cache, val_cache, val_set, routes, delta, random_draws, cfg.seed)
    summary.update(targets=source, epochs=cfg.epochs, final_loss=history["loss"][-1], views=cfg.views,
                   draws=cfg.loss_draws, best_epoch=history["best_epoch"],
                   held_out_images=history["held_out_images"], logit_scale=history["logit_scale"],
                   cache_seconds=cache_seconds, train_seconds=history["seconds"])

    # The detector weights stay the very tensors that were read. Scores of another router are
    # void, and so are thresholds picked from them: the operating points go.
    new = replace(ckpt, router=router_state(model),
                  router_stats={k: v for k, v in summary.items() if v is None or isinstance(v, (int, float, str))},
                  validation=ValidationScores(tuple(routes.image_ids), routes.scores,
                                              str(Path(val_set.ann_file).resolve()),
                                              str(Path(val_set.image_dir).resolve())),
                  operating_points={})
    return new, summary


def check_router_overrides(overrides: list[str]) -> None:
    """train-router changes only the router's keys: the detectors (and the loss their targets
    come from) were fixed by step 1."""
    for item in overrides:
        keys, _ = parse_override(item)
        if keys[0] != "router" and keys[:2] != ["model", "router"]:
            raise DynamicDetError(f"--set {'.'.join(keys)}: train-router changes only the router's keys (router.*, "
                                  "model.router.*); the detectors' keys were fixed when train-detectors trained them")


def train_router_step(ckpt: Checkpoint, data: DataConfig, device, overrides: list[str] = (), skip_bad: bool = False,
                      show_progress: bool = True) -> tuple[Checkpoint, dict]:
    """`train-router` from a checkpoint and the data's paths: the router keys in `overrides`
    applied to the checkpoint's recipe, the splits opened as the model sees them at test time,
    train_router_checkpoint run, and a router that diverged refused before anything is saved.
    Returns (new checkpoint, summary); the caller saves it."""
    check_router_overrides(list(overrides))
    ckpt = replace(ckpt, recipe=with_overrides(ckpt.recipe, list(overrides)))
    if not data.has_val:
        raise DynamicDetError("train-router needs validation data (val_ann, val_images) for the difficulty scores")
    splits = open_splits(data, needs_masks(ckpt.family), skip_bad=skip_bad)
    # The target images are read no larger than the model's training input, as step 1 read them
    # (CocoDataset.fit_to); the validation images stay whole: their AP is counted in their pixels.
    size = ckpt.recipe.model.transform
    train_set, router_set = (None if ds is None else ds.fit_to(*size.largest_training_input())
                             for ds in (splits.train, splits.router))
    new, summary = train_router_checkpoint(ckpt, train_set, splits.val, ckpt.recipe.router, device,
                                           show_progress=show_progress, router_set=router_set)
    bad = first_non_finite({"router": new.router})  # the detector's weights were checked when loaded
    if bad is not None:  # never saved: every later load would refuse it
        raise DynamicDetError(f"router training diverged: {bad} is NaN or infinite; nothing "
                              "was written (lower router.lr, e.g. --lr)")
    return new, summary
