"""Small statistics the summaries share: rank correlation and percentile intervals."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _ranks(x: Tensor) -> Tensor:
    """1-based ranks of the values of `x`, ties given their average rank. N, float64"""
    x = x.detach().flatten().double().cpu()
    unique, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # 0-based rank of each unique value's first copy
    return (first + (counts + 1) / 2).double()[inverse]


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long vectors (ties averaged); NaN when
    either is constant or has fewer than two values."""
    a, b = torch.as_tensor(a).flatten(), torch.as_tensor(b).flatten()
    assert a.numel() == b.numel(), f"spearman of {a.numel()} and {b.numel()} values"
    if a.numel() < 2:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.square().sum() * rb.square().sum()).sqrt()
    return float((ra * rb).sum() / denom) if denom > 0 else math.nan


def percentile_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of bootstrap replicates (percentile method)."""
    assert values, "an interval of no values"
    v = torch.tensor(values, dtype=torch.float64)
    tail = (1 - level) / 2
    return float(torch.quantile(v, tail)), float(torch.quantile(v, 1 - tail))


def held_out(ids: list[int], share: float, seed: int) -> set[int]:
    """A seeded `share` of `ids` (round(share * len)): the same (ids, share, seed), the same
    set. Used wherever images are held out (step 1's router holdout, the router's early stop)."""
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    return {ids[i] for i in order[:round(share * len(ids))]}
