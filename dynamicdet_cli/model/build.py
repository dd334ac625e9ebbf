"""The one place where the recipe's model section becomes modules."""

from __future__ import annotations

from dynamicdet_cli.model.backbone import RegNetBackbone, ResNetBackbone, StageBackbone, build_regnet, build_resnet
from dynamicdet_cli.model.composite import DenseHigherLevelComposition
from dynamicdet_cli.model.csp_backbone import CSPBackbone
from dynamicdet_cli.model.detector import DynamicDetector
from dynamicdet_cli.model.heads import build_faster_rcnn_head
from dynamicdet_cli.model.mask_rcnn_head import build_mask_rcnn_head
from dynamicdet_cli.model.one_stage_heads import build_fcos_head, build_retinanet_head
from dynamicdet_cli.model.router import Router
from dynamicdet_cli.model.transform import Transform
from dynamicdet_cli.model.yolo_head import build_yolo_head

# Detector family -> head builder(in_channels, stages, num_classes, model_cfg).
HEAD_BUILDERS = {
    "faster_rcnn": build_faster_rcnn_head,
    "mask_rcnn": build_mask_rcnn_head,
    "fcos": build_fcos_head,
    "retinanet": build_retinanet_head,
    "yolo": build_yolo_head,
}
# Families whose training and evaluation need instance masks in the data.
SEGMENTING_FAMILIES = ("mask_rcnn",)


def needs_masks(family: str) -> bool:
    """Whether a family's datasets must carry instance masks (training targets, mask AP)."""
    return family in SEGMENTING_FAMILIES


def build_transform(cfg) -> Transform:
    t = cfg.transform
    return Transform(min_size=list(t.min_size), max_size=t.max_size,  # torchvision's, no side below 1 px
                     image_mean=list(t.image_mean), image_std=list(t.image_std))


def build_backbone(b, first_stage: int) -> StageBackbone:
    """One backbone from the recipe's BackboneConfig `b`, fresh weights."""
    if b.kind == "csp":
        return CSPBackbone(b.depth_multiple, b.width_multiple, b.max_channels, first_stage)
    if b.kind == "regnet":
        net = build_regnet(b.depths, b.widths, b.group_width, b.bottleneck, b.se_ratio, b.stem_width, b.norm)
        return RegNetBackbone(net, first_stage)
    return ResNetBackbone(build_resnet(b.depth, b.norm), first_stage)


def build_model(cfg, num_classes: int | None = None) -> DynamicDetector:
    """Build a DynamicDetector with fresh weights from a recipe's ModelConfig.

    num_classes: overrides cfg.num_classes (training takes the data's classes).
    Starting weights (cfg.backbone.weights, --init) are loaded by starting_weights.py.
    """
    b = cfg.backbone
    num_classes = num_classes or cfg.num_classes
    backbone1 = build_backbone(b, first_stage=1)
    backbone2 = build_backbone(b, first_stage=2 if b.share_stem else 1)
    composite = DenseHigherLevelComposition(
        src_channels=backbone1.out_channels, dst_channels=backbone2.in_channels,
        dst_stages=list(range(backbone2.first_stage, 5)), zero_init=cfg.composite.zero_init,
        stage1_upscale=4 // backbone1.stem_stride)  # stage 1's output has stride 4
    stages = list(b.stages)
    in_channels = [backbone1.out_channels[s] for s in stages]
    build_head = HEAD_BUILDERS[cfg.family]
    router_stages = list(cfg.router.stages) or stages
    router = Router(sum(backbone1.out_channels[s] for s in router_stages), cfg.router.reduction)
    return DynamicDetector(
        transform=build_transform(cfg), backbone1=backbone1, backbone2=backbone2, composite=composite,
        router=router, head1=build_head(in_channels, stages, num_classes, cfg),
        head2=build_head(in_channels, stages, num_classes, cfg), router_stages=router_stages,
        loss_weights=(cfg.loss_weight1, cfg.loss_weight2),
    )
