"""stats: rank correlation and percentile intervals."""

from __future__ import annotations

import pytest
import torch

from dynamicdet_cli.core.stats import percentile_interval, spearman


def test_spearman_ties_and_edge_cases():
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 45])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    # ties take their average rank: ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4]
    ra, rb = torch.tensor([1, 2.5, 2.5, 4]), torch.tensor([1.0, 2, 3, 4])
    want = torch.corrcoef(torch.stack([ra, rb]))[0, 1].item()
    assert spearman(torch.tensor([1.0, 2, 2, 3]), torch.tensor([1.0, 2, 3, 4])) == pytest.approx(want)
    assert spearman(torch.ones(4), torch.arange(4.0)) != spearman(torch.ones(4), torch.arange(4.0))  # NaN


def test_percentile_interval_covers_the_central_share():
    lo, hi = percentile_interval([float(i) for i in range(101)])
    assert lo == pytest.approx(2.5) and hi == pytest.approx(97.5)
