"""From a latency target to a router threshold (docs/method.md, "Choosing the speed").

    k   = (lat_t - lat1) / (lat2 - lat1)      largest fraction of images allowed on the hard route
    tau = percentile(S_val, 100 * (1 - k))    images with phi > tau take the hard route

lat1 / lat2 are the easy / hard route latencies in milliseconds, S_val the router scores of
the validation images. The straight line between lat1 and lat2 is the paper's model; batches
that mix routes can cost more (each head's fixed per-call cost is paid by both sub-batches),
so where `calibrate` measured mixed batches, a `curve` of (share routed hard, ms per image)
points replaces the line: latency at k is read off the curve, and k for a target is the
largest share the curve keeps within it. Pure math plus a timing helper; nothing here knows
about models.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from dynamicdet_cli.core.errors import DynamicDetError


def latency_curve(lat1_ms: float, lat2_ms: float, curve=None) -> tuple[list[float], list[float]]:
    """(shares, ms) from 0 to 1: the measured mixed-batch points between (0, lat1) and (1, lat2),
    or the straight line; ms made non-decreasing (a dip is timing noise, not a faster mix)."""
    points = sorted((float(k), float(ms)) for k, ms in (curve or []) if 0.0 < float(k) < 1.0)
    shares = [0.0] + [k for k, _ in points] + [1.0]
    ms = [lat1_ms] + [m for _, m in points] + [lat2_ms]
    for i in range(1, len(ms)):
        ms[i] = max(ms[i], ms[i - 1])
    return shares, ms


def hard_ratio_for_latency(
    target_ms: float, lat1_ms: float, lat2_ms: float, clamp: bool = False, curve=None
) -> float:
    """Fraction k in [0, 1] of images that may take the hard route to average `target_ms`.

    `curve`: measured (share, ms) points of mixed batches (see the module docstring); without
    it, the straight line. Raises DynamicDetError when the hard route is not slower than the
    easy one, or when the target lies outside [lat1, lat2] and `clamp` is False; with
    `clamp`, k is clipped to [0, 1] (all easy below lat1, all hard above lat2).
    """
    for name, value in (("target", target_ms), ("easy", lat1_ms), ("hard", lat2_ms)):
        if not math.isfinite(value) or value <= 0:
            raise DynamicDetError(f"{name} latency must be a positive number of ms, got {value}")
    if lat2_ms <= lat1_ms:
        raise DynamicDetError(
            f"the hard route ({lat2_ms:.1f} ms) is not slower than the easy route "
            f"({lat1_ms:.1f} ms), so latency cannot choose a threshold: re-measure with more "
            "repeats or on an idle device, or pass a hard ratio / threshold directly"
        )
    k = (target_ms - lat1_ms) / (lat2_ms - lat1_ms)
    if curve and 0.0 <= k <= 1.0:
        k = _largest_share_within(target_ms, *latency_curve(lat1_ms, lat2_ms, curve))
    if not clamp and not 0.0 <= k <= 1.0:
        raise DynamicDetError(
            f"target latency {target_ms:.1f} ms cannot be met: achievable range is "
            f"{lat1_ms:.1f}-{lat2_ms:.1f} ms (all easy to all hard); pick a target inside it, or a "
            "share of the way such as 50% (calibrate --clamp stores the nearest end instead)"
        )
    return min(max(k, 0.0), 1.0)


def threshold_for_hard_ratio(scores: torch.Tensor | Sequence[float], k: float) -> float:
    """Threshold tau such that floor(k * N) of the N `scores` are strictly greater than tau.

    tau always lies in [0, 1], the range `predict` and the model accept: k = 0 gives
    tau = 1.0 (all easy) and k = 1 gives tau = 0.0 (all hard, as router scores are sigmoids
    in (0, 1)). A score that saturated to exactly 0.0 cannot exceed any such tau, so it
    stays easy even at k = 1 (one image fewer on the hard route, never one more); a score of
    exactly 1.0 stays easy at k = 0. Otherwise tau is the midpoint between the sorted
    scores either side of the cut, computed in the scores' dtype so that comparing scores
    of that dtype to tau reproduces the count exactly. Ties at the cut: tied images all go
    easy, so fewer than floor(k * N) are hard; k is a latency budget and must not be exceeded.

    Raises DynamicDetError on empty scores (no validation scores: run train-router) or k
    outside [0, 1].
    """
    s = _as_scores(scores)
    if not 0.0 <= k <= 1.0:  # also rejects NaN
        raise DynamicDetError(f"hard ratio must lie in [0, 1], got {k}")
    # floor: k is the largest share the latency budget allows, never to be exceeded
    n_hard = math.floor(k * s.numel() + 1e-9)
    s = s.sort(descending=True).values
    if n_hard == 0:
        return 1.0
    if n_hard == s.numel():
        return 0.0
    above, below = s[n_hard - 1], s[n_hard]  # last hard, first easy
    tau = (above + below) / 2
    if tau >= above:  # adjacent floats: the midpoint rounds up onto `above`
        tau = below
    # Scores outside [0, 1] (not sigmoids) only move the cut to the nearest end.
    return min(max(tau.item(), 0.0), 1.0)


def hard_ratio_for_threshold(scores: torch.Tensor | Sequence[float], tau: float) -> float:
    """Fraction of `scores` strictly greater than `tau` (the share routed hard)."""
    s = _as_scores(scores)
    return (s > tau).float().mean().item()


def expected_latency(k: float, lat1_ms: float, lat2_ms: float, curve=None) -> float:
    """Mean latency when a fraction k of images takes the hard route: lat1 + k (lat2 - lat1),
    or read off the measured `curve` of mixed batches."""
    if not curve:
        return lat1_ms + k * (lat2_ms - lat1_ms)
    shares, ms = latency_curve(lat1_ms, lat2_ms, curve)
    for (k0, m0), (k1, m1) in zip(zip(shares, ms), zip(shares[1:], ms[1:])):
        if k <= k1:
            return m0 + (m1 - m0) * (k - k0) / (k1 - k0) if k1 > k0 else m1
    return ms[-1]


def _largest_share_within(target_ms: float, shares: list[float], ms: list[float]) -> float:
    """The largest k whose piecewise-linear latency stays within target_ms (ms non-decreasing,
    target between its ends)."""
    best = 0.0
    for (k0, m0), (k1, m1) in zip(zip(shares, ms), zip(shares[1:], ms[1:])):
        if m1 <= target_ms:
            best = k1
        elif m0 <= target_ms:
            return k0 + (k1 - k0) * (target_ms - m0) / (m1 - m0)
    return best


def measure_latency(
    fn: Callable[[], object],
    warmup: int = 3,
    repeats: int = 10,
    sync: Callable[[], None] | None = None,
) -> float:
    """Median wall time of `fn()` in milliseconds over `repeats` calls after `warmup` calls.

    `sync` (e.g. torch.cuda.synchronize) runs after every call and inside the timed span:
    GPU work is asynchronous, so without it only the kernel launches would be timed.
    The median rather than the mean keeps one-off stalls (allocation, GC) out.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


_LATENCY_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?\s*(ms|s)?\s*$", re.IGNORECASE)


def parse_latency_target(text: str) -> tuple[float | None, float | None]:
    """(ms, None) from '40ms' / '0.04s' (see parse_latency), or (None, share) from '50%': a
    share of the way from the easy route's latency to the hard route's."""
    stripped = str(text).strip()
    if not stripped.endswith("%"):
        return parse_latency(stripped), None
    try:
        share = float(stripped[:-1]) / 100.0
    except ValueError:
        raise DynamicDetError(f"cannot read latency {text!r}: write e.g. '50%' (of the way from the easy "
                              "route's latency to the hard route's), '40ms' or '0.04s'") from None
    if not 0.0 <= share <= 1.0:
        raise DynamicDetError(f"latency {text!r}: a share of the way from the easy route to the hard one "
                              "lies in 0% .. 100%")
    return None, share


def target_latency_ms(text: str, easy_ms: float, hard_ms: float) -> float:
    """The target in ms that `text` (see parse_latency_target) names, given the routes'
    latencies: '50%' = (easy_ms + hard_ms) / 2."""
    ms, share = parse_latency_target(text)
    return ms if share is None else easy_ms + share * (hard_ms - easy_ms)


def parse_latency(text: str) -> float:
    """Milliseconds from '40ms', '40 ms', '0.04s' or a bare number (taken as ms)."""
    match = _LATENCY_RE.match(str(text))
    if match is None:
        raise DynamicDetError(f"cannot read latency {text!r}: write e.g. '40ms', '0.04s' or '50%'")
    number, exponent, unit = match.groups()
    value = float(number + (f"e{exponent}" if exponent else ""))
    if unit is not None and unit.lower() == "s":
        value *= 1000.0
    if not math.isfinite(value) or value <= 0:
        raise DynamicDetError(f"latency must be positive, got {text!r}")
    return value


def _as_scores(scores: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """A flat floating tensor of router scores; DynamicDetError when there are none."""
    s = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(scores)
    s = s.detach().cpu().flatten()
    if not s.is_floating_point():
        s = s.float()
    if s.numel() == 0:
        raise DynamicDetError(
            "the model has no validation router scores: run train-router to compute them"
        )
    return s
