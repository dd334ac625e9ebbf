"""Measuring each route's latency on this device, and storing calibrated operating points.

lat1 is the easy route (backbone 1 + router + detector 1), lat2 the hard route (backbone 1
+ router + composite + backbone 2 + detector 2), both the mean time per image over a set of
images (timing_images.py) run in batches of a given size: warm-up, then repeated passes over
the set with the two routes taking turns on every batch, the median pass kept (synchronised
on CUDA). A measurement holds for the regime it was taken in (regime.py).
"""

from __future__ import annotations

import datetime as _dt
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dynamicdet_cli.speed.calibrate import (expected_latency, hard_ratio_for_latency, hard_ratio_for_threshold,
                                      measure_latency, parse_latency_target, target_latency_ms,
                                      threshold_for_hard_ratio)
from dynamicdet_cli.checkpoint.types import Checkpoint, LatencyRecord, OperatingPoint
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.speed.batcher import RouteBatcher
from dynamicdet_cli.speed.regime import Regime, find_latency
from dynamicdet_cli.speed.timing_images import timing_images

ROUTES = ("easy", "hard")
CURVE_SHARES = (0.1, 0.25, 0.5, 0.75, 0.9)  # shares routed hard at which calibrate also times mixed batches
SPREAD_WARN_PCT = 10.0  # calibrate warns when a route's passes disagree by more (see measure_routes)


@torch.inference_mode()
def measure_routes(model, device: torch.device, images: list[torch.Tensor], batch_size: int,
                   warmup: int = 2, repeats: int = 5, source: str = "", mixed_taus: list[float] = (),
                   original_sizes: list[tuple[int, int]] | None = None) -> LatencyRecord:
    """Mean per-image latency of each route over `images`, in ms, with its regime.

    `images` (each 3,H,W in [0, 1]) run in batches of `batch_size`; a trailing partial batch
    is timed too. Each route runs through a RouteBatcher, as predict and evaluate run it
    (where it pays, each route on full batches; the last batch's time includes what waited).
    The regime (thread count, device) decides whether it regroups, so a measurement holds for
    the way its regime runs.
    Each of `repeats` passes times every batch under both routes, the order
    alternating from batch to batch, so drift (heat, other load) hits both routes alike; a
    route's latency is its median pass time divided by the number of images. `source`
    says what the images are; it is stored with the measurement. With `mixed_taus`, the
    same passes also time the images routed by each threshold (batches that mix routes),
    stored as `curve_ms`: [share of the images routed hard, ms per image] per threshold.
    `spread_pct` (with 2 or more repeats): how far a route's passes disagree, the larger of
    (max - min) / median over the two routes, in %: the noise of this measurement.
    `original_sizes`: each image's size as decoded where it was scaled down before (as predict
    hands them to the model, so the output is made at the size predict makes it).
    """
    if not images:
        raise DynamicDetError("no images to time the routes on")
    if repeats < 1 or batch_size < 1:
        raise DynamicDetError(f"need repeats >= 1 and batch size >= 1, got {repeats}, {batch_size}")
    model.eval()
    images = [im.to(device) for im in images]
    sizes = list(original_sizes) if original_sizes is not None else [tuple(im.shape[-2:]) for im in images]
    batches = [(images[i:i + batch_size], sizes[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None

    def time_batch(batcher: RouteBatcher, batch, last: bool, done: list) -> float:
        def run():
            done.extend(batcher.add(batch[0], range(len(batch[0])), original_sizes=batch[1]))
            if last:
                done.extend(batcher.finish())
        return measure_latency(run, warmup=0, repeats=1, sync=sync)

    routes = list(ROUTES) + list(dict.fromkeys(float(t) for t in mixed_taus))  # a repeated tau is timed once
    for route in routes:
        warm = batches[:max(warmup, 1)]
        batcher = RouteBatcher(model, route, batch_size)
        for i, batch in enumerate(warm):
            time_batch(batcher, batch, i == len(warm) - 1, [])
    passes = {route: [] for route in routes}
    for rep in range(repeats):
        spent = dict.fromkeys(routes, 0.0)
        batchers = {route: RouteBatcher(model, route, batch_size) for route in routes}
        done = {route: [] for route in routes}  # this pass's results: the share each route sent hard
        for i, batch in enumerate(batches):
            for route in (routes if (i + rep) % 2 == 0 else routes[::-1]):
                spent[route] += time_batch(batchers[route], batch, i == len(batches) - 1, done[route])
        for route in routes:
            passes[route].append(spent[route])
    regime = Regime.of_run(model, device, batch_size)
    return LatencyRecord(
        **regime.record(),
        easy_ms=statistics.median(passes["easy"]) / len(images),
        hard_ms=statistics.median(passes["hard"]) / len(images),
        curve_ms=tuple((sum(d.detection["route"] == "hard" for d in done[tau]) / len(images),
                        statistics.median(passes[tau]) / len(images)) for tau in routes[len(ROUTES):]),
        images=source or f"{len(images)} image{'s' * (len(images) != 1)}",
        repeats=repeats,
        spread_pct=max(spread_pct(passes[r]) for r in ROUTES) if repeats > 1 else None,
        time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def spread_pct(values: list[float]) -> float:
    """How far repeated timings disagree: (max - min) / median, in %."""
    return 100.0 * (max(values) - min(values)) / statistics.median(values)


def store_latency(ckpt: Checkpoint, measured: LatencyRecord) -> Checkpoint:
    """The checkpoint with `measured` added, replacing one taken in the same regime."""
    regime = Regime.of_record(measured)
    return replace(ckpt, latency=(*(m for m in ckpt.latency if not regime.matches(m)), measured))


@dataclass
class Calibration:
    """What `calibrate` did: the checkpoint with its results stored (the caller saves it), the
    stored point (None when it only measured), the measurement used (None without a latency),
    whether it was timed now, and a warning for the user."""

    checkpoint: Checkpoint
    point: OperatingPoint | None
    measured: LatencyRecord | None
    timed: bool = False
    warning: str | None = None


def calibrate_checkpoint(ckpt: Checkpoint, model, device: torch.device, name: str = "default", *,
                         target: str | None = None, hard_ratio: float | None = None,
                         threshold: float | None = None, clamp: bool = False, batch_size: int = 8,
                         repeats: int = 5, reuse: bool = False, images: Path | None = None,
                         random_images: bool = False, image_size: int | None = None,
                         max_images: int = 128) -> Calibration:
    """The whole of `calibrate`: returns what it did and the checkpoint with its results
    stored (Calibration.checkpoint; the caller saves it).

    With a latency target, or with no option at all (measure only), both routes are timed
    in this run's regime (or the stored measurement of that regime is reused with `reuse`)
    and the measurement is stored; with a target, hard ratio or threshold the operating
    point is stored as `name`. `target`: '40ms', '0.04s' or '50%' of the way from the easy
    route's measured latency to the hard one's (calibrate.target_latency_ms). Image
    options: see timing_images.timing_images.
    """
    validation_scores(ckpt)  # fail before timing anything
    result = Calibration(ckpt, None, None)
    if target is not None:
        parse_latency_target(target)  # a malformed target fails before timing anything
    if target is not None or (hard_ratio is None and threshold is None):
        regime = Regime.of_run(model, device, batch_size)
        result.measured = find_latency(ckpt, regime) if reuse else None
        if reuse and result.measured is None:
            raise DynamicDetError(f"--reuse-latency: no latency stored for {regime.describe()}; "
                                  "calibrate once without it")
        if result.measured is None:
            chosen = timing_images(ckpt, batch_size, max_images, images, random_images, image_size)
            result.warning = chosen.warning
            result.measured = measure_routes(model, device, chosen.images, batch_size, repeats=repeats,
                                             source=chosen.source, mixed_taus=curve_thresholds(ckpt),
                                             original_sizes=chosen.sizes)
            result.timed = True
            spread = result.measured.spread_pct
            if spread is not None and spread > SPREAD_WARN_PCT:
                noisy = (f"a route's timed passes disagree by {spread:.0f}%: the device is busy or changing "
                         "speed, and these latencies are no surer than that; calibrate on an idle device "
                         "or with more --repeats")
                result.warning = f"{result.warning}; {noisy}" if result.warning else noisy
    target_ms = None if target is None else target_latency_ms(target, result.measured.easy_ms,
                                                              result.measured.hard_ms)
    if target_ms is not None or hard_ratio is not None or threshold is not None:
        result.point = operating_point(ckpt, target_ms=target_ms, hard_ratio=hard_ratio, threshold=threshold,
                                       latency=result.measured, clamp=clamp)
        ckpt = replace(ckpt, operating_points={**ckpt.operating_points, name: result.point})
    if result.measured is not None:
        ckpt = store_latency(ckpt, result.measured)
    result.checkpoint = ckpt
    return result


def curve_thresholds(ckpt: Checkpoint) -> list[float]:
    """The thresholds that route CURVE_SHARES of the validation images hard: where calibrate
    times mixed batches."""
    scores = validation_scores(ckpt)
    return [threshold_for_hard_ratio(scores, k) for k in CURVE_SHARES]


def validation_scores(ckpt: Checkpoint) -> torch.Tensor:
    val = ckpt.validation
    if ckpt.router is None or val is None or len(val.image_ids) == 0:
        raise DynamicDetError("the checkpoint has no trained router / validation scores: run train-router first")
    return val.scores.float()


def operating_point(ckpt: Checkpoint, *, target_ms: float | None = None, hard_ratio: float | None = None,
                    threshold: float | None = None, latency: LatencyRecord | None = None,
                    clamp: bool = False) -> OperatingPoint:
    """An operating point from exactly one of: a target latency (needs `latency`), a hard
    ratio k, or a threshold tau; with `latency`, its expected latency and regime."""
    given = [x is not None for x in (target_ms, hard_ratio, threshold)]
    if sum(given) != 1:
        raise DynamicDetError("give exactly one of --latency, --hard-ratio or --threshold")
    scores = validation_scores(ckpt)
    if target_ms is not None:
        if latency is None:
            raise DynamicDetError("a latency target needs a latency measurement on this device")
        hard_ratio = hard_ratio_for_latency(target_ms, latency.easy_ms, latency.hard_ms, clamp=clamp,
                                            curve=latency.curve_ms)
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise DynamicDetError(f"--threshold {threshold}: must lie in [0, 1]")
        tau = float(threshold)
    else:
        if not 0.0 <= hard_ratio <= 1.0:
            raise DynamicDetError(f"--hard-ratio {hard_ratio}: must lie in [0, 1]")
        tau = threshold_for_hard_ratio(scores, hard_ratio)
    share = hard_ratio_for_threshold(scores, tau)
    if latency is None:
        return OperatingPoint(float(tau), float(share), target_ms)
    return OperatingPoint(float(tau), float(share), target_ms,
                          expected_latency(share, latency.easy_ms, latency.hard_ms, latency.curve_ms),
                          **Regime.of_record(latency).record())  # the regime its latency holds in
