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


class _Decay:
    """The decay of the next update, from a step count kept on the host: reading AveragedModel's
    own counter (a tensor on the model's device) would synchronise CUDA at every step."""

    def __init__(self, decay: float, ramp: float, total_steps: int):
        self.decay, self.ramp, self.total_steps = decay, ramp, total_steps
        self.step: int | None = None  # read once from the counter, on the first update

    def __call__(self, n_averaged: torch.Tensor) -> float:
        if self.step is None:
            self.step = int(n_averaged)
        return ema_decay_at(self.step, self.decay, self.ramp, self.total_steps)


class WeightAverage(AveragedModel):
    """torch's AveragedModel with the ramped decay above; `update_parameters(model)` after every
    optimizer step; `.module` is the averaged model."""

    def update_parameters(self, model: nn.Module) -> None:
        super().update_parameters(model)
        if self._decay.step is not None:
            self._decay.step += 1

    def load_state_dict(self, *args, **kwargs):
        out = super().load_state_dict(*args, **kwargs)
        self._decay.step = None  # resumed: read the restored counter again
        return out


def weight_average(model: nn.Module, decay: float, ramp: float, total_steps: int) -> WeightAverage:
    """A WeightAverage of `model` (on its device)."""
    schedule = _Decay(decay, ramp, total_steps)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1.0 - schedule(n_averaged))

    average = WeightAverage(model, multi_avg_fn=update, use_buffers=True)
    average._decay = schedule
    return average
