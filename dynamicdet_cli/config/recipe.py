"""Recipes: the YAML files that say what to build and how to train it.

A recipe is loaded once into frozen dataclasses (`Recipe`), checked at load time, and never
reaches the modules as an object: builders read it and pass plain arguments on.

Rules, all checked here:
- a recipe is a file path, or the name of a shipped recipe (`dy-yolo-n`, `dy-yolo-n.yaml`), looked
  up in `dynamicdet_cli/recipes` (a link to the repository's recipes/ folder, whose files an
  installed package carries) where no file of that name is in the working folder;
- inheritance: a recipe may name `_base_: other.yaml` (relative to itself); its keys are
  merged over the base's, section by section. A base may have a base of its own (the Dy-YOLO
  scales build on `dy-yolo-s.yaml`, which builds on the base recipe); a chain that comes back
  to a recipe it has already read is refused.
- an unknown key is rejected with the closest known key ("did you mean ...?");
- every value is type- and range-checked;
- single-key overrides (`--set model.router.reduction=8`) go through the same checks.

The meaning and type of every key is written once, as the `help` of its field below,
repeated as comments in recipes/dy-faster-rcnn-r50-fpn.yaml, the base recipe, and generated
into docs/recipes.md's key table by keys_doc.py.
"""

from __future__ import annotations

import dataclasses
import math
import difflib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from dynamicdet_cli.core.errors import DynamicDetError, missing_file


# Largest resized image side (and --image-size): a batch of 8 images of 8192 px is 6.4 GB of float32
# input alone; larger sides end in an allocator failure rather than a detector.
MAX_SIDE = 8192


def _f(default, help: str, lo=None, hi=None, choices=None, empty_ok: bool = False):
    """A recipe field: default, meaning, and the allowed range or choices (empty_ok: a list may be [])."""
    meta = {"help": help, "lo": lo, "hi": hi, "choices": choices, "empty_ok": empty_ok}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class BackboneConfig:
    kind: str = _f("resnet", "backbone family of both backbones: torchvision's ResNet or RegNet, or csp (the "
                             "real-time CSP/ELAN backbone of model/csp_backbone.py, scaled by depth_multiple and "
                             "width_multiple)", choices=("resnet", "regnet", "csp"))
    depth: int = _f(50, "ResNet depth of both backbones (resnet only)", choices=(10, 18, 34, 50, 101))
    depths: tuple[int, ...] = _f((1, 1, 2, 2), "RegNet blocks per stage, 4 values (regnet only)", lo=1, hi=64)
    widths: tuple[int, ...] = _f((24, 48, 96, 192), "RegNet output channels per stage, 4 values (regnet only)", lo=8, hi=4096)
    group_width: int = _f(8, "RegNet channels per group of the 3x3 convolutions (regnet only)", lo=1)
    bottleneck: float = _f(1.0, "RegNet inner width / output width of a block (regnet only)", lo=0.125, hi=4.0)
    se_ratio: float = _f(0.25, "RegNet squeeze-and-excitation ratio, 0 = none (regnet only)", lo=0.0, hi=1.0)
    stem_width: int = _f(24, "RegNet stem channels (regnet only)", lo=8, hi=256)
    depth_multiple: float = _f(0.33, "CSP blocks per stage = round((3, 6, 6, 3) x this), at least 1; the YOLO neck's "
                                     "blocks = round(3 x this) (csp backbone and yolo family only; n and s: 0.33, m: 0.67)",
                               lo=0.01, hi=4.0)
    width_multiple: float = _f(0.5, "CSP channels = min((64, 128, 256, 512, 1024), max_channels) x this, a multiple "
                                    "of 8 (csp only; n: 0.25, s: 0.5, m: 0.75)", lo=0.01, hi=4.0)
    max_channels: int = _f(1024, "CSP channel cap before width_multiple (csp only; n and s: 1024, m: 768)", lo=8, hi=4096)
    norm: str = _f("frozen_bn", "backbone normalisation (ResNet and RegNet; the csp backbone always uses BatchNorm)",
                   choices=("bn", "frozen_bn"))
    stages: tuple[int, ...] = _f((1, 2, 3, 4), "ResNet stages (1-4) that feed the neck and the router")
    share_stem: bool = _f(False, "backbone 2 reuses backbone 1's stem and stage 1 (CBNetV2 style)")
    weights: str = _f("", "starting weights of both backbones, loaded when training starts: torchvision:NAME "
                          "(e.g. torchvision:ResNet50_Weights.IMAGENET1K_V1) or a ResNet state-dict file; "
                          "'' = fresh weights (the default, and what checkpoints without the key mean)")


@dataclass(frozen=True)
class CompositeConfig:
    zero_init: bool = _f(True, "start the composite connection at zero (BN scale 0), so training starts from two independent detectors")


@dataclass(frozen=True)
class NeckConfig:
    out_channels: int = _f(256, "FPN channels", lo=8, hi=1024)


@dataclass(frozen=True)
class RPNConfig:
    anchor_sizes: tuple[int, ...] = _f((32, 64, 128, 256, 512), "anchor size (pixels) per FPN level, smallest level first; one per stage plus one for the extra pooled level", lo=1)
    aspect_ratios: tuple[float, ...] = _f((0.5, 1.0, 2.0), "anchor aspect ratios (h/w), the same at every level")
    pre_nms_top_n_train: int = _f(2000, "proposals kept per level before NMS, training", lo=1)
    pre_nms_top_n_test: int = _f(1000, "proposals kept per level before NMS, inference", lo=1)
    post_nms_top_n_train: int = _f(2000, "proposals kept after NMS, training", lo=1)
    post_nms_top_n_test: int = _f(1000, "proposals kept after NMS, inference", lo=1)
    nms_thresh: float = _f(0.7, "RPN NMS IoU threshold", lo=0.0, hi=1.0)
    fg_iou_thresh: float = _f(0.7, "anchor IoU above which an anchor is foreground", lo=0.0, hi=1.0)
    bg_iou_thresh: float = _f(0.3, "anchor IoU below which an anchor is background", lo=0.0, hi=1.0)
    batch_size_per_image: int = _f(256, "anchors sampled per image for the RPN loss", lo=1)
    positive_fraction: float = _f(0.5, "share of positives among sampled anchors", lo=0.0, hi=1.0)


@dataclass(frozen=True)
class RoIHeadsConfig:
    representation_size: int = _f(1024, "width of the two-layer box head", lo=8)
    sampling_ratio: int = _f(2, "RoIAlign sampling points per bin side (torchvision's 2; 1 is 4x cheaper, whose backward is single-threaded on CPU)", lo=1, hi=8)
    canonical_scale: int = _f(224, "box size (sqrt of area, input pixels) that RoIAlign reads from the stride-16 level; "
                                   "each halving moves one level finer (torchvision's 224 suits ~800 px inputs)", lo=1)
    fg_iou_thresh: float = _f(0.5, "proposal IoU above which a proposal is foreground", lo=0.0, hi=1.0)
    bg_iou_thresh: float = _f(0.5, "proposal IoU below which a proposal is background", lo=0.0, hi=1.0)
    batch_size_per_image: int = _f(512, "proposals sampled per image for the box loss", lo=1)
    positive_fraction: float = _f(0.25, "share of positives among sampled proposals", lo=0.0, hi=1.0)
    box_loss_weight: float = _f(1.0, "weight of the box-regression loss (loss_box_reg) in the detector's loss, as in "
                                     "training so in the router's per-image targets (torchvision's 1; families "
                                     "faster_rcnn / mask_rcnn only)", lo=0.0, hi=10.0)
    score_thresh: float = _f(0.05, "minimum score of a returned detection", lo=0.0, hi=1.0)
    nms_thresh: float = _f(0.5, "per-class NMS IoU threshold of the detections", lo=0.0, hi=1.0)
    detections_per_img: int = _f(100, "maximum detections per image", lo=1)


@dataclass(frozen=True)
class MaskHeadConfig:
    layers: tuple[int, ...] = _f((256, 256, 256, 256), "channels of each 3x3 conv of the mask head (family mask_rcnn only)", lo=1, hi=4096)
    dilation: int = _f(1, "dilation of the mask head's convs (family mask_rcnn only)", lo=1, hi=8)
    resolution: int = _f(14, "RoIAlign output side for the mask head; predicted masks are twice that (family mask_rcnn only)", lo=1, hi=64)
    predictor_channels: int = _f(256, "channels of the mask predictor's upsampling conv (family mask_rcnn only)", lo=1, hi=4096)


@dataclass(frozen=True)
class FCOSConfig:
    anchor_sizes: tuple[int, ...] = _f((8, 16, 32, 64, 128), "per FPN level (stages, then P6 and P7): the size each location's box regression is scaled by; torchvision uses the level's stride", lo=1)
    num_convs: int = _f(4, "conv + GroupNorm + ReLU layers in each branch of the head", lo=0, hi=8)
    center_sampling_radius: float = _f(1.5, "a location matches a box only within this many anchor sizes of its centre", lo=0.0)
    score_thresh: float = _f(0.2, "minimum score of a returned detection (sqrt of class score x centre-ness)", lo=0.0, hi=1.0)
    nms_thresh: float = _f(0.6, "per-class NMS IoU threshold of the detections", lo=0.0, hi=1.0)
    detections_per_img: int = _f(100, "maximum detections per image", lo=1)
    topk_candidates: int = _f(1000, "best-scoring candidates kept per level before NMS", lo=1)


@dataclass(frozen=True)
class RetinaNetConfig:
    anchor_sizes: tuple[int, ...] = _f((32, 64, 128, 256, 512), "base anchor size per FPN level (stages, then P6 and P7)", lo=1)
    scales_per_octave: int = _f(3, "anchor sizes per level: base x 2**(i / scales_per_octave)", lo=1, hi=8)
    aspect_ratios: tuple[float, ...] = _f((0.5, 1.0, 2.0), "anchor aspect ratios (h/w), the same at every level")
    fg_iou_thresh: float = _f(0.5, "anchor IoU at or above which an anchor is foreground", lo=0.0, hi=1.0)
    bg_iou_thresh: float = _f(0.4, "anchor IoU below which an anchor is background (in between: ignored)", lo=0.0, hi=1.0)
    score_thresh: float = _f(0.05, "minimum score of a returned detection", lo=0.0, hi=1.0)
    nms_thresh: float = _f(0.5, "per-class NMS IoU threshold of the detections", lo=0.0, hi=1.0)
    detections_per_img: int = _f(300, "maximum detections per image", lo=1)
    topk_candidates: int = _f(1000, "best-scoring candidates kept per level before NMS", lo=1)


@dataclass(frozen=True)
class YOLOConfig:
    reg_max: int = _f(16, "distance bins per box side (distribution focal loss): sides reach (reg_max - 1) strides", lo=2, hi=64)
    assign_topk: int = _f(10, "task-aligned assigner: positives per box (its best candidates by alignment)", lo=1, hi=100)
    assign_alpha: float = _f(0.5, "task-aligned assigner: exponent of the class score in the alignment metric", lo=0.0, hi=10.0)
    assign_beta: float = _f(6.0, "task-aligned assigner: exponent of the IoU in the alignment metric", lo=0.0, hi=20.0)
    cls_gain: float = _f(0.5, "weight of the class loss (BCE on the aligned targets)", lo=0.0, hi=100.0)
    box_gain: float = _f(7.5, "weight of the box loss (1 - CIoU)", lo=0.0, hi=100.0)
    dfl_gain: float = _f(1.5, "weight of the distribution focal loss", lo=0.0, hi=100.0)
    score_thresh: float = _f(0.001, "minimum class probability of a returned detection (low, for COCO AP)", lo=0.0, hi=1.0)
    nms_thresh: float = _f(0.7, "per-class NMS IoU threshold of the detections", lo=0.0, hi=1.0)
    detections_per_img: int = _f(300, "maximum detections per image", lo=1)
    topk_candidates: int = _f(1000, "best-scoring (point, class) pairs kept per image before NMS", lo=1)


@dataclass(frozen=True)
class TransformConfig:
    min_size: tuple[int, ...] = _f((800,), "shorter image side after resizing; several values = random choice in training, the last at inference", lo=16, hi=MAX_SIDE)
    max_size: int = _f(1333, "longest image side after resizing", lo=16, hi=MAX_SIDE)
    image_mean: tuple[float, ...] = _f((0.485, 0.456, 0.406), "per-channel mean for normalisation")
    image_std: tuple[float, ...] = _f((0.229, 0.224, 0.225), "per-channel std for normalisation")

    def largest_training_input(self) -> tuple[int, int]:
        """(short, long): the largest sides the model's resize gives an image in training (the
        largest of min_size, and max_size); what the training loader reads images down to."""
        return max(self.min_size), self.max_size

    def inference_input(self) -> tuple[int, int]:
        """(short, long): the sides the model's resize gives an image at inference (the last
        min_size, and max_size); what inference reads large images down to."""
        return self.min_size[-1], self.max_size


@dataclass(frozen=True)
class RouterConfig:
    reduction: int = _f(4, "router hidden width = floor(d / reduction), d = sum of pooled stage channels", lo=1, hi=1024)
    stages: tuple[int, ...] = _f((), "backbone-1 stages (1-4) the router pools; [] = model.backbone.stages "
                                     "(Dy-YOLO pools every stage: [1, 2, 3, 4])", lo=1, hi=4, empty_ok=True)


@dataclass(frozen=True)
class ModelConfig:
    family: str = _f("faster_rcnn", "detector family of both heads", choices=("faster_rcnn", "mask_rcnn", "fcos", "retinanet", "yolo"))
    num_classes: int = _f(80, "object classes, background excluded (training replaces it by the data's)", lo=1, hi=100_000)
    loss_weight1: float = _f(1.0, "weight w1 of detector 1's loss in joint training", lo=0.0)
    loss_weight2: float = _f(1.0, "weight w2 of detector 2's loss in joint training", lo=0.0)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    composite: CompositeConfig = field(default_factory=CompositeConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    retinanet: RetinaNetConfig = field(default_factory=RetinaNetConfig)
    yolo: YOLOConfig = field(default_factory=YOLOConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    router: RouterConfig = field(default_factory=RouterConfig)


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = _f(0.5, "probability of a horizontal flip", lo=0.0, hi=1.0)
    photometric: float = _f(0.5, "probability of photometric distortion (brightness, contrast, saturation, hue)", lo=0.0, hi=1.0)
    zoom_out: float = _f(0.0, "probability of zooming out onto a larger canvas (smaller objects)", lo=0.0, hi=1.0)
    mosaic: float = _f(0.0, "probability that a training image is a mosaic of four (it and three others, each "
                            "a quadrant around a random centre): more objects, more scales and contexts per image", lo=0.0, hi=1.0)
    mosaic_off_epochs: int = _f(0, "the last N epochs train without mosaic, on images as the model will see them", lo=0)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(12, "training epochs", lo=1)
    batch_size: int = _f(2, "images per optimizer step, all torchrun processes together (each process loads an equal share)", lo=1)
    optimizer: str = _f("sgd", "optimizer", choices=("sgd", "adamw"))
    lr: float = _f(0.02, "peak learning rate", lo=0.0, hi=10.0)
    momentum: float = _f(0.9, "SGD momentum (AdamW beta1)", lo=0.0, hi=1.0)
    weight_decay: float = _f(1e-4, "weight decay", lo=0.0, hi=1.0)
    schedule: str = _f("step", "learning-rate schedule after warm-up", choices=("step", "cosine", "constant"))
    milestones: tuple[float, ...] = _f((0.67, 0.89), "step schedule: fractions of training where lr drops x0.1")
    warmup_iters: int = _f(500, "linear warm-up steps (at most a fifth of the run)", lo=0)
    grad_clip: float = _f(0.0, "max gradient norm; 0 disables clipping", lo=0.0)
    ema_decay: float = _f(0.0, "exponential moving average of the weights (evaluation, best.pt, last.pt and the router's "
                               "step use it): weight of the average at each step once ramped up, held so that the average reaches back at "
                               "most about half the steps taken; 0 = off", lo=0.0, hi=0.99999)
    ema_ramp: float = _f(0.1, "the average's warm-up: decay = ema_decay x (1 - exp(-step / (ema_ramp x total steps))), "
                              "a share of the run, so short and long runs ramp alike", lo=0.001, hi=1.0)
    eval_every: int = _f(1, "evaluate on the validation set every N epochs", lo=1)
    workers: int = _f(2, "data-loader worker processes (at most the cores per training process on the machine)", lo=0, hi=64)
    seed: int = _f(0, "random seed", lo=0)
    router_holdout: float = _f(0.0, "share of the training images kept out of step 1 (seeded by train.seed); train-router takes its targets from them", lo=0.0, hi=0.9)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class RouterTrainConfig:
    epochs: int = _f(20, "router epochs over the cached features", lo=1)
    lr: float = _f(1e-3, "AdamW learning rate of the router", lo=0.0, hi=10.0)
    weight_decay: float = _f(1e-4, "AdamW weight decay of the router", lo=0.0, hi=1.0)
    batch_size: int = _f(64, "router batch size on cached features", lo=1)
    views: int = _f(1, "augmented views cached per target image, averaged into one entry (1 = the image as is)", lo=1, hi=16)
    holdout: float = _f(0.2, "share of the target images held out of the fit; the epoch of the lowest held-out router loss is kept (0 = last epoch)", lo=0.0, hi=0.9)
    loss_draws: int = _f(2, "seeded draws of the sampled losses averaged per image, to make L1 - L2 stable", lo=1, hi=16)
    seed: int = _f(0, "random seed", lo=0)


@dataclass(frozen=True)
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    router: RouterTrainConfig = field(default_factory=RouterTrainConfig)


# ----------------------------------------------------------------------------- checking

def _is_section(tp) -> bool:
    return dataclasses.is_dataclass(tp)


def _check_value(key: str, value: Any, tp, meta: dict) -> Any:
    """Return `value` converted to `tp`, or raise a one-line error naming `key`."""
    if get_origin(tp) is tuple:
        (item_tp, _) = get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # a single number where a list is expected
        if not isinstance(value, (list, tuple)) or (not value and not meta.get("empty_ok")):
            raise DynamicDetError(f"recipe key {key}: expected a non-empty list, got {value!r}")
        return tuple(_check_value(f"{key}[{i}]", v, item_tp, meta) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise DynamicDetError(f"recipe key {key}: expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DynamicDetError(f"recipe key {key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DynamicDetError(f"recipe key {key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise DynamicDetError(f"recipe key {key}: expected a finite number, got {value}")
    elif tp is str:
        if not isinstance(value, str):
            raise DynamicDetError(f"recipe key {key}: expected a string, got {value!r}")
    if meta.get("choices") is not None and value not in meta["choices"]:
        options = ", ".join(str(c) for c in meta["choices"])
        raise DynamicDetError(f"recipe key {key}: {value!r} is not one of {options}")
    if meta.get("lo") is not None and value < meta["lo"]:
        raise DynamicDetError(f"recipe key {key}: {value} is below the minimum {meta['lo']}")
    if meta.get("hi") is not None and value > meta["hi"]:
        raise DynamicDetError(f"recipe key {key}: {value} is above the maximum {meta['hi']}")
    return value


def _build(cls, data: Any, prefix: str):
    """Build dataclass `cls` from nested plain data, checking every key and value."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DynamicDetError(f"recipe section {prefix.rstrip('.') or '(top)'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(fields)}"
            raise DynamicDetError(f"unknown recipe key {path}{hint}")
        tp = hints[key]
        if _is_section(tp):
            kwargs[key] = _build(tp, value, f"{path}.")
        else:
            kwargs[key] = _check_value(path, value, tp, fields[key].metadata)
    return cls(**kwargs)


ONE_STAGE_FAMILIES = ("fcos", "retinanet")  # the families whose neck adds P6 and P7


def _check_one_stage(m) -> None:
    levels = len(m.backbone.stages) + 2
    section = getattr(m, m.family)
    if len(section.anchor_sizes) != levels:
        raise DynamicDetError(
            f"recipe key model.{m.family}.anchor_sizes: {len(section.anchor_sizes)} sizes given, but the FPN has "
            f"{levels} levels ({len(m.backbone.stages)} stages + P6 and P7)")
    if m.family == "fcos" and (m.neck.out_channels % 32 or m.neck.out_channels < 64):
        # GroupNorm with one channel per group has nothing to normalise on a 1x1 level (P7) of one image
        raise DynamicDetError(f"recipe key model.neck.out_channels: FCOS's head needs a multiple of 32 from 64 "
                              f"up (GroupNorm of 32 groups, 2 channels each at least), got {m.neck.out_channels}")
    if m.family == "retinanet" and m.retinanet.bg_iou_thresh > m.retinanet.fg_iou_thresh:
        raise DynamicDetError("recipe keys model.retinanet.bg_iou_thresh/fg_iou_thresh: the background threshold "
                              "may not exceed the foreground one")


def _check_yolo(m) -> None:
    stages = list(m.backbone.stages)
    if len(stages) < 2 or stages != list(range(stages[0], stages[0] + len(stages))):
        raise DynamicDetError(f"recipe key model.backbone.stages: the yolo family's PAN neck needs two or more "
                              f"consecutive stages (e.g. [2, 3, 4]), got {stages}")


def _check_consistency(recipe: Recipe) -> None:
    """Rules that involve more than one key."""
    m = recipe.model
    stages = m.backbone.stages
    if m.backbone.kind == "regnet" and (len(m.backbone.depths) != 4 or len(m.backbone.widths) != 4):
        raise DynamicDetError("recipe keys model.backbone.depths/widths: need 4 values each, one per stage")
    if sorted(set(stages)) != list(stages) or not all(1 <= s <= 4 for s in stages):
        raise DynamicDetError(f"recipe key model.backbone.stages: {list(stages)} must be increasing stage numbers from 1 to 4")
    if any(not 1 <= s <= 4 for s in m.router.stages) or sorted(set(m.router.stages)) != list(m.router.stages):
        raise DynamicDetError(f"recipe key model.router.stages: {list(m.router.stages)} must be increasing stage "
                              "numbers from 1 to 4, or [] for model.backbone.stages")
    if m.family == "yolo":
        _check_yolo(m)
    elif m.family in ONE_STAGE_FAMILIES:
        _check_one_stage(m)
    elif len(m.rpn.anchor_sizes) != len(stages) + 1:
        raise DynamicDetError(
            f"recipe key model.rpn.anchor_sizes: {len(m.rpn.anchor_sizes)} sizes given, but the FPN has "
            f"{len(stages) + 1} levels ({len(stages)} stages + 1 pooled level)")
    if len(m.transform.image_mean) != 3 or len(m.transform.image_std) != 3:
        raise DynamicDetError("recipe keys model.transform.image_mean/image_std: need 3 values each (RGB)")
    if m.backbone.kind == "csp" and m.backbone.share_stem:
        raise DynamicDetError("recipe key model.backbone.share_stem: the csp backbone re-reads the image through "
                              "its own stem (Dy-YOLO); set it to false")
    if m.backbone.kind != "resnet" and m.backbone.weights:
        raise DynamicDetError(f"recipe key model.backbone.weights: {m.backbone.weights!r} are ResNet weights, but "
                              f"model.backbone.kind is {m.backbone.kind}; set model.backbone.weights: ''")
    if m.loss_weight1 == 0 and m.loss_weight2 == 0:
        raise DynamicDetError("recipe keys model.loss_weight1/loss_weight2: at least one must be positive")


def recipe_from_dict(data: dict) -> Recipe:
    """Build and check a Recipe from plain nested data (a YAML file's or a checkpoint's)."""
    recipe = _build(Recipe, data, "")
    _check_consistency(recipe)
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain nested data (lists, not tuples): what checkpoints and run folders store."""
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x
    return plain(dataclasses.asdict(recipe))


# ----------------------------------------------------------------------------- loading

SHIPPED = Path(__file__).resolve().parents[1] / "recipes"  # dynamicdet_cli/recipes -> ../recipes


def shipped_recipes() -> dict[str, Path]:
    """Name (the file's stem) -> path of every recipe shipped with the package."""
    return {p.stem: p for p in sorted(SHIPPED.glob("*.yaml"))} if SHIPPED.is_dir() else {}


def find_recipe(name: str | Path) -> Path:
    """The recipe file `name` means: the file itself where it exists; else, for a bare name
    (`dy-yolo-n` or `dy-yolo-n.yaml`, no folder), the shipped recipe of that name. A path with a
    folder that does not exist is returned as given, for the reader to report."""
    path = Path(name)
    if path.exists() or len(path.parts) != 1:
        return path
    stem = path.stem if path.suffix.lower() in (".yaml", ".yml") else path.name
    shipped = shipped_recipes()
    if stem in shipped:
        return shipped[stem]
    close = difflib.get_close_matches(stem, list(shipped), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise DynamicDetError(f"{name}: no recipe file of that name here, nor a shipped recipe ({hint}shipped: "
                          f"{', '.join(shipped) or 'none found'}; `dynamicdet recipes` lists them)")


def is_recipe(name: str | Path) -> bool:
    """Whether a command's argument names a recipe rather than a checkpoint: a .yaml/.yml path,
    or a bare name with no suffix that is no file here (a shipped recipe's, or a mistyped one's,
    which find_recipe answers with the closest shipped name)."""
    path = Path(name)
    if path.suffix.lower() in (".yaml", ".yml"):
        return True
    return path.suffix == "" and len(path.parts) == 1 and not path.exists()


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise missing_file(path, f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        kind = " (it is a checkpoint: a recipe is the YAML it was built from)" if zipfile.is_zipfile(path) else ""
        raise DynamicDetError(f"{path}: not a recipe: a recipe is a UTF-8 YAML text file{kind}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise DynamicDetError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if data is None:  # an empty file would silently build the defaults: an 80-class R50
        raise DynamicDetError(f"{path}: the recipe is empty; start from recipes/shapes-tiny.yaml "
                              "or write _base_: dy-faster-rcnn-r50-fpn.yaml and the keys to change")
    if not isinstance(data, dict):
        raise DynamicDetError(f"{path}: a recipe must be a YAML mapping")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'model.router.reduction=8' -> (['model', 'router', 'reduction'], 8)."""
    if "=" not in text:
        raise DynamicDetError(f"--set {text!r}: expected KEY=VALUE, for example model.router.reduction=8")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise DynamicDetError(f"--set {text!r}: {k} is a value, not a section")
        node[keys[-1]] = value
    return data


def _read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A recipe file's data merged over its `_base_`'s, and that over its own base's, and so on."""
    data = _read_yaml(path)
    base_name = data.pop("_base_", None)
    if base_name is None:
        return data
    base_path = path.parent / str(base_name)
    if not base_path.is_file():
        raise DynamicDetError(f"{path}: _base_ {base_name!r} names no recipe file ({base_path.resolve()} "
                              "does not exist or is not a file; a _base_ is relative to its recipe's folder)")
    chain = chain + (path.resolve(),)
    if base_path.resolve() in chain:
        names = " -> ".join(p.name for p in chain + (base_path.resolve(),))
        raise DynamicDetError(f"{path}: the _base_ chain comes back to a recipe it has read ({names})")
    return _merge(_read_with_bases(base_path, chain), data)


def load_recipe_data(path: str | Path, overrides: list[str] = ()) -> dict:
    """Read a recipe file (with its chain of `_base_`s) and apply overrides; return plain nested data."""
    return apply_overrides(_read_with_bases(find_recipe(path)), list(overrides))


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Load, merge, override and check a recipe file."""
    data = load_recipe_data(path, overrides)
    try:
        return recipe_from_dict(data)
    except DynamicDetError as err:
        raise DynamicDetError(f"{path}: {err}") from None


def with_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """A copy of `recipe` with `--set` overrides applied and checked."""
    if not overrides:
        return recipe
    return recipe_from_dict(apply_overrides(recipe_to_dict(recipe), list(overrides)))


def option_overrides(*, epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
                     router_holdout: float | None = None, image_size: int | None = None) -> list[str]:
    """The `--set` overrides that train-detectors' shortcut options stand for (None: not given);
    image_size sets both the shorter and the longer side."""
    sets = [f"train.epochs={epochs}"] if epochs is not None else []
    sets += [f"train.batch_size={batch_size}"] if batch_size is not None else []
    sets += [f"train.lr={lr}"] if lr is not None else []
    sets += [f"train.router_holdout={router_holdout}"] if router_holdout is not None else []
    sets += ([f"model.transform.min_size=[{image_size}]", f"model.transform.max_size={image_size}"]
             if image_size is not None else [])
    return sets
