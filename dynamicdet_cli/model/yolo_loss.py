"""The YOLO head's training targets and loss: task-aligned assignment, BCE, CIoU and DFL.

Boxes are regressed as distributions over distances (Distribution Focal Loss, Li et al. 2020):
each side's distance from an anchor point to the box, in units of the level's stride, is a
softmax over `reg_max` bins 0, 1, ..., reg_max - 1; its expectation is the distance.

Task-aligned assignment (TOOD, Feng et al. 2021), per image and ground-truth box g:
    candidates  anchor points whose centre lies inside g, plus the point of the finest level
                whose cell holds g's centre (so a box smaller than the stride still gets one)
    t(g, a)     s(a, class of g)**alpha * IoU(predicted box at a, g)**beta
    positives   g's top-k candidates by t; a point positive for several boxes keeps the box it
                overlaps most
    target      class score t(g, a) / max_a t(g, a) x max_a IoU(g, a) over g's positives: the
                quality the class branch is taught to predict, and the weight of the box losses

The loss of one image, each part normalised by its sum of target scores (at least 1):
    cls = BCE(class logits, targets) over every point and class
    box = sum over positives of weight x (1 - CIoU)           (torchvision.ops.complete_box_iou_loss)
    dfl = sum over positives of weight x mean over 4 sides of the two-bin cross-entropy
A batch's loss is the mean of its images' losses, so an image's loss (what the router's
targets are made of) does not depend on its batch-mates.

Memory: the assignment holds a few boxes x points tensors per image (booleans and floats, never
boxes x points x 4), for as many images at once as keep them under ASSIGN_BUDGET elements; an
image over it on its own takes its boxes in slices (computing them twice: once to find each
point's box, once for the target scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import complete_box_iou_loss

ASSIGN_BUDGET = 1 << 23  # boxes x points x images held at once by the assigner (about 32 MB per float tensor)


# ----------------------------------------------------------------------------- distances <-> boxes

def decode_distances(logits: Tensor, reg_max: int) -> Tensor:
    """Expected distance per side from the bins' softmax. ...,4*reg_max -> ...,4 (stride units),
    float32 whatever the autocast dtype (a product and a sum, which autocast leaves in float32;
    a matmul would run in bfloat16 and miss by a pixel at stride 32)."""
    probs = logits.float().unflatten(-1, (4, reg_max)).softmax(-1)
    return (probs * torch.arange(reg_max, dtype=torch.float32, device=probs.device)).sum(-1)


def distances_to_boxes(dist: Tensor, points: Tensor, strides: Tensor) -> Tensor:
    """(left, top, right, bottom) distances in stride units -> x1y1x2y2 pixels. B,A,4; points A,2; strides A."""
    d = dist * strides[:, None]
    return torch.cat([points - d[..., :2], points + d[..., 2:]], dim=-1)


def boxes_to_distances(boxes: Tensor, points: Tensor, strides: Tensor, reg_max: int) -> Tensor:
    """The inverse of distances_to_boxes, clamped to the bins' range [0, reg_max - 1 - 0.01]. N,4"""
    d = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1) / strides[..., None]
    return d.clamp(0, reg_max - 1 - 0.01)


def dfl_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Distribution focal loss per point: cross-entropy to the two bins around each target
    distance, weighted by closeness, averaged over the 4 sides. logits N,4*R; target N,4 -> N."""
    logits = logits.reshape(-1, target.shape[-1], logits.shape[-1] // target.shape[-1])  # N,4,R
    left = target.floor().long()
    w_right = target - left
    log_probs = logits.log_softmax(-1)  # N,4,R
    nll_left = -log_probs.gather(-1, left[..., None]).squeeze(-1)  # N,4
    nll_right = -log_probs.gather(-1, (left + 1)[..., None]).squeeze(-1)
    return (nll_left * (1 - w_right) + nll_right * w_right).mean(-1)


# ----------------------------------------------------------------------------- assignment

@dataclass
class Assignment:
    """Per point of each image: fg B,A bool; labels B,A (0-based class, meaningful where fg);
    boxes B,A,4 (the assigned box, x1y1x2y2); scores B,A (the target score, 0 on background)."""

    fg: Tensor
    labels: Tensor
    boxes: Tensor
    scores: Tensor


def _pairwise_iou(gt: Tensor, pred: Tensor) -> Tensor:
    """IoU of box g of each image with the predicted box at each point. gt B,n,4; pred B,A,4 -> B,n,A.
    Built one coordinate at a time, so no B,n,A,4 tensor exists."""
    g = [c[:, :, None] for c in gt.unbind(-1)]
    p = [c[:, None, :] for c in pred.unbind(-1)]
    w = (torch.minimum(g[2], p[2]) - torch.maximum(g[0], p[0])).clamp(min=0)
    h = (torch.minimum(g[3], p[3]) - torch.maximum(g[1], p[1])).clamp(min=0)
    inter = w * h
    area_g = (g[2] - g[0]) * (g[3] - g[1])
    area_p = ((p[2] - p[0]) * (p[3] - p[1])).clamp(min=0)
    return inter / (area_g + area_p - inter + 1e-9)


class TaskAlignedAssigner:
    """Assign ground-truth boxes to anchor points (see the module docstring).

    __call__(scores B,A,C (probabilities), pred_boxes B,A,4, points A,2, centre_index,
             gt_boxes B,n,4, gt_labels B,n (0-based), gt_valid B,n bool) -> Assignment
    centre_index(gt_boxes) -> B,n: the finest level's point whose cell holds each box's centre.
    Images are assigned together, in chunks that keep B x n x A under `budget` elements, and an
    image whose own n x A is over it takes its boxes in slices; the result does not depend on the
    chunking (each image's assignment is its own, each box's candidates its own).
    """

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, budget: int = ASSIGN_BUDGET):
        self.topk, self.alpha, self.beta, self.budget = topk, alpha, beta, budget

    @torch.no_grad()
    def __call__(self, scores: Tensor, pred_boxes: Tensor, points: Tensor, centre_index: Tensor,
                 gt_boxes: Tensor, gt_labels: Tensor, gt_valid: Tensor) -> Assignment:
        batch, n, a = scores.shape[0], gt_boxes.shape[1], points.shape[0]
        if n == 0:
            return Assignment(torch.zeros(batch, a, dtype=torch.bool, device=scores.device),
                              torch.zeros(batch, a, dtype=torch.long, device=scores.device),
                              pred_boxes.new_zeros(batch, a, 4), scores.new_zeros(batch, a))
        per_chunk = max(1, self.budget // max(n * a, 1))
        parts = [self._assign(scores[i:i + per_chunk], pred_boxes[i:i + per_chunk], points,
                              centre_index[i:i + per_chunk], gt_boxes[i:i + per_chunk],
                              gt_labels[i:i + per_chunk], gt_valid[i:i + per_chunk])
                 for i in range(0, batch, per_chunk)]
        return Assignment(*(torch.cat(field, dim=0) for field in zip(*(
            (p.fg, p.labels, p.boxes, p.scores) for p in parts))))

    def _positives(self, scores, pred_boxes, points, centre_index, gt_boxes, gt_labels, gt_valid):
        """For boxes B,m: (positive B,m,A bool: each box's top-k candidates; iou B,m,A, 0 off the
        candidates; metric B,m,A, the alignment)."""
        a = points.shape[0]
        px, py = points[:, 0], points[:, 1]
        x1, y1, x2, y2 = (c[:, :, None] for c in gt_boxes.unbind(-1))
        candidate = (px > x1) & (px < x2) & (py > y1) & (py < y2)  # B,m,A bool
        candidate.scatter_(2, centre_index[:, :, None], True)
        candidate &= gt_valid[:, :, None]
        # each box's class score at every point, and the predicted box's overlap with it
        score = scores.float().transpose(1, 2).gather(1, gt_labels[:, :, None].expand(-1, -1, a))  # B,m,A
        iou = _pairwise_iou(gt_boxes.float(), pred_boxes.float()) * candidate
        metric = score.pow(self.alpha) * iou.pow(self.beta)  # B,m,A
        del score
        # top-k candidates per box; non-candidates rank below every candidate, even a 0-metric one
        k = min(self.topk, a)
        top = metric.masked_fill(~candidate, -1.0).topk(k, dim=-1).indices  # B,m,k
        positive = torch.zeros_like(candidate).scatter_(2, top, True) & candidate
        return positive, iou, metric

    def _assign(self, scores, pred_boxes, points, centre_index, gt_boxes, gt_labels, gt_valid) -> Assignment:
        """Images B (a chunk) with boxes n, the boxes taken in slices that keep B x slice x A
        under the budget: a first pass finds each point's box (of those it is positive for, the
        one it overlaps most), a second the target scores; with one slice it is computed once."""
        b, n = gt_boxes.shape[:2]
        a = points.shape[0]
        step = max(1, self.budget // max(b * a, 1))
        slices = [slice(j, min(j + step, n)) for j in range(0, n, step)]

        def positives(sl):
            return self._positives(scores, pred_boxes, points, centre_index[:, sl], gt_boxes[:, sl],
                                   gt_labels[:, sl], gt_valid[:, sl])

        kept = positives(slices[0]) if len(slices) == 1 else None
        best_iou = torch.full((b, a), -1.0, device=gt_boxes.device)
        which = torch.zeros((b, a), dtype=torch.long, device=gt_boxes.device)  # the assigned box
        for sl in slices:
            positive, iou, _ = kept or positives(sl)
            value, index = iou.masked_fill(~positive, -1.0).max(1)  # B,A: first box on ties
            better = value > best_iou  # strictly: an earlier slice keeps a tie, as argmax would
            best_iou = torch.where(better, value, best_iou)
            which = torch.where(better, index + sl.start, which)
        fg = best_iou >= 0  # positive for some box
        quality = torch.zeros((b, a), device=gt_boxes.device)
        for sl in slices:
            positive, iou, metric = kept or positives(sl)
            own = positive & (which[:, None, :] == torch.arange(sl.start, sl.stop, device=which.device)[None, :, None])
            metric, iou = metric * own, iou * own
            norm = metric.amax(-1, keepdim=True)  # B,m,1
            quality = torch.maximum(quality, (metric * iou.amax(-1, keepdim=True) / (norm + 1e-9)).amax(1))
        rows = torch.arange(b, device=gt_boxes.device)[:, None]
        return Assignment(fg, gt_labels[rows, which], gt_boxes[rows, which], quality * fg)


# ----------------------------------------------------------------------------- the loss

def yolo_losses(cls_logits: Tensor, box_logits: Tensor, pred_boxes: Tensor, points: Tensor, strides: Tensor,
                target: Assignment, reg_max: int, gains: tuple[float, float, float]) -> dict[str, Tensor]:
    """Each image's loss parts, weighted by `gains` (cls, box, dfl). Returns dict of B tensors.

    cls_logits B,A,C; box_logits B,A,4*reg_max; pred_boxes B,A,4 (decoded from box_logits);
    points A,2, strides A; target: the Assignment for these predictions.
    """
    g_cls, g_box, g_dfl = gains
    batch = cls_logits.shape[0]
    one_hot = F.one_hot(target.labels, cls_logits.shape[-1]).to(cls_logits.dtype) * target.scores[..., None]
    norm = target.scores.sum(-1).clamp(min=1.0)  # B
    cls = F.binary_cross_entropy_with_logits(cls_logits, one_hot, reduction="none").sum((1, 2))
    image, point = target.fg.nonzero(as_tuple=True)
    weight = target.scores[image, point]
    box = cls.new_zeros(batch)
    dfl = cls.new_zeros(batch)
    if image.numel():
        ciou = complete_box_iou_loss(pred_boxes[image, point].float(), target.boxes[image, point].float(),
                                     reduction="none")
        box = box.index_add(0, image, (ciou * weight).to(box.dtype))
        wanted = boxes_to_distances(target.boxes[image, point], points[point], strides[point], reg_max)
        dfl = dfl.index_add(0, image, (dfl_loss(box_logits[image, point].float(), wanted) * weight).to(dfl.dtype))
    else:
        # No foreground point in the batch: zero losses that still reach the box branch, so it
        # gets zero gradients rather than none (DistributedDataParallel needs every parameter's).
        zero = box_logits.float().sum() * 0.0  # summed in float32: a float16 sum could overflow to inf
        box, dfl = box + zero.to(box.dtype), dfl + zero.to(dfl.dtype)
    return {"loss_cls": g_cls * cls / norm, "loss_box": g_box * box / norm, "loss_dfl": g_dfl * dfl / norm}
