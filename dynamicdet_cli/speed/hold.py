"""Holding a latency target while the stream and the device change (`predict --speed held`).

A fixed threshold keeps the share of hard images the validation scores gave it, at the route
costs measured when it was calibrated. A harder stream sends more images hard, a slower
device makes both routes dearer: the mean latency drifts off its target. A LatencyHold moves
tau after every batch instead, so that the mean model time per image over the images actually
sent converges to the target:

    c_easy, c_hard   the routes' costs per image, re-estimated from the measured batch times
                     (exponentially forgetting least squares over the finished images of each
                     route, pulled towards the calibration scaled by the measured slow-down);
                     they start at the stored calibration lat1, lat2
    debt             = n * target - spent            ms under (+) or over (-) budget so far
    m                = target + debt / horizon       per-image latency to aim for next,
                                                     clamped to [c_easy, c_hard]
    k                = the hard share whose expected latency is m (calibrate's curve of mixed
                       batches, mapped onto the current costs; the straight line without one)
    tau              = the score with a share k of the last `window` router scores above it
                       (calibrate.threshold_for_hard_ratio: tau stays in [0, 1])

The router still decides which images go hard; the controller only decides how many. Pure
logic: the caller runs the model, the controller reads the clock it was given (a fake one in
tests) around each batch:

    hold = LatencyHold(target_ms, lat1, lat2, tau0)
    for images in stream:
        hold.start()
        finished = run(images, route=hold.tau)         # the model's work for this batch only
        hold.update(scores, n_easy, n_hard, warmup)    # scores of the images just routed;
                                                       # n_*: images whose route ran in it
    report = hold.report()
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dynamicdet_cli.speed.calibrate import hard_ratio_for_latency, threshold_for_hard_ratio
from dynamicdet_cli.core.errors import DynamicDetError

WINDOW = 64  # images: the router scores tau is read from, and the "last window" of the report
HORIZON = 64  # images over which a debt (or a saving) is paid back
MEMORY = 0.8  # weight a batch's timing keeps per later batch (about 5 batches of memory)
PRIOR_IMAGES = 2.0  # how many images' worth the calibration's cost ratio weighs in the estimate


@dataclass(frozen=True)
class HoldReport:
    """What a held run achieved. Times are model time per image in ms over the images whose
    time the controller counted (batches that carried one-time warm-up are left out).

    achieved_ms: over the whole stream; window_ms: over its last `window_images` images;
    hard_share: share of the images that took the hard route; tau_*: where tau started, ended and the
    range it moved in; easy_ms / hard_ms: the routes' costs as last estimated (calibrated:
    the stored ones)."""

    target_ms: float
    achieved_ms: float | None
    window_ms: float | None
    window_images: int
    images: int
    hard_share: float
    tau_start: float
    tau_end: float
    tau_min: float
    tau_max: float
    easy_ms: float
    hard_ms: float
    calibrated_easy_ms: float
    calibrated_hard_ms: float

    @property
    def out_of_reach(self) -> str | None:
        """None while the target lies between the routes' costs as last estimated; else which
        side it fell off: "below" (even the easy route alone cost more: every image went easy
        and still overshot) or "above" (even the hard route alone cost less)."""
        if self.target_ms < self.easy_ms:
            return "below"
        if self.target_ms > self.hard_ms:
            return "above"
        return None

    @property
    def gap(self) -> float | None:
        """Achieved over the whole stream relative to the target, e.g. +0.03 for 3% over."""
        return None if self.achieved_ms is None else self.achieved_ms / self.target_ms - 1.0


class LatencyHold:
    """Moves tau batch by batch so that the running mean latency per image meets `target_ms`.

    target_ms: the promise, in [easy_ms, hard_ms]; easy_ms / hard_ms / curve: the
    stored calibration of this run's regime (latency.measure_routes), where the cost model
    starts; tau: the stored operating point's threshold, where tau starts. window, horizon:
    in images (module docstring); memory: in [0, 1), how much of the cost estimate a batch
    keeps for the next; clock: seconds, monotonic (time.perf_counter).

    A target outside [easy_ms, hard_ms] raises calibrate's one-line DynamicDetError. One
    controller per stream: its running mean and cost estimate carry over from batch to batch.
    """

    def __init__(self, target_ms: float, easy_ms: float, hard_ms: float, tau: float, *, curve=None,
                 window: int = WINDOW, horizon: float = HORIZON, memory: float = MEMORY,
                 clock: Callable[[], float] = time.perf_counter):
        hard_ratio_for_latency(target_ms, easy_ms, hard_ms, curve=curve)  # unreachable: today's message
        if not 0.0 <= tau <= 1.0:
            raise DynamicDetError(f"starting threshold must lie in [0, 1], got {tau}")
        if window < 1 or not horizon > 0 or not 0.0 <= memory < 1.0:
            raise DynamicDetError(f"need window >= 1, horizon > 0 and memory in [0, 1), got {window}, "
                                  f"{horizon}, {memory}")
        self.target_ms, self.tau = float(target_ms), float(tau)
        self.calibrated = (float(easy_ms), float(hard_ms))
        self.curve = [(float(k), float(ms)) for k, ms in (curve or [])]
        self.window, self.horizon, self.memory, self.clock = window, float(horizon), memory, clock
        self.costs = self.calibrated
        self.scores: deque[float] = deque(maxlen=window)
        self.recent: deque[tuple[int, float]] = deque()  # (images, ms) of the latest counted batches
        self.spent, self.counted = 0.0, 0  # ms and images the running mean is over
        self.finished, self.finished_hard = 0, 0  # images whose route ran, warm-up included
        self.tau_start = self.tau_min = self.tau_max = self.tau
        self._sums = [0.0] * 6  # forgetting sums: ee, eh, hh, et, ht, and the calibrated time of the images
        self._started: float | None = None
        self._pending = [0.0, False]  # model ms (and warm-up) of batches whose images have not finished

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        """The model's work for one batch begins now."""
        self._started = self.clock()

    def update(self, scores: Sequence[float], n_easy: int, n_hard: int, warmup: bool = False) -> float:
        """The batch started by `start` is done: `scores` are the router scores of the images
        it routed (at self.tau), n_easy / n_hard the images whose route ran in it (regrouped
        routes run later than their images are routed), `warmup` whether its time includes
        one-time set-up. Returns tau for the next batch."""
        assert self._started is not None, "call start() before the batch's work"
        elapsed = 1000.0 * (self.clock() - self._started)
        self._started = None
        self.scores.extend(float(s) for s in scores)
        self.finished += n_easy + n_hard
        self.finished_hard += n_hard
        # A batch whose routes did not run (its images wait for full batches) is paid for by
        # the batch that runs them: its time waits with the images.
        self._pending[0] += elapsed
        self._pending[1] = self._pending[1] or warmup
        if n_easy + n_hard:
            ms, warm = self._pending
            self._pending = [0.0, False]
            if not warm:
                self._count(n_easy, n_hard, ms)
        self.tau = self._next_tau()
        self.tau_min, self.tau_max = min(self.tau_min, self.tau), max(self.tau_max, self.tau)
        return self.tau

    def report(self) -> HoldReport:
        images, ms = sum(n for n, _ in self.recent), sum(t for _, t in self.recent)
        return HoldReport(
            target_ms=self.target_ms, achieved_ms=self.spent / self.counted if self.counted else None,
            window_ms=ms / images if images else None, window_images=images, images=self.counted,
            hard_share=self.finished_hard / self.finished if self.finished else 0.0,
            tau_start=self.tau_start, tau_end=self.tau, tau_min=self.tau_min, tau_max=self.tau_max,
            easy_ms=self.costs[0], hard_ms=self.costs[1],
            calibrated_easy_ms=self.calibrated[0], calibrated_hard_ms=self.calibrated[1])

    # -- the parts -----------------------------------------------------------------------

    def _count(self, n_easy: int, n_hard: int, ms: float) -> None:
        """Add a finished batch to the running mean, the last window and the cost estimate."""
        n = n_easy + n_hard
        self.spent += ms
        self.counted += n
        self.recent.append((n, ms))
        while sum(k for k, _ in self.recent) - self.recent[0][0] >= self.window:
            self.recent.popleft()
        lat1, lat2 = self.calibrated
        # a batch of n images is n rows (shares e/n and h/n, ms/n per image): its sums divide by n
        new = (n_easy * n_easy / n, n_easy * n_hard / n, n_hard * n_hard / n, n_easy * ms / n, n_hard * ms / n,
               n_easy * lat1 + n_hard * lat2)
        self._sums = [self.memory * s + v for s, v in zip(self._sums, new)]
        self.costs = self._estimate()

    def _estimate(self) -> tuple[float, float]:
        """(c_easy, c_hard): least squares on the remembered batches, ridge towards the
        calibration times the measured slow-down; that scaled calibration where the fit is
        not a usable cost model (a route cheaper than nothing, or hard not dearer than easy)."""
        ee, eh, hh, et, ht, cal = self._sums
        lat1, lat2 = self.calibrated
        slow = (et + ht) / cal if cal > 0 else 1.0  # measured (et + ht: the batches' ms) over calibrated
        if not math.isfinite(slow) or slow <= 0.0:  # a clock that did not move: nothing learnt
            return self.costs
        prior = (slow * lat1, slow * lat2)
        a, b, d = ee + PRIOR_IMAGES, eh, hh + PRIOR_IMAGES
        r1, r2 = et + PRIOR_IMAGES * prior[0], ht + PRIOR_IMAGES * prior[1]
        det = a * d - b * b
        c1, c2 = (d * r1 - b * r2) / det, (a * r2 - b * r1) / det
        return (c1, c2) if 0.0 < c1 < c2 else prior

    def _next_tau(self) -> float:
        if not self.scores:  # nothing seen yet to take a quantile of
            return self.tau
        c1, c2 = self.costs
        debt = self.counted * self.target_ms - self.spent
        limit = self.horizon * (c2 - c1)  # a long stretch out of reach is not paid back for ever
        aim = self.target_ms + max(-limit, min(limit, debt)) / self.horizon
        aim = min(max(aim, c1), c2)
        k = hard_ratio_for_latency(aim, c1, c2, clamp=True, curve=self._curve(c1, c2))
        return threshold_for_hard_ratio(list(self.scores), k)

    def _curve(self, c1: float, c2: float) -> list[tuple[float, float]] | None:
        """The calibrated mixed-batch curve mapped onto the current route costs: each point
        keeps where it lies between the calibrated lat1 and lat2."""
        if not self.curve:
            return None
        lat1, lat2 = self.calibrated
        return [(k, c1 + (ms - lat1) / (lat2 - lat1) * (c2 - c1)) for k, ms in self.curve]
