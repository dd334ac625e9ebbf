"""The composite connection G between the backbones: CBNet's dense higher-level composition.

The input of stage l of backbone 2 receives
    H_l = sum over j >= l of Resize(Proj_{j->l}(F1_j))
where F1_j is backbone 1's stage-j output, Proj is a 1x1 convolution followed by BatchNorm
mapping to the channels of backbone 2's stage-l input, and Resize is nearest-neighbour to that
input's spatial size. With `zero_init` the BatchNorm scale starts at zero, so H is exactly
zero and training starts from two independent detectors (CBNetV2).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DenseHigherLevelComposition(nn.Module):
    """forward(feats1) -> {l: B,C_in(l),H,W for each target stage l}.

    Args:
        src_channels: backbone 1's output channels per stage {j: C_j}, stages 1..4.
        dst_channels: backbone 2's input channels per stage {l: C_in(l)}.
        dst_stages: the stages of backbone 2 that receive a composite input.
        zero_init: start with H == 0.
        stage1_upscale: stage 1's input resolution over its output's (4 / the stem's stride):
            1 for ResNet, 2 for RegNet.
    """

    def __init__(self, src_channels: dict[int, int], dst_channels: dict[int, int],
                 dst_stages: list[int], zero_init: bool = True, stage1_upscale: int = 1):
        super().__init__()
        self.dst_stages = list(dst_stages)
        self.stage1_upscale = stage1_upscale
        self.src_stages = sorted(src_channels)
        self.proj = nn.ModuleDict()
        for l in self.dst_stages:
            for j in self.src_stages:
                if j < l:
                    continue
                bn = nn.BatchNorm2d(dst_channels[l])
                if zero_init:
                    nn.init.zeros_(bn.weight)
                conv = nn.Conv2d(src_channels[j], dst_channels[l], kernel_size=1, bias=False)
                self.proj[f"{j}to{l}"] = nn.Sequential(conv, bn)

    def target_size(self, feats1: dict[int, Tensor], l: int) -> tuple[int, int]:
        """Spatial size of stage l's input: the stem's output for l = 1, else stage l-1's output.
        (Batches are padded to multiples of 32, so stage 1's size scales back exactly.)"""
        if l == 1:
            h, w = feats1[1].shape[-2:]
            return (h * self.stage1_upscale, w * self.stage1_upscale)
        return tuple(feats1[l - 1].shape[-2:])

    def forward(self, feats1: dict[int, Tensor]) -> dict[int, Tensor]:
        out = {}
        for l in self.dst_stages:
            size = self.target_size(feats1, l)
            total = None
            for j in self.src_stages:
                if j < l:
                    continue
                h = self.proj[f"{j}to{l}"](feats1[j])  # B,C_in(l),H_j,W_j
                if h.shape[-2:] != size:
                    h = F.interpolate(h, size=size, mode="nearest")
                total = h if total is None else total + h
            out[l] = total
        return out
