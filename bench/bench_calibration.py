"""Bench: does a calibrated latency target hold on the validation images, at batch 1 and 8?

    python bench/bench_calibration.py CKPT [--batch-sizes 1,8] [--repeats 5] [--threads 2]
                                      [--device cpu] [--mixed-batch 8]

CKPT: a checkpoint with a trained router whose validation images are recorded (train-router
records them). For each batch size:

  1. lat1 / lat2 measured exactly as `calibrate` measures them (timing_images' validation
     images, latency.measure_routes, --repeats passes);
  2. targets 25%, 50% and 75% of the way from lat1 to lat2, each turned into tau by
     `operating_point` on the stored validation scores;
  3. the model run under each tau over all the validation images: the mean model time per
     image (median of --repeats passes; the three taus and the all-easy / all-hard routes
     take turns on every batch), against the target. Goal: within 5% on CPU.
     Shown alongside: lat1 / lat2 re-measured in the same passes (the drift since step 1),
     the error against the target moved with that drift (the same share of the way from the
     re-measured lat1 to lat2: what is left when the device's own change of speed is divided
     out), and the linear model lat1 + share (lat2 - lat1) at the share actually routed hard.
     The spread of the all-easy passes ((max - min) / median) is the noise floor of the run.

Then the mixed-batch linearity: batches of --mixed-batch images in which each batch's own
phi sends round(k B) images hard, k = 0, .25, .5, .75, 1, against lat1 + k (lat2 - lat1),
lat1 / lat2 being the k = 0 / k = 1 batches of the same passes. Goal: within 5%. Each k runs
twice in the same passes: regrouped (each route on full batches across input batches) and
split batch by batch (as model.detect splits a batch); calibrate, predict and evaluate take
the one regrouping.regroup_pays picks for the thread count and device.

Every figure is a ratio against a baseline measured in the same run. Model time only:
images are decoded once up front and the clock spans the model call. The load average is
printed before each figure: on a shared CPU, timings move with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynamicdet_cli.speed.calibrate import threshold_for_hard_ratio  # noqa: E402
from dynamicdet_cli.checkpoint.store import load_checkpoint, model_from_checkpoint  # noqa: E402
from dynamicdet_cli.speed.latency import curve_thresholds, measure_routes, operating_point, spread_pct  # noqa: E402
from dynamicdet_cli.speed.batcher import RouteBatcher, regroup_pays  # noqa: E402
from dynamicdet_cli.speed.regime import Regime  # noqa: E402
from dynamicdet_cli.speed.timing_images import timing_images  # noqa: E402
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it

SHARES = (0.25, 0.5, 0.75)  # targets: this far from lat1 to lat2
MIXED_RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


@torch.inference_mode()
def interleaved(model, batches: list[list[torch.Tensor]], plans: dict, device: torch.device,
                repeats: int) -> dict:
    """plan name -> (median ms per image over `repeats` passes, images routed hard per pass,
    spread of the passes in %: (max - min) / median).

    A plan is (how, a route per batch): the batches run through one RouteBatcher per pass
    (the last batch's time includes what is left), which with how "regrouped" runs each route
    on full batches, with "per batch" splits each batch by route, and with "commands" does
    what calibrate, predict and evaluate do here (regrouping.regroup_pays). On every batch
    all plans run, in an order that
    rotates from batch to batch and pass to pass, so drift and other load hit them alike.
    One untimed warm-up pass over the first two batches per plan first."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = list(plans)

    def steps(name: str, upto: int, spent: dict):
        """Plan `name` over batches[:upto], one batch per step (its time added to spent[name]);
        the last step yields the number of images routed hard."""
        how, routes = plans[name]
        batcher = RouteBatcher(model, routes[0], len(batches[0]),
                               regroup={"regrouped": True, "per batch": False, "commands": None}[how])
        hard = 0
        for i, batch in enumerate(batches[:upto]):
            sync()
            start = time.perf_counter()
            out = [d.detection for d in batcher.add(batch, range(len(batch)), route=routes[i])]
            if i == upto - 1:
                out += [d.detection for d in batcher.finish()]
            sync()
            spent[name] += time.perf_counter() - start
            hard += sum(o["route"] == "hard" for o in out)
            yield hard

    for name in names:
        for _ in steps(name, min(2, len(batches)), dict.fromkeys(names, 0.0)):
            pass
    passes = {name: [] for name in names}
    hard = dict.fromkeys(names, 0)
    n_images = sum(len(b) for b in batches)
    for rep in range(repeats):
        spent = dict.fromkeys(names, 0.0)
        runs = {name: steps(name, len(batches), spent) for name in names}
        for i in range(len(batches)):
            shift = (i + rep) % len(names)
            for name in names[shift:] + names[:shift]:
                hard[name] = next(runs[name])
        for name in names:
            passes[name].append(1e3 * spent[name] / n_images)
    return {name: (statistics.median(passes[name]), hard[name], spread_pct(passes[name])) for name in names}


def _batches(images: list, size: int) -> list[list]:
    return [images[i:i + size] for i in range(0, len(images), size)]


def calibration_figure(model, ckpt, images, device, batch_size: int,
                       repeats: int) -> tuple[list[float], list[float]]:
    """Targets at 25/50/75% vs the mean latency achieved; returns (errors, drift-corrected
    errors) in %."""
    print(f"\n{batch_size=}: calibration on {len(images)} validation images ({_load()})")
    measured = measure_routes(model, device, images, batch_size, repeats=repeats, source="validation images",
                              mixed_taus=curve_thresholds(ckpt))
    lat1, lat2 = measured.easy_ms, measured.hard_ms
    print(f"   calibrate's measurement: lat1 {lat1:.2f}, lat2 {lat2:.2f} ms per image "
          f"({Regime.of_record(measured).describe()})")
    points = {}
    for share in SHARES:
        target = lat1 + share * (lat2 - lat1)
        points[share] = (target, operating_point(ckpt, target_ms=target, latency=measured))
    batches = _batches(images, batch_size)
    plans = {"easy": ("commands", ["easy"] * len(batches)), "hard": ("commands", ["hard"] * len(batches))}
    plans.update({share: ("commands", [p.tau] * len(batches)) for share, (_, p) in points.items()})
    result = interleaved(model, batches, plans, device, repeats)
    lat1b, lat2b = result["easy"][0], result["hard"][0]
    print(f"   re-measured in the same passes: lat1 {lat1b:.2f} ({100 * (lat1b - lat1) / lat1:+.1f}%), "
          f"lat2 {lat2b:.2f} ({100 * (lat2b - lat2) / lat2:+.1f}%) ms per image; all-easy passes "
          f"spread {result['easy'][2]:.1f}%")
    print("   target at   target ms   k val   tau      hard here   achieved ms   error   drift-corrected   "
          "linear model at share")
    errors, corrected = [], []
    for share, (target, p) in points.items():
        ms, n_hard, _ = result[share]
        here = n_hard / len(images)
        linear = lat1b + here * (lat2b - lat1b)
        moved = lat1b + share * (lat2b - lat1b)  # the target, moved with the device's drift
        errors.append(100 * (ms - target) / target)
        corrected.append(100 * (ms - moved) / moved)
        print(f"   {100 * share:8.0f}%   {target:9.2f}   {p.hard_ratio:5.3f}   {p.tau:.4f}   "
              f"{100 * here:8.1f}%   {ms:11.2f}   {errors[-1]:+5.1f}%   {moved:6.2f} ({corrected[-1]:+5.1f}%)   "
              f"{linear:.2f} ({100 * (ms - linear) / linear:+.1f}%)")
    return errors, corrected


@torch.inference_mode()
def batch_tau(model, images: list[torch.Tensor], k: float) -> float:
    """A threshold that sends round(k B) of this batch's images hard, from the batch's own phi."""
    phi = torch.stack([out["difficulty"] for out in model(images, route="easy")])  # B
    return threshold_for_hard_ratio(phi, k)


def linearity_figure(model, images, device, batch_size: int, repeats: int) -> list[float]:
    """Mixed batches at k against lat1 + k (lat2 - lat1), regrouped and split batch by batch;
    returns the errors in % of the way the commands run here (regrouping.regroup_pays)."""
    print(f"\nmixed-route batches of {batch_size} ({_load()})")
    batches = [b for b in _batches(images, batch_size) if len(b) == batch_size]
    taus = {k: [batch_tau(model, b, k) for b in batches] for k in MIXED_RATIOS}
    plans = {(how, k): (how, taus[k]) for k in MIXED_RATIOS for how in ("regrouped", "per batch")}
    result = interleaved(model, batches, plans, device, repeats)
    print(f"   {len(batches)} batches, {repeats} passes; all-easy passes spread "
          f"{result[('regrouped', 0.0)][2]:.1f}%; the commands run "
          f"{'regrouped' if regroup_pays(device) else 'per batch'} here")
    print("       k   hard/batch   regrouped ms   line      error   |   per batch ms   line      error")
    errors = []
    for k in MIXED_RATIOS:
        cells = []
        for how in ("regrouped", "per batch"):
            lat1, lat2 = result[(how, 0.0)][0], result[(how, 1.0)][0]
            ms, n_hard, _ = result[(how, k)]
            share = n_hard / (len(batches) * batch_size)
            linear = lat1 + share * (lat2 - lat1)
            err = 100 * (ms - linear) / linear
            cells.append(f"{ms:12.2f}   {linear:6.2f}   {err:+5.1f}%")
            if (how == "regrouped") == regroup_pays(device):
                errors.append(err)
        print(f"   {k:5.2f}   {n_hard / len(batches):10.2f}   " + "   |   ".join(cells))
    return errors


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--batch-sizes", default="1,8", help="batch sizes of the calibration figure")
    ap.add_argument("--mixed-batch", type=int, default=8, help="batch size of the linearity figure (0: skip)")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes over the validation images (median)")
    ap.add_argument("--max-images", type=int, default=128, help="validation images used, spread over the set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.router is None:
        raise SystemExit(f"{args.checkpoint}: no trained router; run train-router first")
    model = model_from_checkpoint(ckpt, device).eval()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"{args.checkpoint}: {torch.get_num_threads()} threads, device {args.device}, {args.repeats} passes; "
          f"{_load()}")
    worst = {}
    for batch_size in sizes:
        chosen = timing_images(ckpt, batch_size, args.max_images)
        if chosen.warning:
            raise SystemExit(f"{args.checkpoint}: {chosen.warning}")
        errors, corrected = calibration_figure(model, ckpt, chosen.images, device, batch_size, args.repeats)
        worst[f"batch {batch_size}"] = max(map(abs, errors))
        worst[f"batch {batch_size} drift-corrected"] = max(map(abs, corrected))
    if args.mixed_batch:
        chosen = timing_images(ckpt, args.mixed_batch, args.max_images)
        worst["mixed"] = max(map(abs, linearity_figure(model, chosen.images, device, args.mixed_batch,
                                                       args.repeats)))
    print("\nworst |error| (goal 5%): " + ", ".join(f"{name} {err:.1f}%" for name, err in worst.items()))
    print(f"end: {_load()}")


if __name__ == "__main__":
    main()
