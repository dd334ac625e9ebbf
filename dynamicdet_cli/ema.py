"""The exponential moving average of the weights that YOLO-style training evaluates and saves.

    decay(step) = ema_decay x (1 - exp(-step / (ema_ramp x total_steps)))
    average     = decay x average + (1 - decay) x weights          after every optimizer step

The ramp is a share of the run, not a fixed number of steps: with a fixed ramp (YOLOv5's 2000
steps) a run of a few hundred steps would still be averaging in its random start when it ends.
BatchNorm's running statistics are averaged with the weights; integer counters are copied.
Built on torch's AveragedModel (torch.optim.swa_utils), which holds the averaged copy.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(step: float, decay: float, ramp: float, total_steps: int) -> float:
    """The average's decay after `step` updates (see the module docstring)."""
    return decay * (1.0 - math.exp(-step / max(ramp * total_steps, 1e-9)))


def weight_average(model: nn.Module, decay: float, ramp: float, total_steps: int) -> AveragedModel:
    """An AveragedModel of `model` (on its device) updated by `ema.update_parameters(model)`."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1.0 - ema_decay_at(float(n_averaged), decay, ramp, total_steps))

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
