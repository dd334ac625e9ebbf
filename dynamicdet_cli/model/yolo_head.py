"""The YOLO detector after a backbone: SPPF, a PAN neck and a decoupled anchor-free head.

    SPPF        on the top stage: 1x1 conv to half, three 5x5 max-pools in series, the four
                maps concatenated and fused by a 1x1 conv (YOLOv5's fast spatial pyramid pooling)
    PAN neck    top-down (upsample, concatenate with the stage below, CSPELAN block), then
                bottom-up (3x3 stride-2 conv, concatenate with the top-down map, CSPELAN block);
                torchvision's FPN is top-down only (Path Aggregation Network, Liu et al. 2018)
    head        per level, a class branch (two 3x3 convs, 1x1 to C logits) and a box branch
                (two 3x3 convs, 1x1 to 4 x reg_max distance bins): decoupled, as in YOLOX
    points      one anchor point per location of each level, at the cell's centre

It keeps the contract of every head (model/heads.py):

    head(images: ImageList, feats: dict[int, Tensor], targets=None)
        -> (detections: list[dict(boxes FloatTensor[N,4] x1y1x2y2 in the resized frame,
                                  labels Int64Tensor[N] in 1..C, scores FloatTensor[N])],
            losses: dict(loss_cls, loss_box, loss_dfl))   # losses empty in eval mode
    head.per_image_losses(images, feats, targets, seeds) -> B   # each image's total loss

`dense(feats)` gives the raw per-point outputs every path starts from (the ONNX
graphs stop there); `postprocess` turns them into detections (score threshold, top-k,
torchvision's batched_nms per class, image by image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms, clip_boxes_to_image

from dynamicdet_cli.model.csp_backbone import CSPELAN, conv, scaled_depth
from dynamicdet_cli.model.yolo_loss import TaskAlignedAssigner, decode_distances, distances_to_boxes, yolo_losses


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast. B,c,H,W -> B,c,H,W"""

    def __init__(self, channels: int, pool: int = 5):
        super().__init__()
        hidden = channels // 2
        self.reduce = conv(channels, hidden)
        self.pool = nn.MaxPool2d(pool, stride=1, padding=pool // 2)
        self.fuse = conv(4 * hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        parts = [self.reduce(x)]
        for _ in range(3):
            parts.append(self.pool(parts[-1]))
        return self.fuse(torch.cat(parts, dim=1))


class PANNeck(nn.Module):
    """SPPF on the top level, then the top-down and bottom-up paths. Levels keep their channels.

    forward(list of B,c_i,H_i,W_i, finest first, each level half the size of the one before)
        -> list of the same shapes.
    """

    def __init__(self, channels: list[int], depth: int):
        super().__init__()
        self.sppf = SPPF(channels[-1])
        k = len(channels)
        self.top_down = nn.ModuleList(CSPELAN(channels[i] + channels[i + 1], channels[i], depth, shortcut=False)
                                      for i in range(k - 1))
        self.down = nn.ModuleList(conv(channels[i], channels[i], 3, 2) for i in range(k - 1))
        self.bottom_up = nn.ModuleList(CSPELAN(channels[i] + channels[i + 1], channels[i + 1], depth, shortcut=False)
                                       for i in range(k - 1))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        td = [None] * len(feats)
        td[-1] = self.sppf(feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            up = F.interpolate(td[i + 1], size=feats[i].shape[-2:], mode="nearest")
            td[i] = self.top_down[i](torch.cat([up, feats[i]], dim=1))
        out = [td[0]]
        for i in range(len(feats) - 1):
            out.append(self.bottom_up[i](torch.cat([self.down[i](out[-1]), td[i + 1]], dim=1)))
        return out


class DecoupledHead(nn.Module):
    """Per level: class logits B,C,H,W and distance-bin logits B,4*reg_max,H,W, from two branches.

    Branch widths as the YOLOv8 architecture description gives them (box: max(16, c/4,
    4 x reg_max); class: max(c, min(C, 100)), c the finest level's channels). priors: each
    level's starting class probability (see `level_priors`).
    """

    def __init__(self, channels: list[int], num_classes: int, reg_max: int, priors: list[float]):
        super().__init__()
        box_width = max(16, channels[0] // 4, 4 * reg_max)
        cls_width = max(channels[0], min(num_classes, 100))
        self.box = nn.ModuleList(nn.Sequential(conv(c, box_width, 3), conv(box_width, box_width, 3),
                                               nn.Conv2d(box_width, 4 * reg_max, 1)) for c in channels)
        self.cls = nn.ModuleList(nn.Sequential(conv(c, cls_width, 3), conv(cls_width, cls_width, 3),
                                               nn.Conv2d(cls_width, num_classes, 1)) for c in channels)
        for branch, prior in zip(self.cls, priors):
            nn.init.constant_(branch[-1].bias, -math.log((1 - prior) / prior))
        for branch in self.box:  # every bin alike: each side starts at the middle distance
            nn.init.zeros_(branch[-1].bias)

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return [b(f) for b, f in zip(self.cls, feats)], [b(f) for b, f in zip(self.box, feats)]


def level_priors(num_classes: int, strides: list[int], side: int, objects: float = 5.0) -> list[float]:
    """Starting class probability per level: `objects` expected per image, spread over the
    level's points and the classes (YOLOv5's bias init). The class loss is a BCE summed over
    every point and class, so a flat 0.01 (RetinaNet's prior, made for the focal loss) would
    start an empty 640 px image of 80 classes at a class loss of thousands against a box loss of
    a few units; with this prior the sum over a level starts near `objects`."""
    return [min(0.5, objects / num_classes / max(side / s, 1.0) ** 2) for s in strides]


@dataclass
class DenseOutputs:
    """Every point of every level, level-major: cls B,A,C logits; box B,A,4*reg_max logits;
    boxes B,A,4 decoded x1y1x2y2 in the padded frame; points A,2 (x, y pixels); strides A;
    level_sizes: (H, W) per level (the finest first)."""

    cls: Tensor
    box: Tensor
    boxes: Tensor
    points: Tensor
    strides: Tensor
    level_sizes: list[tuple[int, int]]


def anchor_points(level_sizes: list[tuple[int, int]], strides: list[int],
                  device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Cell centres of every level, level-major, row-major: (points A,2 as x, y; strides A),
    float32 (also under autocast: pixel coordinates lose precision in float16)."""
    points, per_point = [], []
    for (h, w), s in zip(level_sizes, strides):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1))
        per_point.append(torch.ones_like(x).reshape(-1) * s)  # shaped from x: ONNX keeps the size free
    return torch.cat(points), torch.cat(per_point)


class YOLOHead(nn.Module):
    """PAN neck + decoupled head + assignment and loss over the stages `stages` (consecutive).

    Args: neck (PANNeck), head (DecoupledHead), stages, reg_max, assigner,
    gains (cls, box, dfl), score_thresh, nms_thresh, detections_per_img, topk_candidates.
    """

    def __init__(self, neck: PANNeck, head: DecoupledHead, stages: list[int], reg_max: int,
                 assigner: TaskAlignedAssigner, gains: tuple[float, float, float], score_thresh: float,
                 nms_thresh: float, detections_per_img: int, topk_candidates: int):
        super().__init__()
        self.neck = neck
        self.head = head
        self.stages = list(stages)
        self.reg_max = reg_max
        self.assigner = assigner
        self.gains = tuple(gains)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates

    def dense(self, feats: dict[int, Tensor]) -> DenseOutputs:
        """The raw outputs at every point (the points follow from the levels' sizes and the
        stages' strides: no image is needed)."""
        levels = self.neck([feats[s] for s in self.stages])
        cls, box = self.head(levels)
        sizes = [tuple(f.shape[-2:]) for f in levels]
        strides = [2 ** (stage + 1) for stage in self.stages]  # stage l has stride 2**(l+1) (backbone.py)
        points, per_point = anchor_points(sizes, strides, cls[0].device)
        cls = torch.cat([c.flatten(2) for c in cls], dim=2).transpose(1, 2)  # B,A,C
        box = torch.cat([b.flatten(2) for b in box], dim=2).transpose(1, 2)  # B,A,4R
        boxes = distances_to_boxes(decode_distances(box, self.reg_max), points, per_point)
        return DenseOutputs(cls, box, boxes, points, per_point, sizes)

    def forward(self, images: ImageList, feats: dict[int, Tensor], targets=None):
        out = self.dense(feats)
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets")
            return [], {k: v.mean() for k, v in self.losses(out, targets).items()}
        return self.postprocess(out.cls.sigmoid(), out.boxes, images.image_sizes), {}

    def per_image_losses(self, images: ImageList, feats: dict[int, Tensor], targets: list[dict],
                         seeds: list[list[int | None]]) -> Tensor:
        """Each image's total loss, B. One batched forward: the loss is per image by construction
        (yolo_loss.py), and nothing is sampled, so `seeds` (the heads' shared interface) is unused."""
        return sum(self.losses(self.dense(feats), targets).values())

    def losses(self, out: DenseOutputs, targets: list[dict]) -> dict[str, Tensor]:
        """Each image's weighted loss parts (dict of B tensors); targets' labels are 1..C."""
        gt_boxes, gt_labels, gt_valid = _padded_targets(targets, out.cls)
        first = out.level_sizes[0]
        stride0 = out.strides[0]
        cx = ((gt_boxes[..., 0] + gt_boxes[..., 2]) / 2 / stride0).long().clamp(0, first[1] - 1)
        cy = ((gt_boxes[..., 1] + gt_boxes[..., 3]) / 2 / stride0).long().clamp(0, first[0] - 1)
        target = self.assigner(out.cls.detach().sigmoid(), out.boxes.detach(), out.points, cy * first[1] + cx,
                               gt_boxes, gt_labels, gt_valid)
        return yolo_losses(out.cls, out.box, out.boxes, out.points, out.strides, target, self.reg_max, self.gains)

    def postprocess(self, scores: Tensor, boxes: Tensor, image_sizes: list[tuple[int, int]]) -> list[dict]:
        """Detections per image from per-point class probabilities B,A,C and boxes B,A,4."""
        results = []
        for s, b, size in zip(scores, boxes, image_sizes):
            flat = s.flatten()
            keep = (flat > self.score_thresh).nonzero().squeeze(1)
            flat = flat[keep]
            if flat.numel() > self.topk_candidates:
                flat, order = flat.topk(self.topk_candidates)
                keep = keep[order]
            point, label = keep // s.shape[1], keep % s.shape[1]
            box = clip_boxes_to_image(b[point], size)
            kept = batched_nms(box, flat, label, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": box[kept], "scores": flat[kept], "labels": label[kept] + 1})
        return results


def _padded_targets(targets: list[dict], like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Targets as B,n,4 boxes, B,n 0-based labels and a B,n validity mask (n: the most boxes)."""
    n = max((len(t["boxes"]) for t in targets), default=0)
    boxes = like.new_zeros(len(targets), n, 4, dtype=torch.float32)
    labels = torch.zeros(len(targets), n, dtype=torch.long, device=like.device)
    valid = torch.zeros(len(targets), n, dtype=torch.bool, device=like.device)
    for i, t in enumerate(targets):
        k = len(t["boxes"])
        boxes[i, :k] = t["boxes"]
        labels[i, :k] = t["labels"] - 1
        valid[i, :k] = True
    return boxes, labels, valid


def build_yolo_head(in_channels: list[int], stages: list[int], num_classes: int, cfg) -> YOLOHead:
    """Build a YOLO head from `cfg` (the recipe's ModelConfig; its `yolo` section and the
    backbone's depth_multiple for the neck's blocks).

    in_channels: the backbone's output channels of each stage in `stages` (consecutive stages).
    num_classes: object classes, background excluded.
    """
    y = cfg.yolo
    depth = scaled_depth(3, cfg.backbone.depth_multiple)
    priors = level_priors(num_classes, [2 ** (s + 1) for s in stages], cfg.transform.max_size)
    return YOLOHead(
        PANNeck(list(in_channels), depth), DecoupledHead(list(in_channels), num_classes, y.reg_max, priors), stages,
        y.reg_max, TaskAlignedAssigner(y.assign_topk, y.assign_alpha, y.assign_beta),
        (y.cls_gain, y.box_gain, y.dfl_gain), y.score_thresh, y.nms_thresh, y.detections_per_img,
        y.topk_candidates)
