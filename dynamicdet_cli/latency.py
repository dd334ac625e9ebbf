"""Measuring each route's latency on this device, and storing calibrated operating points.

lat1 is the easy route (backbone 1 + router + detector 1), lat2 the hard route (backbone 1
+ router + composite + backbone 2 + detector 2), both per image at a given batch size and
input size: warm-up, then the median of repeated timed runs (synchronised on CUDA).
"""

from __future__ import annotations

import datetime as _dt

import torch

from dynamicdet_cli.calibrate import (expected_latency, hard_ratio_for_latency, hard_ratio_for_threshold,
                                      threshold_for_hard_ratio)
from dynamicdet_cli.errors import DynamicDetError


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


@torch.inference_mode()
def measure_routes(model, device: torch.device, batch_size: int, image_size: int,
                   warmup: int = 3, repeats: int = 10, images: list[torch.Tensor] | None = None) -> dict:
    """Per-image latency of each route, in ms, with the conditions it was measured under.

    `images` (default: random images of `image_size`) are the batch that is timed; random
    content is fine for a fixed-size detector, real images can be given.
    """
    from dynamicdet_cli.calibrate import measure_latency

    model.eval()
    if images is None:
        gen = torch.Generator().manual_seed(0)
        images = [torch.rand(3, image_size, image_size, generator=gen) for _ in range(batch_size)]
    images = [im.to(device) for im in images]
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    run = {route: (lambda route=route: model(images, route=route)) for route in ("easy", "hard")}
    for route in run:
        measure_latency(run[route], warmup=warmup, repeats=1, sync=sync)
    # Interleave the routes' timed runs so slow drift (heat, other load) hits both alike.
    samples = {"easy": [], "hard": []}
    for _ in range(repeats):
        for route in run:
            samples[route].append(measure_latency(run[route], warmup=0, repeats=1, sync=sync))
    samples = {r: sorted(v)[len(v) // 2] for r, v in samples.items()}
    return {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "batch_size": len(images),
        "image_size": image_size,
        "easy_ms": samples["easy"] / len(images),
        "hard_ms": samples["hard"] / len(images),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def store_latency(ckpt: dict, measured: dict) -> int:
    """Add a measurement to the checkpoint, replacing one taken under the same conditions."""
    keys = ("device", "threads", "batch_size", "image_size")
    ckpt["latency"] = [m for m in ckpt["latency"] if any(m[k] != measured[k] for k in keys)]
    ckpt["latency"].append(measured)
    return len(ckpt["latency"]) - 1


def validation_scores(ckpt: dict) -> torch.Tensor:
    val = ckpt.get("validation")
    if ckpt.get("router") is None or not val or len(val["image_ids"]) == 0:
        raise DynamicDetError("the checkpoint has no trained router / validation scores: run train-router first")
    return val["scores"].float()


def operating_point(ckpt: dict, *, target_ms: float | None = None, hard_ratio: float | None = None,
                    threshold: float | None = None, latency: dict | None = None, clamp: bool = False) -> dict:
    """An operating point from exactly one of: a target latency (needs `latency`), a hard
    ratio k, or a threshold tau. Returns dict(tau, hard_ratio, target_ms, expected_ms)."""
    given = [x is not None for x in (target_ms, hard_ratio, threshold)]
    if sum(given) != 1:
        raise DynamicDetError("give exactly one of --latency, --hard-ratio or --threshold")
    scores = validation_scores(ckpt)
    if target_ms is not None:
        if latency is None:
            raise DynamicDetError("a latency target needs a latency measurement on this device")
        hard_ratio = hard_ratio_for_latency(target_ms, latency["easy_ms"], latency["hard_ms"], clamp=clamp)
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise DynamicDetError(f"--threshold {threshold}: must lie in [0, 1]")
        tau = float(threshold)
    else:
        if not 0.0 <= hard_ratio <= 1.0:
            raise DynamicDetError(f"--hard-ratio {hard_ratio}: must lie in [0, 1]")
        tau = threshold_for_hard_ratio(scores, hard_ratio)
    share = hard_ratio_for_threshold(scores, tau)
    point = {"tau": float(tau), "hard_ratio": float(share), "target_ms": target_ms, "expected_ms": None}
    if latency is not None:
        point["expected_ms"] = expected_latency(share, latency["easy_ms"], latency["hard_ms"])
        point.update({k: latency[k] for k in ("device", "batch_size", "image_size")})
    return point


def stored_latency(ckpt: dict, device: str, batch_size: int, image_size: int) -> dict | None:
    """The measurement stored for exactly these conditions (and this thread count), or None."""
    for m in ckpt["latency"]:
        if (m["device"], m["batch_size"], m["image_size"], m["threads"]) == (
                device, batch_size, image_size, torch.get_num_threads()):
            return m
    return None


def latest_latency(ckpt: dict, device: str | None = None) -> dict | None:
    """The most recent latency measurement (on `device` if given), or None."""
    for m in reversed(ckpt["latency"]):
        if device is None or m["device"] == device:
            return m
    return None
