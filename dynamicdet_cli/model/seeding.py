"""Seeding the random draws of torchvision's samplers, cheaply, once per image."""

from __future__ import annotations

import torch


def seed_sampling(seed: int, device: torch.device) -> None:
    """Seed the generator that random ops on `device` draw from, as `torch.manual_seed(seed)`
    does for that device.

    Not torch.manual_seed itself: on a machine where CUDA, XPU or MPS is not initialised, every
    call also queues a lazy seeding of each of them with a recorded stack trace, which made a
    large share of train-router's time when each image's sampling is seeded
    (docs/benchmarks.md#small-costs-in-the-code).
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):  # this device's generator, not the current device's
            torch.cuda.manual_seed(seed)


def draw_seed(seed: int, draw: int) -> int:
    """The seed of draw `draw` of an image whose sampling is seeded by `seed` (see
    DynamicDetector.per_image_losses): distinct draws, the same for the same image."""
    return int(seed) * 1009 + int(draw)
