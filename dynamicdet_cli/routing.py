"""Turning the route options a user gives into the model's route ("easy", "hard" or tau).

Options (at most one): --latency T (needs a measurement stored by `calibrate` on this
device), --hard-ratio K, --threshold TAU, --point NAME (a stored operating point). With
none: the operating point named "default" if stored, else the only stored point, else the
hard route when no router is trained, else 50% hard.
"""

from __future__ import annotations

from dynamicdet_cli.calibrate import parse_latency
from dynamicdet_cli.errors import DynamicDetError
from dynamicdet_cli.latency import latest_latency, operating_point


def resolve_route(ckpt: dict, *, latency: str | None = None, hard_ratio: float | None = None,
                  threshold: float | None = None, point: str | None = None,
                  device: str | None = None) -> tuple[str | float, str]:
    """(route, one-line description of how it was chosen)."""
    given = [x is not None for x in (latency, hard_ratio, threshold, point)]
    if sum(given) > 1:
        raise DynamicDetError("give at most one of --latency, --hard-ratio, --threshold, --point")
    points = ckpt["operating_points"]
    if point is not None:
        if point in ("easy", "hard"):
            return point, f"the {point} route for every image"
        if point not in points:
            names = ", ".join(points) or "none stored: run calibrate"
            raise DynamicDetError(f"no operating point named {point!r} in the checkpoint ({names})")
        p = points[point]
        return p["tau"], f"operating point '{point}': tau {p['tau']:.4f}, {100 * p['hard_ratio']:.0f}% hard on val"
    if latency is not None:
        measured = latest_latency(ckpt, device)
        if measured is None:
            raise DynamicDetError(f"no latency measured on {device or 'any device'}: run "
                                  "`dynamicdet calibrate MODEL --latency ...` on this device first")
        p = operating_point(ckpt, target_ms=parse_latency(latency), latency=measured)
        return p["tau"], f"target {p['target_ms']:.1f} ms: tau {p['tau']:.4f}, {100 * p['hard_ratio']:.0f}% hard on val"
    if hard_ratio is not None or threshold is not None:
        p = operating_point(ckpt, hard_ratio=hard_ratio, threshold=threshold)
        return p["tau"], f"tau {p['tau']:.4f}, {100 * p['hard_ratio']:.0f}% hard on val"
    if "default" in points or len(points) == 1:
        name = "default" if "default" in points else next(iter(points))
        return resolve_route(ckpt, point=name)
    if ckpt["router"] is None:
        return "hard", "hard route for every image (no router trained)"
    return resolve_route(ckpt, hard_ratio=0.5)
