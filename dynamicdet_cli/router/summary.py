"""What train-router reports: how well the router ranks images and what routing by it buys.

Numbers only where they mean something: ranks are compared on images the router never fit
(the validation set), and the router's AP at 50% hard is set against random routing of as
many images with a paired bootstrap interval (see sweep.py).
"""

from __future__ import annotations

import math

import torch
from rich.table import Table
from torch import Tensor

from dynamicdet_cli.evaluation.inference import RouteResults
from dynamicdet_cli.router.cache import RouterCache
from dynamicdet_cli.core.stats import spearman
from dynamicdet_cli.evaluation.sweep import compose_sweep

SUMMARY_RATIOS = (0.0, 0.5, 1.0)  # all easy, half hard, all hard


@torch.no_grad()
def _phi(router, v: Tensor) -> Tensor:
    router.eval()
    device = next(router.parameters()).device
    return router(v.to(device)).float().cpu()


def _gap_share(ap: float, ap_easy: float, ap_hard: float) -> float | None:
    """Share of the easy-to-hard AP gain recovered at `ap`; None without a positive gap."""
    if min(ap, ap_easy, ap_hard) < 0 or ap_hard - ap_easy <= 1e-9:
        return None
    return (ap - ap_easy) / (ap_hard - ap_easy)


def router_summary(model, train_cache: RouterCache, val_cache: RouterCache, val_set, routes: RouteResults,
                   delta: float, random_draws: int = 10, seed: int = 0) -> dict:
    """The numbers of the summary table (plain floats / ints / None).

    delta; share of target entries with phi > 0.5 (and of validation images); Spearman of
    phi against L1 - L2 on the targets and on val; val AP routed all easy, all hard, and 50%
    hard by the router and at random (mean, std over `random_draws`), the router's AP gain
    over random with its bootstrap 95% interval, and the share of the easy-to-hard AP gap
    each 50% routing recovers: (AP(0.5) - AP(0)) / (AP(1) - AP(0)). With the shapes data's
    known per-image difficulty, Spearman of phi against it on val.
    `routes`: both detectors' val results with the (new) router's scores, run_both_routes.
    """
    phi_train, phi_val = _phi(model.router, train_cache.v), _phi(model.router, val_cache.v)
    rows = compose_sweep(val_set.coco, routes.image_ids, routes.easy, routes.hard, routes.scores,
                         list(SUMMARY_RATIOS), None, None, random_draws=random_draws, seed=seed)
    easy, half, hard = rows
    summary = {
        "delta": float(delta),
        "train_entries": len(train_cache),
        "train_hard_share": float((phi_train > 0.5).float().mean()),
        "val_hard_share": float((phi_val > 0.5).float().mean()),
        "train_spearman": spearman(phi_train, train_cache.gain),
        "val_spearman": spearman(phi_val, val_cache.gain),
        "val_images": len(routes.image_ids),
        "ap_easy": easy["AP"],
        "ap_hard": hard["AP"],
        "ap_router_50": half["AP"],
        "hard_share_50": half["hard_share"],
        "ap_random_50": half["random_AP"],
        "ap_random_50_std": half["random_AP_std"],
        "gain_50": half["gain_vs_random"],
        "gain_50_lo": half["gain_lo"],
        "gain_50_hi": half["gain_hi"],
    }
    summary["gap_router_50"] = _gap_share(half["AP"], easy["AP"], hard["AP"])
    summary["gap_random_50"] = _gap_share(half["random_AP"], easy["AP"], hard["AP"])
    difficulty = [val_set.coco.imgs[i].get("difficulty") for i in routes.image_ids]
    if all(isinstance(d, (int, float)) for d in difficulty):  # the synthetic shapes data
        summary["val_spearman_known_difficulty"] = spearman(routes.scores, torch.tensor(difficulty))
    return summary


def _f(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def summary_table(summary: dict) -> Table:
    """What train-router did and how well the router ranks and routes."""
    s = summary
    table = Table(title="router training", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    if "targets" in s:
        table.add_row("targets (L1, L2) from", s["targets"])
    table.add_row("Delta = median(L1 - L2)", _f(s["delta"], 4))
    table.add_row("target images (views, loss draws)",
                  f"{s['train_entries']} ({s.get('views', 1)}, {s.get('draws', 1)})")
    table.add_row("share with phi > 0.5 (targets / val)", f"{_pct(s['train_hard_share'])} / {_pct(s['val_hard_share'])}")
    table.add_row("Spearman(phi, L1 - L2) targets / val", f"{_f(s['train_spearman'])} / {_f(s['val_spearman'])}")
    if "val_spearman_known_difficulty" in s:
        table.add_row("Spearman(phi, known difficulty) val", _f(s["val_spearman_known_difficulty"]))
    table.add_row("val AP all easy / all hard", f"{_f(s['ap_easy'])} / {_f(s['ap_hard'])}")
    table.add_row(f"val AP {_pct(s['hard_share_50'])} hard: router", _f(s["ap_router_50"]))
    table.add_row("  random routing (mean +- std)", f"{_f(s['ap_random_50'])} +- {_f(s['ap_random_50_std'])}")
    if s.get("gain_50") is not None:
        table.add_row("  router - random (95% bootstrap)",
                      f"{s['gain_50']:+.4f} [{_f(s['gain_50_lo'], 4)}, {_f(s['gain_50_hi'], 4)}]")
    table.add_row("AP gap recovered: router / random", f"{_pct(s['gap_router_50'])} / {_pct(s['gap_random_50'])}")
    if "cache_seconds" in s:
        stop = (f"epoch {s['best_epoch']} of {s['epochs']} (best on {s['held_out_images']} held-out images)"
                if s.get("held_out_images") else f"{s['epochs']} epochs (no held-out images)")
        table.add_row("router kept at", stop)
        table.add_row("time: cache / router epochs", f"{s['cache_seconds']:.1f} s / {s['train_seconds']:.1f} s")
    return table
