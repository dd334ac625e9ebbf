"""calibrate: latency target -> hard ratio k -> router threshold tau, and timing helpers."""

import math
import time

import pytest
import torch

from dynamicdet_cli.speed.calibrate import (
    expected_latency,
    hard_ratio_for_latency,
    hard_ratio_for_threshold,
    measure_latency,
    parse_latency,
    target_latency_ms,
    threshold_for_hard_ratio,
)
from dynamicdet_cli.core.errors import DynamicDetError

LAT1, LAT2 = 20.0, 40.0


@pytest.mark.parametrize("target, k", [(20.0, 0.0), (25.0, 0.25), (30.0, 0.5), (40.0, 1.0)])
def test_hard_ratio_for_latency(target, k):
    assert hard_ratio_for_latency(target, LAT1, LAT2) == pytest.approx(k)
    assert expected_latency(k, LAT1, LAT2) == pytest.approx(target)


@pytest.mark.parametrize("target, clamped", [(10.0, 0.0), (55.0, 1.0)])
def test_out_of_range_target_raises_unless_clamped(target, clamped):
    with pytest.raises(DynamicDetError, match=r"cannot be met.*20\.0-40\.0 ms"):
        hard_ratio_for_latency(target, LAT1, LAT2)
    assert hard_ratio_for_latency(target, LAT1, LAT2, clamp=True) == clamped


@pytest.mark.parametrize("lat2", [20.0, 15.0])
def test_hard_route_not_slower_raises(lat2):
    with pytest.raises(DynamicDetError, match="not slower"):
        hard_ratio_for_latency(30.0, LAT1, lat2, clamp=True)


def test_threshold_ends():
    scores = torch.rand(50, generator=torch.Generator().manual_seed(0)) * 0.98 + 0.01
    assert threshold_for_hard_ratio(scores, 0.0) == 1.0
    assert threshold_for_hard_ratio(scores, 1.0) == 0.0
    assert hard_ratio_for_threshold(scores, 1.0) == 0.0
    assert hard_ratio_for_threshold(scores, 0.0) == 1.0


@pytest.mark.parametrize("scores", [
    [0.0, 0.5, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0], [1.0],
    [0.0, 1e-45, 0.3], [1.0, 1.0 - 2 ** -24, 0.7],  # float32 neighbours of the ends
    [-0.5, 0.2, 1.5],  # not sigmoids: the threshold still stays where predict accepts it
])
@pytest.mark.parametrize("k", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_tau_stays_within_0_and_1_for_any_scores(scores, k):
    """predict refuses a threshold outside [0, 1]: once tau was -1.4e-45 for a score of 0.0 at k = 1."""
    s = torch.tensor(scores)
    tau = threshold_for_hard_ratio(s, k)
    assert 0.0 <= tau <= 1.0
    if s.min() >= 0 and s.max() <= 1:  # sigmoid scores: the budget is never exceeded either
        assert (s > tau).sum().item() <= math.floor(k * len(scores) + 1e-9)


def test_saturated_scores_at_the_ends():
    scores = torch.tensor([0.0, 0.5, 1.0])
    assert threshold_for_hard_ratio(scores, 0.0) == 1.0
    assert (scores > threshold_for_hard_ratio(scores, 0.0)).sum() == 0  # 1.0 is not above 1.0: easy
    assert threshold_for_hard_ratio(scores, 1.0) == 0.0
    # A score of exactly 0.0 exceeds no threshold in [0, 1]: it stays easy even at k = 1.
    assert (scores > threshold_for_hard_ratio(scores, 1.0)).tolist() == [False, True, True]


@pytest.mark.parametrize("k", [0.0, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.77, 0.9, 0.99, 1.0])
def test_exact_count_above_threshold(k):
    """floor, not round: k is the largest share the latency budget allows."""
    scores = torch.rand(101, generator=torch.Generator().manual_seed(1))
    tau = threshold_for_hard_ratio(scores, k)
    assert (scores > tau).sum().item() == math.floor(k * 101 + 1e-9)
    assert hard_ratio_for_threshold(scores, tau) <= k


def test_a_latency_target_is_never_exceeded_by_rounding():
    # lat 10 -> 20 ms, target 17.5 ms: k = 0.75 of 10 images is 7.5; 8 hard would cost 18 ms
    k = hard_ratio_for_latency(17.5, 10.0, 20.0)
    scores = torch.linspace(0.05, 0.95, 10)
    share = hard_ratio_for_threshold(scores, threshold_for_hard_ratio(scores, k))
    assert share == pytest.approx(0.7)
    assert expected_latency(share, 10.0, 20.0) <= 17.5


def test_threshold_is_midpoint_and_accepts_sequences():
    scores = [0.1, 0.9, 0.3, 0.7]  # sorted: 0.9 0.7 | 0.3 0.1
    assert threshold_for_hard_ratio(scores, 0.5) == pytest.approx(0.5)
    assert threshold_for_hard_ratio(scores, 0.25) == pytest.approx(0.8)


def test_adjacent_float32_scores_keep_exact_count():
    low = torch.tensor(0.3)
    scores = torch.stack([low, torch.nextafter(low, torch.tensor(1.0))])
    tau = threshold_for_hard_ratio(scores, 0.5)
    assert (scores > tau).sum().item() == 1


def test_ties_at_the_cut_go_easy():
    scores = torch.tensor([0.9, 0.5, 0.5, 0.1])
    tau = threshold_for_hard_ratio(scores, 0.5)  # cut falls inside the tie
    assert (scores > tau).sum().item() == 1  # budget not exceeded


def test_bad_scores_or_ratio_raise():
    with pytest.raises(DynamicDetError, match="train-router"):
        threshold_for_hard_ratio(torch.empty(0), 0.5)
    with pytest.raises(DynamicDetError, match="train-router"):
        hard_ratio_for_threshold([], 0.5)
    for k in (-0.1, 1.5, float("nan")):
        with pytest.raises(DynamicDetError, match=r"\[0, 1\]"):
            threshold_for_hard_ratio([0.2, 0.4], k)


@pytest.mark.parametrize(
    "text, ms", [("40ms", 40.0), ("40 ms", 40.0), ("0.04s", 40.0), ("40", 40.0), (" 12.5MS ", 12.5),
                 ("1s", 1000.0), (".5 ms", 0.5)]
)
def test_parse_latency(text, ms):
    assert parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "fast", "40 fps", "-5ms", "0", "ms", "4 0ms"])
def test_parse_latency_rejects_bad_text(text):
    with pytest.raises(DynamicDetError):
        parse_latency(text)


@pytest.mark.parametrize("text, ms", [("0%", 10.0), ("50%", 15.0), (" 25 %", 12.5), ("100%", 20.0), ("12ms", 12.0)])
def test_target_latency_as_a_share_between_the_routes(text, ms):
    assert target_latency_ms(text, 10.0, 20.0) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["-10%", "101%", "half%", "%"])
def test_target_latency_share_out_of_range_or_malformed(text):
    with pytest.raises(DynamicDetError, match="%"):
        target_latency_ms(text, 10.0, 20.0)


def test_measure_latency_returns_positive_median_and_syncs():
    calls = {"fn": 0, "sync": 0}

    def fn():
        calls["fn"] += 1
        time.sleep(0.001)

    def sync():
        calls["sync"] += 1

    ms = measure_latency(fn, warmup=2, repeats=5, sync=sync)
    assert ms >= 1.0
    assert ms < 1000.0
    assert calls == {"fn": 7, "sync": 7}


def test_a_measured_mixed_batch_curve_replaces_the_straight_line():
    curve = [[0.25, 13.0], [0.5, 16.0], [0.75, 18.0]]  # mixing costs more than the line 10 -> 20
    assert expected_latency(0.5, 10.0, 20.0, curve) == pytest.approx(16.0)
    assert expected_latency(0.375, 10.0, 20.0, curve) == pytest.approx(14.5)
    assert expected_latency(0.9, 10.0, 20.0, curve) == pytest.approx(19.2)
    # the largest share the curve keeps within the target, not the line's
    assert hard_ratio_for_latency(16.0, 10.0, 20.0, curve=curve) == pytest.approx(0.5)
    assert hard_ratio_for_latency(14.5, 10.0, 20.0, curve=curve) == pytest.approx(0.375)
    assert hard_ratio_for_latency(14.5, 10.0, 20.0) == pytest.approx(0.45)
    # a dip in the measured points is noise: latency never falls as more images go hard
    noisy = [[0.25, 15.0], [0.5, 14.0], [0.75, 18.0]]
    assert expected_latency(0.5, 10.0, 20.0, noisy) == pytest.approx(15.0)
    assert hard_ratio_for_latency(15.0, 10.0, 20.0, curve=noisy) == pytest.approx(0.5)
    for target in (10.0, 12.0, 16.5, 19.9, 20.0):  # the share found never exceeds the target
        k = hard_ratio_for_latency(target, 10.0, 20.0, curve=curve)
        assert expected_latency(k, 10.0, 20.0, curve) <= target + 1e-9
