"""The real-time backbone: CSP stages with ELAN-style aggregation, scaled by depth and width.

    stem:    conv 3x3 stride 2                          -> stride 2
    stage l: conv 3x3 stride 2, then a CSPELAN block    -> stride 2**(l+1): 4, 8, 16, 32

Every convolution is torchvision's `Conv2dNormActivation` (conv, BatchNorm, SiLU). The CSP
block (Cross Stage Partial network, Wang et al. 2020) splits its input in two halves, runs
bottlenecks in series on one of them, and (the ELAN idea, Wang et al. 2022: aggregate every
intermediate output, so gradients have short and long paths alike) concatenates both halves
with every bottleneck's output before a 1x1 fusion.

Scaling (the YOLO convention, n / s / m / l / x; recipes/dy-yolo-*.yaml): channels = min(base, max_channels) x width_multiple,
rounded to a multiple of 8, with base (64, 128, 256, 512, 1024) for stem and stages 1-4;
bottlenecks per stage = round(base x depth_multiple), at least 1, with base (3, 6, 6, 3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from dynamicdet_cli.model.backbone import StageBackbone

BASE_CHANNELS = (64, 128, 256, 512, 1024)  # stem, stages 1..4
BASE_DEPTHS = (3, 6, 6, 3)  # bottlenecks of stages 1..4


def conv(c_in: int, c_out: int, kernel: int = 1, stride: int = 1) -> Conv2dNormActivation:
    """Conv (no bias) + BatchNorm + SiLU, 'same' padding."""
    return Conv2dNormActivation(c_in, c_out, kernel_size=kernel, stride=stride, activation_layer=nn.SiLU)


def scaled_channels(base: int, width_multiple: float, max_channels: int) -> int:
    """min(base, max_channels) x width_multiple, rounded up to a multiple of 8."""
    return int(math.ceil(min(base, max_channels) * width_multiple / 8) * 8)


def scaled_depth(base: int, depth_multiple: float) -> int:
    return max(round(base * depth_multiple), 1)


class Bottleneck(nn.Module):
    """Two 3x3 convs, with a residual connection when `shortcut` (channels kept)."""

    def __init__(self, channels: int, shortcut: bool = True):
        super().__init__()
        self.convs = nn.Sequential(conv(channels, channels, 3), conv(channels, channels, 3))
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.convs(x)
        return x + y if self.shortcut else y


class CSPELAN(nn.Module):
    """CSP split + ELAN aggregation. B,c_in,H,W -> B,c_out,H,W

    A 1x1 conv makes two halves of c_out / 2 channels; `depth` bottlenecks run in series on the
    second; both halves and every bottleneck's output ((2 + depth) x c_out / 2 channels) are
    concatenated and fused by a 1x1 conv.
    """

    def __init__(self, c_in: int, c_out: int, depth: int, shortcut: bool = True):
        super().__init__()
        hidden = c_out // 2
        self.split = conv(c_in, 2 * hidden)
        self.blocks = nn.ModuleList(Bottleneck(hidden, shortcut) for _ in range(depth))
        self.fuse = conv((2 + depth) * hidden, c_out)

    def forward(self, x: Tensor) -> Tensor:
        parts = list(self.split(x).chunk(2, dim=1))
        for block in self.blocks:
            parts.append(block(parts[-1]))
        return self.fuse(torch.cat(parts, dim=1))


class CSPBackbone(StageBackbone):
    """Stem and stages `first_stage..4` of the scaled CSP backbone (see StageBackbone and the
    module docstring). stem_stride is 2, as RegNet's: stage 1 halves the resolution itself."""

    def __init__(self, depth_multiple: float, width_multiple: float, max_channels: int, first_stage: int = 1):
        ch = [scaled_channels(c, width_multiple, max_channels) for c in BASE_CHANNELS]
        stages = {l: nn.Sequential(conv(ch[l - 1], ch[l], 3, 2),
                                   CSPELAN(ch[l], ch[l], scaled_depth(BASE_DEPTHS[l - 1], depth_multiple)))
                  for l in range(1, 5)}
        super().__init__(stem=conv(3, ch[0], 3, 2), stages=stages, stem_channels=ch[0],
                         out_channels={l: ch[l] for l in range(1, 5)}, first_stage=first_stage, stem_stride=2)
