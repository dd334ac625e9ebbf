"""The exponential moving average of the weights that YOLO-style training evaluates and saves.

    decay(step) = min(ema_decay x (1 - exp(-step / (ema_ramp x total_steps))),   the ramp
                      s x step / (1 + s x step))                                the window cap
    average     = decay x average + (1 - decay) x weights          after every optimizer step

The ramp is a share of the run, not a fixed number of steps. The cap (s = WINDOW_SHARE) keeps
the average's reach, 1 / (1 - decay) steps, within about half the steps taken so far: a decay
set for COCO (0.9999: 10,000 steps) would otherwise average a short fine-tuning run's early
weights into its end. On a long run, or with a decay set for the run's length, it never binds
(shapes-yolo-tiny.yaml's 0.999 over 2560 steps, dy-yolo-s.yaml's 0.9999 over COCO's 550k).
BatchNorm's running statistics are averaged with the weights; integer counters are copied.
Built on torch's AveragedModel (torch.optim.swa_utils), which holds the averaged copy.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


WINDOW_SHARE = 0.5


def ema_decay_at(step: float, decay: float, ramp: float, total_steps: int,
                 window_share: float | None = WINDOW_SHARE) -> float:
    """The average's decay after `step` updates (see the module docstring); window_share None:
    the ramp alone, without the cap."""
    ramped = decay * (1.0 - math.exp(-step / max(ramp * total_steps, 1e-9)))
    if window_share is None:
        return ramped
    return min(ramped, window_share * step / (1.0 + window_share * step))


class WeightAverage(AveragedModel):
    """torch's AveragedModel of `model` (on its device) with the ramped decay above:
    `update_parameters(model)` after every optimizer step; `.module` is the averaged model.

    The decay is computed from a step count kept on the host: reading AveragedModel's own
    counter (a tensor on the model's device) at every step would synchronise CUDA. The count is
    read from that counter once, at the first update after construction or a state load."""

    def __init__(self, model: nn.Module, decay: float, ramp: float, total_steps: int,
                 window_share: float | None = WINDOW_SHARE):
        self.decay, self.ramp, self.total_steps, self.window_share = decay, ramp, total_steps, window_share
        self.step: int | None = None
        super().__init__(model, multi_avg_fn=self._update, use_buffers=True)

    def _update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # integer buffers (BatchNorm's counters): copied
            torch._foreach_copy_(averaged, current)
            return
        if self.step is None:
            self.step = int(n_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - ema_decay_at(self.step, self.decay, self.ramp, self.total_steps,
                                                                    self.window_share))

    def update_parameters(self, model: nn.Module) -> None:
        super().update_parameters(model)
        if self.step is not None:
            self.step += 1

    def load_state_dict(self, *args, **kwargs):
        out = super().load_state_dict(*args, **kwargs)
        self.step = None  # resumed: read the restored counter again
        return out

