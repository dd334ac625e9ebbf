"""Turning the route options a user gives into the model's route ("easy", "hard" or tau).

Options (at most one): --latency T (needs the measurement `calibrate` stored for the regime
this run is in: device, batch size, input size, threads, dtype), --hard-ratio K,
--threshold TAU, --point NAME (a stored operating point). With none: the operating point
named "default" if stored, else the only stored point, else the hard route when no router
is trained, else 50% hard.

--speed held (hold_target) holds a latency target online from there: the target of --latency,
or of the point chosen, which must have been calibrated with one.
"""

from __future__ import annotations

from dynamicdet_cli.checkpoint.types import Checkpoint, OperatingPoint
from dynamicdet_cli.speed.calibrate import target_latency_ms
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.speed.hold import LatencyHold
from dynamicdet_cli.speed.latency import operating_point
from dynamicdet_cli.speed.regime import Regime, find_latency, missing_latency


def resolve_route(ckpt: Checkpoint, *, latency: str | None = None, hard_ratio: float | None = None,
                  threshold: float | None = None, point: str | None = None,
                  regime: Regime | None = None, checkpoint: str = "MODEL") -> tuple[str | float, str]:
    """(route, one-line description of how it was chosen).

    `regime` is the one this run is in (Regime.of_run); a latency target uses the measurement
    of that regime only, and a stored point calibrated for another regime says so in the
    description. `checkpoint` is the path shown in the command that measures a missing regime.
    """
    given = [x is not None for x in (latency, hard_ratio, threshold, point)]
    if sum(given) > 1:
        raise DynamicDetError("give at most one of --latency, --hard-ratio, --threshold, --point")
    points = ckpt.operating_points
    if point is not None:
        if point in ("easy", "hard"):
            return point, f"the {point} route for every image"
        if point not in points:
            names = f"stored: {', '.join(points)}" if points else "none stored: run calibrate"
            raise DynamicDetError(f"no operating point named {point!r} in the checkpoint ({names}; or easy, hard)")
        p = points[point]
        text = f"operating point '{point}': tau {p.tau:.4f}, {100 * p.hard_ratio:.0f}% hard on val"
        return p.tau, text + _regime_note(p, regime)
    if latency is not None:
        if regime is None:
            raise DynamicDetError("a latency target needs the regime this run is in (device, batch size, ...)")
        measured = find_latency(ckpt, regime)
        if measured is None:
            raise DynamicDetError(missing_latency(ckpt, regime, checkpoint))
        p = operating_point(ckpt, target_ms=target_latency_ms(latency, measured.easy_ms, measured.hard_ms),
                            latency=measured)
        return p.tau, (f"target {p.target_ms:.1f} ms: tau {p.tau:.4f}, {100 * p.hard_ratio:.0f}% hard "
                       f"on val (lat1 {measured.easy_ms:.2f}, lat2 {measured.hard_ms:.2f} ms "
                          f"at {regime.describe()})")
    if hard_ratio is not None or threshold is not None:
        p = operating_point(ckpt, hard_ratio=hard_ratio, threshold=threshold)
        return p.tau, f"tau {p.tau:.4f}, {100 * p.hard_ratio:.0f}% hard on val"
    if ckpt.default_point is not None:
        return resolve_route(ckpt, point=ckpt.default_point, regime=regime)
    if ckpt.router is None:
        return "hard", "hard route for every image (no router trained)"
    return resolve_route(ckpt, hard_ratio=0.5)


def _regime_note(point: OperatingPoint, regime: Regime | None) -> str:
    """'' unless the point's latency target was calibrated for another regime than this run's."""
    if point.target_ms is None or regime is None or regime.matches(point):
        return ""
    calibrated = Regime.of_record(point).describe() if point.has_regime else "an unrecorded regime"
    return (f"; its {point.target_ms:.1f} ms target was calibrated for {calibrated}, not this run's "
            f"{regime.describe()}, so the target is not promised here")


def hold_target(ckpt: Checkpoint, route, *, latency: str | None = None, hard_ratio: float | None = None,
                threshold: float | None = None, point: str | None = None, regime: Regime,
                checkpoint: str = "MODEL") -> LatencyHold:
    """The controller that holds the run's latency target, starting at `route` (the tau
    resolve_route chose with the same options) and at the route costs stored for `regime`.

    The target is --latency's, or else the chosen stored point's (`point`, or the point
    resolve_route falls back on). A route with no target (--hard-ratio, --threshold, easy,
    hard, a point stored without one), or no measurement of this regime, is a one-line error.
    """
    no_target = DynamicDetError("--speed held holds a latency target: give --latency (e.g. 40ms or 50%), or a "
                                "--point that calibrate stored with --latency")
    if hard_ratio is not None or threshold is not None:
        raise no_target
    measured = find_latency(ckpt, regime)
    if measured is None:
        raise DynamicDetError(missing_latency(ckpt, regime, checkpoint))
    if latency is not None:
        target = target_latency_ms(latency, measured.easy_ms, measured.hard_ms)
    else:
        points = ckpt.operating_points
        name = point if point is not None else ckpt.default_point
        target = points[name].target_ms if name in points else None
    if target is None or isinstance(route, str):
        raise no_target
    return LatencyHold(target, measured.easy_ms, measured.hard_ms, float(route), curve=measured.curve_ms)
