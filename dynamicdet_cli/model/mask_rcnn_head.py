"""The Mask R-CNN head: the Faster R-CNN head plus torchvision's mask branch.

Same contract as the heads of model/heads.py, with one more output per detection:

    head(images: ImageList, feats: dict[int, Tensor], targets=None)
        -> (detections: list[dict(boxes FloatTensor[N,4] x1y1x2y2 in the resized frame,
                                  labels Int64Tensor[N], scores FloatTensor[N],
                                  masks FloatTensor[N,1,M,M] probabilities of each box's mask,
                                  M = 2 * mask_head.resolution; pasted into the image by
                                  GeneralizedRCNNTransform.postprocess)],
            losses: dict[str, Tensor])   # adds loss_mask in training mode

In training, targets also carry `masks` (UInt8Tensor[N,H,W] in the resized frame). As in
torchvision's MaskRCNN, the mask branch lives inside RoIHeads (mask_roi_pool, mask_head,
mask_predictor: MultiScaleRoIAlign, MaskRCNNHeads, MaskRCNNPredictor) and is trained on the
positive proposals the box head sampled; nothing of it is re-implemented here.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.ops import MultiScaleRoIAlign

from dynamicdet_cli.model.heads import FasterRCNNHead, build_faster_rcnn_head


class MaskRCNNHead(FasterRCNNHead):
    """FPN neck + RPN + RoI heads with a mask branch (`roi_heads.has_mask()` is True)."""

    def extra_roi_losses(self, fpn, sampled: list[Tensor], matched: list[Tensor], labels: list[Tensor],
                         targets: list[dict], image_sizes) -> list[Tensor]:
        """Each image's mask loss on its positive sampled proposals, as RoIHeads.forward
        computes it for that image alone; the mask head runs once over all images' RoIs."""
        roi = self.roi_heads
        positive = [torch.where(lab > 0)[0] for lab in labels]
        proposals = [p[pos] for p, pos in zip(sampled, positive)]
        matched = [m[pos] for m, pos in zip(matched, positive)]
        logits = roi.mask_predictor(roi.mask_head(roi.mask_roi_pool(fpn, proposals, image_sizes)))  # P,C+1,M,M
        return [maskrcnn_loss(part, [p], [t["masks"]], [t["labels"]], [m])
                for part, p, t, m in zip(logits.split([len(p) for p in proposals]), proposals, targets, matched)]


def build_mask_rcnn_head(in_channels: list[int], stages: list[int], num_classes: int, cfg) -> MaskRCNNHead:
    """Build a Mask R-CNN head from `cfg` (the recipe's ModelConfig; mask branch from cfg.mask_head).

    in_channels: the backbone's output channels of each stage in `stages`.
    num_classes: object classes, background excluded.
    """
    box = build_faster_rcnn_head(in_channels, stages, num_classes, cfg)
    m = cfg.mask_head
    roi = box.roi_heads
    # torchvision's MaskRCNN is its FasterRCNN whose RoIHeads has these three parts set.
    # The box branch's RoIAlign settings, so both branches read a box from the same level.
    roi.mask_roi_pool = MultiScaleRoIAlign(featmap_names=[str(i) for i in range(len(stages))],
                                           output_size=m.resolution, sampling_ratio=cfg.roi_heads.sampling_ratio,
                                           canonical_scale=cfg.roi_heads.canonical_scale)
    roi.mask_head = MaskRCNNHeads(cfg.neck.out_channels, list(m.layers), m.dilation)
    roi.mask_predictor = MaskRCNNPredictor(m.layers[-1], m.predictor_channels, num_classes + 1)
    return MaskRCNNHead(box.neck, box.rpn, roi, stages, box.box_loss_weight)
