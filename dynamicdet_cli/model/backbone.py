"""Backbones that expose every stage's output and accept composite inputs.

Two torchvision families, one interface (`StageBackbone`): ResNet, and RegNet built from
torchvision's `BlockParams` (narrow, fast, what real-time users deploy). Feature maps travel
as `dict[int, Tensor]` keyed by stage number 1..4 (stage l has stride 2**(l+1): 4, 8, 16,
32), each `B, C_l, H_l, W_l`.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import regnet, resnet
from torchvision.ops import misc as tv_misc

from dynamicdet_cli.core.errors import DynamicDetError

_LAYOUTS = {  # depth -> (block, blocks per stage)
    10: (resnet.BasicBlock, [1, 1, 1, 1]),
    18: (resnet.BasicBlock, [2, 2, 2, 2]),
    34: (resnet.BasicBlock, [3, 4, 6, 3]),
    50: (resnet.Bottleneck, [3, 4, 6, 3]),
    101: (resnet.Bottleneck, [3, 4, 23, 3]),
}


class FrozenBatchNorm2d(tv_misc.FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (same buffers, same checkpoint keys, same float32
    result) whose output keeps the input's dtype: torchvision's multiplies by float32 buffers,
    so under float16 or bfloat16 autocast every frozen-BN output came back as float32, and each
    residual stage of an R50 backbone held and added float32 activations between half-precision
    convolutions (detectron2's FrozenBatchNorm2d casts the same way)."""

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype).reshape(1, -1, 1, 1) + bias.to(x.dtype).reshape(1, -1, 1, 1)


def build_resnet(depth: int, norm: str) -> resnet.ResNet:
    """A torchvision ResNet of `depth` with fresh weights and `norm` ('bn' or 'frozen_bn')."""
    block, layers = _LAYOUTS[depth]
    norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
    return resnet.ResNet(block, layers, norm_layer=norm_layer)


def build_regnet(depths: list[int], widths: list[int], group_width: int, bottleneck: float,
                 se_ratio: float, stem_width: int, norm: str) -> regnet.RegNet:
    """A torchvision RegNet of four stages from explicit BlockParams, fresh weights.

    depths / widths: blocks and output channels per stage; group_width: channels per group of
    the 3x3 convolutions; bottleneck: inner width / output width; se_ratio 0 = no
    squeeze-and-excitation. Every stage halves the resolution (strides 4, 8, 16, 32 after
    the stride-2 stem), as ResNet's do.
    """
    for w in widths:
        inner = int(round(w * bottleneck))
        if inner % group_width:
            raise DynamicDetError(f"recipe key model.backbone.group_width: {group_width} does not divide the "
                                  f"inner width {inner} of a stage of width {w} (bottleneck {bottleneck})")
    params = regnet.BlockParams(depths=list(depths), widths=list(widths), group_widths=[group_width] * 4,
                                bottleneck_multipliers=[bottleneck] * 4, strides=[2] * 4,
                                se_ratio=se_ratio or None)
    norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
    return regnet.RegNet(params, stem_width=stem_width, norm_layer=norm_layer)


class StageBackbone(nn.Module):
    """A stem and stages `first_stage..4`, each stage's input open to a composite input.

    forward(x, stage_inputs=None) -> {l: B,C_l,H_l,W_l for l in first_stage..4}
      x: the image batch `B,3,H,W` when the backbone has its own stem (first_stage == 1);
         otherwise the input of stage `first_stage` (another backbone's output of the stage
         before: the CBNetV2 shared-stem variant).
      stage_inputs: optional {l: tensor shaped like stage l's input}, added to that input.
         This is where the composite connection of backbone 2 enters.

    Args: stem (None when first_stage == 2), stages {l: module} for l in first_stage..4,
    stem_channels (the stem's output = stage 1's input), out_channels {l: C_l} for l in 1..4,
    stem_stride: the stem's output stride (4 for ResNet, whose stem ends with a max-pool; 2 for
    RegNet, whose stage 1 has stride 2).
    """

    def __init__(self, stem: nn.Module | None, stages: dict[int, nn.Module], stem_channels: int,
                 out_channels: dict[int, int], first_stage: int = 1, stem_stride: int = 4):
        super().__init__()
        self.stem_stride = stem_stride
        assert first_stage in (1, 2), "a backbone starts at stage 1 (own stem) or 2 (shared stem)"
        self.first_stage = first_stage
        self.stem = stem if first_stage == 1 else None
        self.stages = nn.ModuleDict({str(l): stages[l] for l in range(first_stage, 5)})
        self.out_channels = dict(out_channels)
        # The input of stage 1 is the stem's output, of stage l the output of stage l-1.
        self.in_channels = {1: stem_channels, **{l: self.out_channels[l - 1] for l in range(2, 5)}}

    def forward(self, x: Tensor, stage_inputs: dict[int, Tensor] | None = None) -> dict[int, Tensor]:
        stage_inputs = stage_inputs or {}
        if self.stem is not None:
            x = self.stem(x)  # B,C_stem,H/4,W/4 (ResNet) or H/2,W/2 (RegNet)
        out = {}
        for name, stage in self.stages.items():
            l = int(name)
            if l in stage_inputs:
                x = x + stage_inputs[l]
            x = stage(x)
            out[l] = x
        return out


class ResNetBackbone(StageBackbone):
    """Stem and stages `first_stage..4` of a torchvision ResNet (see StageBackbone)."""

    def __init__(self, net: resnet.ResNet, first_stage: int = 1):
        expansion = 4 if isinstance(net.layer1[0], resnet.Bottleneck) else 1
        super().__init__(
            stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
            stages={l: getattr(net, f"layer{l}") for l in range(1, 5)}, stem_channels=64,
            out_channels={l: 64 * 2 ** (l - 1) * expansion for l in range(1, 5)}, first_stage=first_stage)


class RegNetBackbone(StageBackbone):
    """Stem and stages `first_stage..4` of a torchvision RegNet (see StageBackbone)."""

    def __init__(self, net: regnet.RegNet, first_stage: int = 1):
        blocks = {l: getattr(net.trunk_output, f"block{l}") for l in range(1, 5)}
        super().__init__(
            stem=net.stem, stages=blocks, stem_channels=net.stem[0].out_channels,
            out_channels={l: b[-1].f.c[0].out_channels for l, b in blocks.items()},  # last block's last conv
            first_stage=first_stage, stem_stride=2)


def load_resnet_state(backbone: StageBackbone, state: dict, source: str) -> int:
    """Load a torchvision ResNet state dict into `backbone`; returns the tensors loaded.

    state: keys as torchvision's ResNet names them (conv1.*, bn1.*, layerN.*); `fc.*` is ignored,
    and so are BatchNorm counters a frozen-BN backbone has no place for. source: names the
    weights in error messages (a file or a torchvision weights name). Reading files and
    fetching named weights is `starting_weights.py`'s job, not the model's.
    """
    if not any(k.startswith("layer1.") for k in state):
        raise DynamicDetError(f"{source}: not a torchvision ResNet state dict (no layer1.* keys)")
    own = backbone.state_dict()
    renamed = {}
    for key, value in state.items():
        if key.startswith(("conv1.", "bn1.")) and backbone.stem is not None:
            index = 0 if key.startswith("conv1.") else 1
            renamed[f"stem.{index}.{key.split('.', 1)[1]}"] = value
        elif key.startswith("layer"):
            stage, rest = key[len("layer"):].split(".", 1)
            if int(stage) >= backbone.first_stage:
                renamed[f"stages.{stage}.{rest}"] = value
    renamed = {k: v for k, v in renamed.items() if k in own or not k.endswith("num_batches_tracked")}
    extra = [k for k in renamed if k not in own]
    if extra:
        raise DynamicDetError(f"{source}: {len(extra)} tensors have no place in this backbone, e.g. {extra[0]} "
                              "(is model.backbone.depth right?)")
    for key, value in renamed.items():
        if own[key].shape != value.shape:
            raise DynamicDetError(
                f"{source}: {key} has shape {tuple(value.shape)}, the recipe's backbone expects "
                f"{tuple(own[key].shape)} (is model.backbone.depth right?)")
    missing = [k for k in own if k not in renamed and not k.endswith("num_batches_tracked")]
    if missing:
        raise DynamicDetError(f"{source}: {len(missing)} backbone tensors missing, e.g. {missing[0]} (wrong depth?)")
    backbone.load_state_dict(renamed, strict=False)
    return len(renamed)
