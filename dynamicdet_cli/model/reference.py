"""Detector 1 as a plain single-route detector built from the same modules: torchvision's
FasterRCNN, MaskRCNN, FCOS or RetinaNet, and for the yolo family (which torchvision lacks)
`YOLODetector` below.

The reference the easy route is checked against (tests) and timed against (bench/): it
shares detector 1's weights and the recipe's settings, so any difference in detections or
speed is the dynamic plumbing's. `plain_detector(cfg)` builds the same detector with fresh
weights of its own: the single-route baseline a recipe is compared with, like with like.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.transform import GeneralizedRCNNTransform


class _BackboneWithNeck(nn.Module):
    """Backbone 1 + detector 1's FPN, in the shape torchvision's detectors expect."""

    def __init__(self, backbone, head):
        super().__init__()
        self.body, self.head = backbone, head
        self.out_channels = head.neck.inner_blocks[0][0].out_channels

    def forward(self, x):
        return self.head.neck_features(self.body(x))


def torchvision_faster_rcnn(model, cfg) -> FasterRCNN:
    """A plain torchvision FasterRCNN sharing detector 1's modules and the recipe's settings."""
    return FasterRCNN(**_faster_rcnn_arguments(model, cfg)).eval()


def torchvision_mask_rcnn(model, cfg) -> MaskRCNN:
    """A plain torchvision MaskRCNN sharing detector 1's modules (mask branch included)."""
    roi = model.head1.roi_heads
    return MaskRCNN(**_faster_rcnn_arguments(model, cfg), mask_roi_pool=roi.mask_roi_pool,
                    mask_head=roi.mask_head, mask_predictor=roi.mask_predictor).eval()


def _faster_rcnn_arguments(model, cfg) -> dict:
    h1, r, h, t = model.head1, cfg.rpn, cfg.roi_heads, cfg.transform
    return dict(
        backbone=_BackboneWithNeck(model.backbone1, h1), num_classes=None,
        min_size=t.min_size, max_size=t.max_size, image_mean=list(t.image_mean), image_std=list(t.image_std),
        rpn_anchor_generator=h1.rpn.anchor_generator, rpn_head=h1.rpn.head,
        rpn_pre_nms_top_n_train=r.pre_nms_top_n_train, rpn_pre_nms_top_n_test=r.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=r.post_nms_top_n_train, rpn_post_nms_top_n_test=r.post_nms_top_n_test,
        rpn_nms_thresh=r.nms_thresh, rpn_fg_iou_thresh=r.fg_iou_thresh, rpn_bg_iou_thresh=r.bg_iou_thresh,
        rpn_batch_size_per_image=r.batch_size_per_image, rpn_positive_fraction=r.positive_fraction,
        box_roi_pool=h1.roi_heads.box_roi_pool, box_head=h1.roi_heads.box_head,
        box_predictor=h1.roi_heads.box_predictor,
        box_score_thresh=h.score_thresh, box_nms_thresh=h.nms_thresh, box_detections_per_img=h.detections_per_img,
        box_fg_iou_thresh=h.fg_iou_thresh, box_bg_iou_thresh=h.bg_iou_thresh,
        box_batch_size_per_image=h.batch_size_per_image, box_positive_fraction=h.positive_fraction,
    )


def _transform_args(cfg) -> dict:
    t = cfg.transform
    return dict(min_size=t.min_size, max_size=t.max_size, image_mean=list(t.image_mean), image_std=list(t.image_std))


def torchvision_fcos(model, cfg) -> FCOS:
    """A plain torchvision FCOS sharing detector 1's modules and the recipe's settings.
    Its labels count from 0: label l of ours is its l - 1 (see model/one_stage_heads.py)."""
    h1, f = model.head1, cfg.fcos
    return FCOS(_BackboneWithNeck(model.backbone1, h1), num_classes=None, **_transform_args(cfg),
                anchor_generator=h1.anchor_generator, head=h1.head, center_sampling_radius=f.center_sampling_radius,
                score_thresh=f.score_thresh, nms_thresh=f.nms_thresh, detections_per_img=f.detections_per_img,
                topk_candidates=f.topk_candidates).eval()


def torchvision_retinanet(model, cfg) -> RetinaNet:
    """A plain torchvision RetinaNet sharing detector 1's modules and the recipe's settings.
    Its labels count from 0: label l of ours is its l - 1 (see model/one_stage_heads.py)."""
    h1, r = model.head1, cfg.retinanet
    return RetinaNet(_BackboneWithNeck(model.backbone1, h1), num_classes=None, **_transform_args(cfg),
                     anchor_generator=h1.anchor_generator, head=h1.head, fg_iou_thresh=r.fg_iou_thresh,
                     bg_iou_thresh=r.bg_iou_thresh, score_thresh=r.score_thresh, nms_thresh=r.nms_thresh,
                     detections_per_img=r.detections_per_img, topk_candidates=r.topk_candidates).eval()


class YOLODetector(nn.Module):
    """A plain one-route YOLO: transform, backbone, head (model/yolo_head.py), in torchvision's
    detector contract. eval: forward(images) -> list of dict(boxes in input pixels, labels 1..C,
    scores); training: forward(images, targets) -> dict(loss_cls, loss_box, loss_dfl)."""

    def __init__(self, transform: GeneralizedRCNNTransform, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.transform, self.backbone, self.head = transform, backbone, head

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, targets = self.transform(images, targets)
        dets, losses = self.head(image_list, self.backbone(image_list.tensors), targets)
        if self.training:
            return losses
        return self.transform.postprocess(dets, image_list.image_sizes, original_sizes)


def yolo_detector(model, cfg) -> YOLODetector:
    """Detector 1 of a Dy-YOLO as a plain YOLODetector (shared modules, eval mode)."""
    return YOLODetector(model.transform, model.backbone1, model.head1).eval()


def plain_detector(cfg, num_classes: int | None = None) -> nn.Module:
    """The single-route detector of a recipe's ModelConfig with fresh weights (eval mode): what
    its detector 1 would be without the cascade, for benches that compare like with like."""
    from dynamicdet_cli.model.build import build_model

    return torchvision_reference(build_model(cfg, num_classes), cfg)


REFERENCES = {"faster_rcnn": torchvision_faster_rcnn, "mask_rcnn": torchvision_mask_rcnn, "fcos": torchvision_fcos,
              "retinanet": torchvision_retinanet, "yolo": yolo_detector}


def torchvision_reference(model, cfg):
    """Detector 1 of `model` as the plain detector of the recipe's family (eval mode)."""
    return REFERENCES[cfg.family](model, cfg)

