"""Detector heads: everything after a backbone (neck, proposals, box heads).

A head takes a backbone's stage features and returns torchvision-style detections (eval)
or a loss dict (training):

    head(images: ImageList, feats: dict[int, Tensor], targets=None)
        -> (detections: list[dict(boxes FloatTensor[N,4] x1y1x2y2 in the resized frame,
                                  labels Int64Tensor[N], scores FloatTensor[N])],
            losses: dict[str, Tensor])   # empty in eval mode

The Faster R-CNN head is assembled from torchvision's parts (FeaturePyramidNetwork,
AnchorGenerator, RegionProposalNetwork, RoIHeads) and re-implements none of them. Another
family (RetinaNet, FCOS, Mask R-CNN) is another module with this contract and another
builder registered in `model/build.py`.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from dynamicdet_cli.model.seeding import seed_sampling


class FasterRCNNHead(nn.Module):
    """FPN neck + RPN + RoI heads over the stages `stages` of one backbone.

    FPN levels are named "0", "1", ... in stage order, plus "pool" (torchvision's names).
    `box_loss_weight` scales the RoI box-regression loss (loss_box_reg) wherever the head's
    loss is taken: in training and in the router's per-image targets alike.
    """

    def __init__(self, neck: FeaturePyramidNetwork, rpn: RegionProposalNetwork, roi_heads: RoIHeads,
                 stages: list[int], box_loss_weight: float = 1.0):
        super().__init__()
        self.neck = neck
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.stages = list(stages)
        self.box_loss_weight = float(box_loss_weight)

    def neck_features(self, feats: dict[int, Tensor]) -> "OrderedDict[str, Tensor]":
        x = OrderedDict((str(i), feats[s]) for i, s in enumerate(self.stages))
        return self.neck(x)

    def forward(self, images: ImageList, feats: dict[int, Tensor], targets=None):
        fpn = self.neck_features(feats)
        proposals, rpn_losses = self.rpn(images, fpn, targets)
        detections, roi_losses = self.roi_heads(fpn, proposals, images.image_sizes, targets)
        if "loss_box_reg" in roi_losses:
            roi_losses["loss_box_reg"] = self.box_loss_weight * roi_losses["loss_box_reg"]
        return detections, {**rpn_losses, **roi_losses}

    def per_image_losses(self, images: ImageList, feats: dict[int, Tensor], targets: list[dict],
                         seeds: list[list[int | None]]) -> Tensor:
        """Each image's total training loss, averaged over draws of torchvision's sampling. B

        seeds[i][d] seeds image i's d-th draw (None: unseeded). For image i, each draw equals
        `sum(self(image_i_alone, its feats, [targets[i]])[1].values())` after
        `torch.manual_seed(seeds[i][d])` (a test holds it to that; seeded by `seed_sampling`): only the anchor sampling
        (RPN loss), the proposal sampling and the RoI head depend on the draw, so the neck,
        the RPN head, the anchors, the proposals and the matching run once for the batch, and
        each draw's RoI head runs once over all images' sampled proposals. Mirrors
        RegionProposalNetwork.forward and RoIHeads.forward in training mode, calling their
        own methods for every step. Meant for batches of one image size.
        """
        rpn, roi = self.rpn, self.roi_heads
        fpn = self.neck_features(feats)
        features = list(fpn.values())
        objectness, deltas = rpn.head(features)
        anchors = rpn.anchor_generator(images, features)
        batch = len(anchors)
        per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)  # B*A,1 and B*A,4, image-major
        proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(batch, -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, objectness, images.image_sizes, per_level)
        labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
        regression_targets = rpn.box_coder.encode(matched, anchors)
        per_image = objectness.shape[0] // batch
        draws = len(seeds[0])
        totals = objectness.new_zeros(batch)
        for d in range(draws):
            rpn_loss, sampled, matched, roi_labels, roi_targets = [], [], [], [], []
            for i in range(batch):  # sampling image by image, each from its own seed
                if seeds[i][d] is not None:
                    seed_sampling(seeds[i][d], objectness.device)
                part = slice(i * per_image, (i + 1) * per_image)
                rpn_loss.append(sum(rpn.compute_loss(objectness[part], deltas[part], [labels[i]],
                                                     [regression_targets[i]])))
                props, idx, lab, reg = roi.select_training_samples([boxes[i]], [targets[i]])
                sampled += props
                matched += idx
                roi_labels += lab
                roi_targets += reg
            x = roi.box_head(roi.box_roi_pool(fpn, sampled, images.image_sizes))
            class_logits, box_regression = roi.box_predictor(x)
            counts = [len(p) for p in sampled]
            extra = self.extra_roi_losses(fpn, sampled, matched, roi_labels, targets, images.image_sizes)
            for i, (c, r) in enumerate(zip(class_logits.split(counts), box_regression.split(counts))):
                classifier, box = fastrcnn_loss(c, r, [roi_labels[i]], [roi_targets[i]])
                totals[i] += rpn_loss[i] + classifier + self.box_loss_weight * box + extra[i]
        return totals / draws

    def extra_roi_losses(self, fpn, sampled: list[Tensor], matched: list[Tensor], labels: list[Tensor],
                         targets: list[dict], image_sizes) -> list[Tensor | float]:
        """Per-image losses of RoI branches beyond the box head, from one draw's sampled
        proposals (their matched ground-truth index and label): none here; the Mask R-CNN
        head adds its mask loss (model/mask_rcnn_head.py)."""
        return [0.0] * len(sampled)


def build_faster_rcnn_head(in_channels: list[int], stages: list[int], num_classes: int, cfg) -> FasterRCNNHead:
    """Build a Faster R-CNN head from `cfg` (the recipe's ModelConfig).

    in_channels: the backbone's output channels of each stage in `stages`.
    num_classes: object classes, background excluded.
    """
    c = cfg.neck.out_channels
    neck = FeaturePyramidNetwork(in_channels, c, extra_blocks=LastLevelMaxPool())
    n_levels = len(stages) + 1
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in cfg.rpn.anchor_sizes),
        aspect_ratios=(tuple(cfg.rpn.aspect_ratios),) * n_levels,
    )
    r, h = cfg.rpn, cfg.roi_heads
    rpn = RegionProposalNetwork(
        anchors, RPNHead(c, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=r.fg_iou_thresh, bg_iou_thresh=r.bg_iou_thresh,
        batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction,
        pre_nms_top_n=dict(training=r.pre_nms_top_n_train, testing=r.pre_nms_top_n_test),
        post_nms_top_n=dict(training=r.post_nms_top_n_train, testing=r.post_nms_top_n_test),
        nms_thresh=r.nms_thresh,
    )
    pool = MultiScaleRoIAlign(featmap_names=[str(i) for i in range(len(stages))], output_size=7, sampling_ratio=h.sampling_ratio,
                              canonical_scale=h.canonical_scale)
    roi_heads = RoIHeads(
        pool, TwoMLPHead(c * 7 * 7, h.representation_size),
        FastRCNNPredictor(h.representation_size, num_classes + 1),
        fg_iou_thresh=h.fg_iou_thresh, bg_iou_thresh=h.bg_iou_thresh,
        batch_size_per_image=h.batch_size_per_image, positive_fraction=h.positive_fraction,
        bbox_reg_weights=None, score_thresh=h.score_thresh, nms_thresh=h.nms_thresh,
        detections_per_img=h.detections_per_img,
    )
    return FasterRCNNHead(neck, rpn, roi_heads, stages, h.box_loss_weight)
