"""hold.py: the held latency target, driven by a fake clock (no timing, no model).

Each simulated batch routes its scores at the controller's tau, and the fake clock advances by
what those routes cost: n_easy * c_easy + n_hard * c_hard, costs the test chooses batch by batch.
"""

from __future__ import annotations

import random

import pytest

from dynamicdet_cli.speed.calibrate import threshold_for_hard_ratio
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.speed.hold import LatencyHold

BATCH = 8
WINDOW_BATCHES = 8  # the tests' "running mean": the last 64 images


class FakeClock:
    """Seconds that move only when the simulated model works."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def spread(b: int) -> list[float]:
    """One batch of scores spread evenly over (0, 1), in an order that changes from batch to batch."""
    return [((i * 5 + b * 3) % BATCH + 0.5) / BATCH for i in range(BATCH)]


def run_stream(hold: LatencyHold | None, clock: FakeClock, n_batches: int, costs, scores, tau: float = 0.5):
    """Simulate a stream; `hold` None routes every batch at `tau`. Returns per batch
    (ms per image, share hard, tau used)."""
    history = []
    for b in range(n_batches):
        c_easy, c_hard = costs(b)
        batch = scores(b)
        used = tau if hold is None else hold.tau
        n_hard = sum(s > used for s in batch)
        ms = (len(batch) - n_hard) * c_easy + n_hard * c_hard
        if hold is not None:
            hold.start()
        clock.now += ms / 1000.0
        if hold is not None:
            hold.update(batch, len(batch) - n_hard, n_hard)
        history.append((ms / len(batch), n_hard / len(batch), used))
    return history


def windowed(history, end: int) -> float:
    """Mean ms per image over the WINDOW_BATCHES batches ending at batch `end` (inclusive)."""
    part = history[end - WINDOW_BATCHES + 1:end + 1]
    return sum(ms for ms, _, _ in part) / len(part)


def test_a_cost_jump_mid_stream_is_caught_within_a_bounded_number_of_batches():
    """The device slows at batch 40 (easy 10 -> 12 ms, hard 20 -> 30 ms per image). The fixed
    threshold then runs 25.5 ms against a 17.5 ms target; the held one is back within 5% of
    the target in at most 24 batches and stays there."""
    target, jump, n = 17.5, 40, 120
    costs = lambda b: (10.0, 20.0) if b < jump else (12.0, 30.0)  # noqa: E731
    start = threshold_for_hard_ratio(spread(0), 0.75)  # the calibrated point: 75% hard at (10, 20)

    clock = FakeClock()
    held = run_stream(LatencyHold(target, 10.0, 20.0, start, clock=clock), clock, n, costs, spread)
    fixed = run_stream(None, FakeClock(), n, costs, spread, tau=start)

    assert windowed(fixed, jump - 1) == pytest.approx(target)
    assert windowed(fixed, n - 1) > 1.4 * target  # the test's jump matters
    assert abs(windowed(held, jump - 1) / target - 1) <= 0.05  # held before the jump too
    off = [b for b in range(jump, n) if abs(windowed(held, b) / target - 1) > 0.05]
    assert off, "the jump must knock the held run off its target for a while"
    assert max(off) < jump + 24, off
    whole = sum(ms for ms, _, _ in held) / n
    assert abs(whole / target - 1) <= 0.05


def test_scores_shifting_upward_keep_the_share_the_target_allows():
    """A stream that grows harder: scores drift up by 0.6 over 120 batches. A fixed threshold
    sends ever more images hard (and misses its latency); the held one keeps half of them
    hard, the share a 15 ms target allows between 10 and 20 ms."""
    target, n = 15.0, 120
    costs = lambda b: (10.0, 20.0)  # noqa: E731
    rising = lambda b: [0.05 + 0.35 * s + 0.6 * b / n for s in spread(b)]  # noqa: E731
    start = threshold_for_hard_ratio(rising(0), 0.5)

    clock = FakeClock()
    hold = LatencyHold(target, 10.0, 20.0, start, clock=clock)
    held = run_stream(hold, clock, n, costs, rising)
    fixed = run_stream(None, FakeClock(), n, costs, rising, tau=start)

    late = slice(n // 2, n)
    share = lambda h: sum(s for _, s, _ in h[late]) / len(h[late])  # noqa: E731
    assert share(fixed) > 0.9  # the drift matters
    assert share(held) == pytest.approx(0.5, abs=0.05)
    assert sum(ms for ms, _, _ in held[late]) / (n - n // 2) == pytest.approx(target, rel=0.05)
    assert hold.tau > start + 0.3  # tau followed the scores up
    report = hold.report()
    assert report.hard_share == pytest.approx(0.5, abs=0.05)
    assert report.tau_start == start and report.tau_end == hold.tau
    assert report.tau_min <= start < report.tau_max
    assert report.images == n * BATCH and report.window_images == 64
    assert report.achieved_ms == pytest.approx(target, rel=0.05)


@pytest.mark.parametrize("seed", range(5))
def test_tau_stays_within_0_and_1(seed):
    """Random scores (saturated ones included) and costs that swing from far below the target
    to far above it: tau never leaves [0, 1], and at the ends it sends everything one way."""
    rng = random.Random(seed)
    clock = FakeClock()
    hold = LatencyHold(15.0, 10.0, 20.0, 0.5, clock=clock)
    scores = lambda b: [rng.choice([0.0, 1.0, rng.random(), rng.random() ** 8]) for _ in range(BATCH)]  # noqa: E731
    slow = lambda b: (rng.uniform(1, 40), rng.uniform(1, 80)) if b % 20 < 10 else (30.0, 60.0)  # noqa: E731
    history = run_stream(hold, clock, 200, slow, scores)
    assert all(0.0 <= tau <= 1.0 for _, _, tau in history)
    assert 0.0 <= hold.tau <= 1.0

    # A device so slow that even the easy route overshoots: all easy (tau 1), never beyond.
    clock = FakeClock()
    hold = LatencyHold(15.0, 10.0, 20.0, 0.5, clock=clock)
    run_stream(hold, clock, 30, lambda b: (30.0, 60.0), spread)
    assert hold.tau == 1.0
    # So fast that even the hard route undershoots: all hard (tau 0).
    clock = FakeClock()
    hold = LatencyHold(15.0, 10.0, 20.0, 0.5, clock=clock)
    run_stream(hold, clock, 30, lambda b: (2.0, 4.0), spread)
    assert hold.tau == 0.0


@pytest.mark.parametrize("target", [5.0, 25.0])
def test_a_target_outside_the_reachable_range_keeps_the_one_line_message(target):
    with pytest.raises(DynamicDetError, match=r"cannot be met: achievable range is 10\.0-20\.0 ms") as err:
        LatencyHold(target, 10.0, 20.0, 0.5)
    assert "\n" not in str(err.value)


def test_bad_settings_raise():
    with pytest.raises(DynamicDetError, match="starting threshold"):
        LatencyHold(15.0, 10.0, 20.0, 1.5)
    with pytest.raises(DynamicDetError, match="window"):
        LatencyHold(15.0, 10.0, 20.0, 0.5, window=0)
    with pytest.raises(DynamicDetError, match="not slower"):
        LatencyHold(15.0, 20.0, 20.0, 0.5)


def test_warm_up_and_waiting_batches_are_not_counted_as_they_come():
    """A warm-up batch's time stays out of the running mean; a batch whose routes did not run
    yet (its images wait for a full batch) hands its time to the batch that runs them."""
    clock = FakeClock()
    hold = LatencyHold(15.0, 10.0, 20.0, 0.5, clock=clock)
    hold.start()
    clock.now += 5.0  # 5 s of one-time set-up
    hold.update(spread(0), 4, 4, warmup=True)
    assert hold.report().achieved_ms is None and hold.report().hard_share == 0.5
    hold.start()
    clock.now += 0.040  # routed, but nothing ran: the images wait
    hold.update(spread(1), 0, 0)
    assert hold.report().images == 0
    hold.start()
    clock.now += 0.080
    hold.update(spread(2), 8, 0)
    report = hold.report()
    assert (report.images, report.achieved_ms) == (8, pytest.approx(15.0))  # (40 + 80) ms over 8 images


def test_the_calibrated_curve_shapes_the_share():
    """With a measured curve that says mixed batches cost more than the line, the share the
    controller asks for at the target is the curve's (smaller) one from the first batch on."""
    clock = FakeClock()
    line = LatencyHold(15.0, 10.0, 20.0, 0.5, clock=clock, window=100)
    curved = LatencyHold(15.0, 10.0, 20.0, 0.5, clock=clock, window=100, curve=[[0.25, 15.0], [0.5, 17.5]])
    scores = [i / 100 + 0.005 for i in range(100)]
    for hold in (line, curved):
        hold.start()
        hold.update(scores, 0, 0)  # nothing ran yet: the costs are still the calibrated ones
    assert line.tau == pytest.approx(0.5)  # half hard: 50 of the 100 scores above it
    assert curved.tau == pytest.approx(0.75)  # a quarter hard


def test_a_clock_that_does_not_move_leaves_the_costs_alone():
    """Zero-time batches (a coarse clock) teach nothing: the calibrated costs stay and tau stays in range."""
    clock = FakeClock()
    hold = LatencyHold(15.0, 10.0, 20.0, 0.5, clock=clock)
    run_stream(hold, clock, 10, lambda b: (0.0, 0.0), spread)
    assert hold.costs == (10.0, 20.0)
    assert 0.0 <= hold.tau <= 1.0


def test_a_stream_whose_easy_route_alone_costs_more_than_the_target_says_so():
    """Hard images can cost more than the target even on detector 1 (bench_hold's drifting
    stream): the controller sends every image easy and the report names the target out of
    reach, instead of leaving a miss unexplained. Back in reach, it says nothing."""
    clock = FakeClock()
    hold = LatencyHold(15.0, 10.0, 20.0, 0.5, clock=clock)
    history = run_stream(hold, clock, 40, lambda b: (18.0, 30.0), spread)
    report = hold.report()
    assert history[-1][1] == 0.0 and report.out_of_reach == "below"
    assert report.easy_ms > report.target_ms
    from dynamicdet_cli.predict import hold_rows
    rows = dict(hold_rows(report))
    assert "out of reach here: the easy route alone cost" in rows["reach"]

    clock = FakeClock()
    calm = LatencyHold(15.0, 10.0, 20.0, 0.5, clock=clock)
    run_stream(calm, clock, 40, lambda b: (10.0, 20.0), spread)
    assert calm.report().out_of_reach is None and "reach" not in dict(hold_rows(calm.report()))
