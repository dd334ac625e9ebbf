"""Replay: the held target's controller on stored router scores, with a simulated clock.

    python bench/replay_hold.py CKPT [--images 256] [--target 75%] [--slow 1.2] [--noise 0.1]
                                [--seeds 10] [--draws 1] [--horizon 64 32] [--window 64]
                                [--memory 0.8] [--out DIR]

bench_hold.py times the real model, so each of its runs takes minutes and moves with the
machine's load; this replays `LatencyHold` (dynamicdet_cli/speed/hold.py) in seconds, to compare
its settings on equal terms before spending timed runs on them. It is a model of the loop, not a
measurement: what it finds must be confirmed by bench_hold.py.

  1. the three streams of bench_hold.py (same seeds, same sizes; --draws N adds N - 1 more of
     each kind, drawn with other seeds), each run once through both detectors (untimed):
     every image's router score and both routes' detections;
  2. per setting (each --window with each --horizon and each --memory) and per seed: the stream in batches of
     --batch-size, routed at the controller's tau; each batch "costs" lat1 per easy image and
     lat2 per hard one (the checkpoint's first stored calibration, or --lat1 / --lat2), times
     --slow from the middle batch on, times a log-normal factor of sigma --noise per batch
     (the timing noise of a busy device); the fake clock advances by that;
  3. reported per kind of stream, mean over seeds and draws: the second half's latency against
     the target, and the AP of the routing minus the AP of thresholds that send as many images
     hard in each half (bench_hold.py's "same count per half"); then over all streams, with the
     standard error of that AP difference across streams (each stream's mean over seeds).

Routes run as the images are routed (predict regroups hard images into full batches, which
delays what the controller learns by up to a batch; the replay leaves that out).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynamicdet_cli.checkpoint.store import load_checkpoint, model_from_checkpoint  # noqa: E402
from dynamicdet_cli.speed.calibrate import hard_ratio_for_latency, target_latency_ms, threshold_for_hard_ratio  # noqa: E402
from dynamicdet_cli.speed.hold import HORIZON, MEMORY, WINDOW, LatencyHold  # noqa: E402
from bench_hold import STREAMS, make_stream, score_stream  # noqa: E402  (bench/, on sys.path as this script's folder)


class FakeClock:
    """Seconds, advanced by the replay rather than by time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def load_stream(model, folder: Path, s: int, images: int, size: int, batch_size: int, draw: int = 0) -> dict:
    """Stream number `s`, draw `draw` (bench_hold.make_stream) scored once (bench_hold.score_stream),
    with its router scores in file order."""
    make_stream(folder, s, images, size, draw)
    stream = score_stream(model, folder, batch_size)
    stream["scores"] = [stream["score"][i] for i in stream["in_order"]]
    return stream


def ap(stream: dict, hard_positions: set[int]) -> float:
    """AP of routing hard the images at these positions in file order."""
    hard = {stream["in_order"][i] for i in hard_positions}
    resampled = stream["resampled"]
    return resampled.ap([i in hard for i in resampled.image_ids], [1] * len(resampled.image_ids))


def replay(stream: dict, hold: LatencyHold, clock: FakeClock, lat1: float, lat2: float, target_ms: float,
           slow: float, noise: float, batch_size: int, rng: random.Random) -> tuple[float, float]:
    """(second-half gap against the target, AP minus the per-half same-count thresholds' AP)."""
    scores, n = stream["scores"], len(stream["scores"])
    half, hard, spent = n // 2, set(), []
    for start in range(0, n, batch_size):
        batch = scores[start:start + batch_size]
        hold.start()
        routed = [s > hold.tau for s in batch]  # predict's rule: hard where the score exceeds tau
        factor = (slow if start >= half else 1.0) * rng.lognormvariate(0.0, noise)
        costs = [(lat2 if r else lat1) * factor for r in routed]
        clock.now += sum(costs) / 1000.0
        spent += costs
        hard |= {start + i for i, r in enumerate(routed) if r}
        hold.update(batch, routed.count(False), routed.count(True))
    same = set()
    for lo, hi in ((0, half), (half, n)):
        k = sum(lo <= i < hi for i in hard)
        same |= set(sorted(range(lo, hi), key=lambda i: -scores[i])[:k])
    return statistics.fmean(spent[half:]) / target_ms - 1.0, ap(stream, hard) - ap(stream, same)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint with a trained router and a stored calibration")
    parser.add_argument("--images", type=int, default=256, help="images per stream")
    parser.add_argument("--target", default="75%", help="latency target, as calibrate --latency takes it")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lat1", type=float, default=None, help="easy route ms per image (default: stored)")
    parser.add_argument("--lat2", type=float, default=None, help="hard route ms per image (default: stored)")
    parser.add_argument("--slow", type=float, default=1.2, help="cost factor from the middle batch on")
    parser.add_argument("--noise", type=float, default=0.1, help="sigma of the log-normal noise per batch")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--draws", type=int, default=1, help="streams of each kind (the first: bench_hold.py's)")
    parser.add_argument("--horizon", type=float, nargs="+", default=[HORIZON])
    parser.add_argument("--window", type=int, nargs="+", default=[WINDOW])
    parser.add_argument("--memory", type=float, nargs="+", default=[MEMORY])
    parser.add_argument("--out", type=Path, default=None, help="folder for the streams and replay_hold.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = args.out or Path(tempfile.mkdtemp(prefix="replay_hold-"))
    out.mkdir(parents=True, exist_ok=True)

    ckpt = load_checkpoint(args.checkpoint)
    if (args.lat1 is None or args.lat2 is None) and not ckpt.latency:
        parser.error("the checkpoint stores no calibration: give --lat1 and --lat2")
    stored = ckpt.latency[0] if ckpt.latency else None
    lat1 = args.lat1 if args.lat1 is not None else stored.easy_ms
    lat2 = args.lat2 if args.lat2 is not None else stored.hard_ms
    target_ms = target_latency_ms(args.target, lat1, lat2)
    if ckpt.validation is None:
        parser.error("the checkpoint records no validation scores: train-router records them")
    tau0 = threshold_for_hard_ratio(ckpt.validation.scores.tolist(), hard_ratio_for_latency(target_ms, lat1, lat2))
    model = model_from_checkpoint(ckpt, torch.device("cpu")).eval()
    size = int(model.transform.min_size[-1])
    streams = {(name, d): load_stream(model, out / (f"stream{s}" if d == 0 else f"stream{s}-draw{d}"), s,
                                      args.images, size, args.batch_size, d)
               for d in range(args.draws) for s, name in enumerate(STREAMS)}
    print(f"lat1 {lat1:.2f} ms, lat2 {lat2:.2f} ms, target {target_ms:.2f} ms, tau0 {tau0:.4f}; slow-down x{args.slow} "
          f"from the middle batch, noise {args.noise} per batch, {args.seeds} seeds, {args.draws} draw(s) of each stream")
    rows = []
    for window in args.window:
        for horizon in args.horizon:
            for memory in args.memory:
                setting = f"window {window:>4} horizon {horizon:>5g} memory {memory:g}"
                per_stream = {}  # (kind, draw) -> [(gap, gain) per seed]
                for key, stream in streams.items():
                    for seed in range(args.seeds):
                        clock = FakeClock()
                        hold = LatencyHold(target_ms, lat1, lat2, tau0, window=window, horizon=horizon, memory=memory,
                                           clock=clock)
                        per_stream.setdefault(key, []).append(
                            replay(stream, hold, clock, lat1, lat2, target_ms, args.slow, args.noise, args.batch_size,
                                   random.Random(seed)))
                for name in [*STREAMS, "all streams"]:
                    keys = [k for k in per_stream if name in (k[0], "all streams")]
                    gaps = [g for k in keys for g, _ in per_stream[k]]
                    gains = [statistics.fmean(a for _, a in per_stream[k]) for k in keys]  # per stream, over seeds
                    row = {"window": window, "horizon": horizon, "memory": memory, "stream": name, "streams": len(keys),
                           "second_half_gap_mean": statistics.fmean(gaps), "second_half_gap_sd": statistics.pstdev(gaps),
                           "second_half_gap_worst": max(gaps, key=abs),
                           "within_5pct": sum(abs(g) <= 0.05 for g in gaps) / len(gaps),
                           "AP_minus_per_half_fixed": statistics.fmean(gains),
                           "AP_minus_per_half_fixed_se": (statistics.stdev(gains) / len(gains) ** 0.5
                                                          if len(gains) > 1 else None)}
                    rows.append(row)
                    se = row["AP_minus_per_half_fixed_se"]
                    print(f"{setting} {name:>22}: second half {100 * row['second_half_gap_mean']:+.1f}% "
                          f"(sd {100 * row['second_half_gap_sd']:.1f}, worst {100 * row['second_half_gap_worst']:+.1f}%, "
                          f"within 5% {100 * row['within_5pct']:.0f}%), AP - per-half fixed "
                          f"{row['AP_minus_per_half_fixed']:+.4f}" + ("" if se is None else f" (se {se:.4f})"),
                          flush=True)
    (out / "replay_hold.json").write_text(json.dumps(
        {"checkpoint": str(args.checkpoint), "lat1_ms": lat1, "lat2_ms": lat2, "target_ms": target_ms, "tau0": tau0,
         "slow": args.slow, "noise": args.noise, "seeds": args.seeds, "draws": args.draws, "rows": rows}, indent=1))
    print(f"wrote {out / 'replay_hold.json'}")


if __name__ == "__main__":
    main()
