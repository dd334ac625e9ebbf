"""ResNet backbones that expose every stage's output and accept composite inputs.

Feature maps travel as `dict[int, Tensor]` keyed by ResNet stage number 1..4
(stage l has stride 2**(l+1): 4, 8, 16, 32), each `B, C_l, H_l, W_l`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.ops.misc import FrozenBatchNorm2d

from dynamicdet_cli.errors import DynamicDetError

_LAYOUTS = {  # depth -> (block, blocks per stage)
    10: (resnet.BasicBlock, [1, 1, 1, 1]),
    18: (resnet.BasicBlock, [2, 2, 2, 2]),
    34: (resnet.BasicBlock, [3, 4, 6, 3]),
    50: (resnet.Bottleneck, [3, 4, 6, 3]),
    101: (resnet.Bottleneck, [3, 4, 23, 3]),
}


def build_resnet(depth: int, norm: str) -> resnet.ResNet:
    """A torchvision ResNet of `depth` with fresh weights and `norm` ('bn' or 'frozen_bn')."""
    block, layers = _LAYOUTS[depth]
    norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
    return resnet.ResNet(block, layers, norm_layer=norm_layer)


class ResNetBackbone(nn.Module):
    """Stem and stages `first_stage..4` of a torchvision ResNet.

    forward(x, stage_inputs=None) -> {l: B,C_l,H_l,W_l for l in first_stage..4}
      x: the image batch `B,3,H,W` when the backbone has its own stem (first_stage == 1);
         otherwise the input of stage `first_stage` (another backbone's output of the stage
         before: the CBNetV2 shared-stem variant).
      stage_inputs: optional {l: tensor shaped like stage l's input}, added to that input.
         This is where the composite connection of backbone 2 enters.
    """

    def __init__(self, net: resnet.ResNet, first_stage: int = 1):
        super().__init__()
        assert first_stage in (1, 2), "a backbone starts at stage 1 (own stem) or 2 (shared stem)"
        self.first_stage = first_stage
        if first_stage == 1:
            self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        else:
            self.stem = None
        self.stages = nn.ModuleDict({str(l): getattr(net, f"layer{l}") for l in range(first_stage, 5)})
        expansion = 4 if isinstance(net.layer1[0], resnet.Bottleneck) else 1
        self.out_channels = {l: 64 * 2 ** (l - 1) * expansion for l in range(1, 5)}
        # The input of stage 1 is the stem's output (64 channels), of stage l the output of l-1.
        self.in_channels = {1: 64, **{l: self.out_channels[l - 1] for l in range(2, 5)}}

    def forward(self, x: Tensor, stage_inputs: dict[int, Tensor] | None = None) -> dict[int, Tensor]:
        stage_inputs = stage_inputs or {}
        if self.stem is not None:
            x = self.stem(x)  # B,64,H/4,W/4
        out = {}
        for name, stage in self.stages.items():
            l = int(name)
            if l in stage_inputs:
                x = x + stage_inputs[l]
            x = stage(x)
            out[l] = x
        return out


def load_backbone_weights(backbone: ResNetBackbone, path: str) -> int:
    """Initialise `backbone` from a local torchvision ResNet state dict; returns tensors loaded.

    Keys follow torchvision's ResNet (conv1.*, bn1.*, layerN.*); `fc.*` is ignored.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DynamicDetError(f"{path}: backbone weights file not found") from None
    except Exception as err:  # torch raises many types for a bad file
        raise DynamicDetError(f"{path}: not a readable torch state dict ({type(err).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(k.startswith("layer1.") for k in state):
        raise DynamicDetError(f"{path}: not a torchvision ResNet state dict (no layer1.* keys)")
    renamed = {}
    for key, value in state.items():
        if key.startswith(("conv1.", "bn1.")) and backbone.stem is not None:
            index = 0 if key.startswith("conv1.") else 1
            renamed[f"stem.{index}.{key.split('.', 1)[1]}"] = value
        elif key.startswith("layer"):
            stage, rest = key[len("layer"):].split(".", 1)
            if int(stage) >= backbone.first_stage:
                renamed[f"stages.{stage}.{rest}"] = value
    own = backbone.state_dict()
    extra = [k for k in renamed if k not in own]
    if extra:
        raise DynamicDetError(f"{path}: {len(extra)} tensors have no place in this backbone, e.g. {extra[0]} "
                              "(is model.backbone.depth right?)")
    for key, value in renamed.items():
        if own[key].shape != value.shape:
            raise DynamicDetError(
                f"{path}: {key} has shape {tuple(value.shape)}, the recipe's backbone expects "
                f"{tuple(own[key].shape)} (is model.backbone.depth right?)")
    missing = [k for k in own if k not in renamed and not k.endswith("num_batches_tracked")]
    if missing:
        raise DynamicDetError(f"{path}: {len(missing)} backbone tensors missing, e.g. {missing[0]} (wrong depth?)")
    backbone.load_state_dict(renamed, strict=False)
    return len(renamed)
