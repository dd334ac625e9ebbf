"""Fitting the router on its cache: the paper's loss, early-stopped on held-out images.

    L1, L2 = each detector's full detection loss on an image
    Delta  = exact median over the cache of (L1 - L2)
    L      = (1 - phi) (L1 - Delta/2) + phi (L2 + Delta/2),   dL/dphi = (L2 - L1) + Delta

The loss is linear in phi and L1 - L2 is a small difference of two noisy numbers, so a
router trained to convergence on a few thousand targets fits their noise: its logits
diverge and its ranking of unseen images changes from run to run (docs/method.md). The authors'
2 epochs at lr 1e-5 act as an early stop; here the stop is measured: a seeded share of the
cached images is held out, the router loss on them is computed after every epoch, and the
weights of the best epoch are kept.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import Tensor

from dynamicdet_cli.router.cache import RouterCache

LOGIT_BOUND = 8.0  # |router logit| on the training cache: phi within [3e-4, 1 - 3e-4], far from float32's 1.0
MIN_HELD_OUT = 16  # fewer held-out images than this give no usable stopping signal: train all epochs


def router_loss(phi: Tensor, l1: Tensor, l2: Tensor, delta: float) -> Tensor:
    """Mean over the batch of (1 - phi)(L1 - Delta/2) + phi (L2 + Delta/2); phi, l1, l2: B."""
    return ((1 - phi) * (l1 - delta / 2) + phi * (l2 + delta / 2)).mean()


def exact_median(x: Tensor) -> float:
    """The median of all values of `x`; for an even count, the mean of the two middle ones
    (torch.median returns the lower one)."""
    values = x.detach().flatten().double().sort().values
    n = values.numel()
    assert n > 0, "median of no values"
    mid = n // 2
    return float(values[mid]) if n % 2 else float((values[mid - 1] + values[mid]) / 2)


def reset_router(router, seed: int) -> None:
    """Fresh weights that depend only on `seed` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in router.modules():
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()


def _fold_standardisation(router, mean: Tensor, std: Tensor) -> None:
    """Make `router(v)` equal what it computed on (v - mean) / std: W1' = W1 / std,
    b1' = b1 - W1' mean. The router keeps its architecture and reads raw v at inference."""
    first = router.mlp[0]
    with torch.no_grad():
        w = first.weight / std  # hidden,d
        first.bias.sub_(w @ mean)
        first.weight.copy_(w)


def _temper(router, v: Tensor, bound: float) -> float:
    """Scale the last layer so that |logit| <= bound on `v`; returns the factor (<= 1).

    In float32, sigmoid is exactly 1.0 above ~17, and images tied at 1.0 make small hard
    ratios unreachable. A positive factor on the logit keeps the ranking and the phi > 0.5
    side of every image, which is all that routing uses. With early stopping it rarely
    has anything to do."""
    last = router.mlp[-1]
    with torch.no_grad():
        peak = float(router.logits(v).abs().max())
        factor = min(1.0, bound / peak) if peak > 0 else 1.0
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    return factor


@torch.no_grad()
def _held_out_loss(router, v: Tensor, l1: Tensor, l2: Tensor, delta: float) -> float:
    router.eval()
    loss = float(router_loss(router(v), l1, l2, delta))
    router.train()
    return loss


def train_router(router, cache: RouterCache, delta: float, epochs: int, lr: float, weight_decay: float,
                 batch_size: int, seed: int, holdout: float = 0.2) -> dict:
    """AdamW on router_loss over the cached vectors only (the detectors are not involved).

    A seeded `holdout` share of the cache's images is kept out of the fit; after every epoch
    the router loss on them is measured and the best epoch's weights are kept (no holdout,
    or fewer than MIN_HELD_OUT images: the last epoch's). Trains on standardised v (mean 0,
    std 1 per feature over the fitted entries: backbone stages differ in scale by orders of
    magnitude) and folds the standardisation into the first layer at the end, then scales
    the last layer down so no cached logit exceeds LOGIT_BOUND (`_temper`). The router's
    current weights are the starting point; batches are shuffled with a generator seeded
    by `seed`.
    Returns {"loss": fitted loss per epoch, "held_out_loss": per epoch (empty without a
    holdout), "best_epoch": 1-based, "held_out_images": int, "logit_scale": float,
    "seconds": float}.
    """
    start = time.perf_counter()
    device = next(router.parameters()).device
    fit, held = cache.split(holdout, seed) if holdout > 0 else (cache, cache.subset([]))
    if len(held) < MIN_HELD_OUT or len(fit) == 0:
        fit, held = cache, cache.subset([])
    mean, std = fit.v.mean(0), fit.v.std(0, unbiased=False)  # d
    # A feature (nearly) constant over the cache would get a huge weight after folding and
    # blow up on images where it is not: floor the scale at a tenth of the typical one.
    std = std.clamp_min(max(0.1 * float(std.median()), 1e-6))
    standard = lambda c: ((c.v - mean) / std).to(device)  # noqa: E731  N,d
    v, l1, l2 = standard(fit), fit.l1.to(device), fit.l2.to(device)
    hv, hl1, hl2 = standard(held), held.l1.to(device), held.l2.to(device)
    router.train()
    optimizer = torch.optim.AdamW(router.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history: list[float] = []
    held_history: list[float] = []
    best = (float("inf"), epochs, None)  # (held-out loss, epoch, weights)
    for epoch in range(1, epochs + 1):
        total = 0.0
        for index in torch.randperm(len(fit), generator=generator).split(batch_size):
            index = index.to(device)
            loss = router_loss(router(v[index]), l1[index], l2[index], delta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        history.append(total / len(fit))
        if len(held):
            held_history.append(_held_out_loss(router, hv, hl1, hl2, delta))
            if held_history[-1] < best[0]:
                best = (held_history[-1], epoch, copy.deepcopy(router.state_dict()))
    if best[2] is not None:
        router.load_state_dict(best[2])
    router.eval()
    _fold_standardisation(router, mean.to(device), std.to(device))
    factor = _temper(router, cache.v.to(device), LOGIT_BOUND)
    return {"loss": history, "held_out_loss": held_history, "best_epoch": best[1], "held_out_images": len(held),
            "logit_scale": factor, "seconds": time.perf_counter() - start}
