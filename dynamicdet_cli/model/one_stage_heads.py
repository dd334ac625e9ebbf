"""One-stage detector heads: FCOS and RetinaNet after a stage backbone.

The same contract as the Faster R-CNN head (model/heads.py):

    head(images: ImageList, feats: dict[int, Tensor], targets=None)
        -> (detections: list[dict(boxes FloatTensor[N,4] x1y1x2y2 in the resized frame,
                                  labels Int64Tensor[N], scores FloatTensor[N])],
            losses: dict[str, Tensor])   # detections empty in training, losses empty in eval
    head.per_image_losses(images, feats, targets, seeds) -> Tensor[B]

A head is an FPN over the backbone's stages plus P6 and P7 (torchvision's LastLevelP6P7, P6
computed from P5), and one of torchvision's dense heads (FCOSHead, RetinaNetHead) with its
anchor generator and box coder. Nothing of the detector is re-implemented here: torchvision keeps
the matching of anchors to boxes and the post-processing (score threshold, top-k per level, box
decoding, NMS) as methods of its whole detector class (`FCOS.compute_loss`,
`FCOS.postprocess_detections`, RetinaNet's likewise). Those methods read only the attributes
listed in each class below, which these modules hold under the same names, so the methods are
borrowed as they are. tests/test_one_stage.py holds the result to torchvision's own FCOS and
RetinaNet on shared weights.

Labels: torchvision's dense heads score each class with a sigmoid of its own and have no
background class; the label they return is the logit's index, counted from 0. Ours are
1..num_classes, so a head has num_classes logits and shifts labels by one on the way in (targets)
and out (detections): logit l - 1 scores label l. (torchvision's COCO models instead keep 91
logits, index 0 for a background that is never a target but can still come out as a label.)
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOS, FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


def _labels_from_zero(targets: list[dict]) -> list[dict]:
    """Targets with labels 1..C as the logit indices 0..C-1 torchvision's losses expect."""
    return [{**t, "labels": t["labels"] - 1} for t in targets]


class OneStageHead(nn.Module):
    """FPN neck (stages + P6, P7) + a torchvision dense head, its anchors and post-processing.

    FPN levels are named "0", "1", ... in stage order, then "p6", "p7" (torchvision's names).
    Subclasses borrow their family's `compute_loss` and `postprocess_detections` and say in
    `family_losses` how its compute_loss is called.
    """

    def __init__(self, neck: FeaturePyramidNetwork, anchor_generator: AnchorGenerator, head: nn.Module,
                 box_coder, stages: list[int], score_thresh: float, nms_thresh: float,
                 detections_per_img: int, topk_candidates: int):
        super().__init__()
        self.neck = neck
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = box_coder
        self.stages = list(stages)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates

    def neck_features(self, feats: dict[int, Tensor]) -> "OrderedDict[str, Tensor]":
        x = OrderedDict((str(i), feats[s]) for i, s in enumerate(self.stages))
        return self.neck(x)

    def family_losses(self, targets: list[dict], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                      anchors_per_level: list[int]) -> dict[str, Tensor]:
        raise NotImplementedError

    def dense_outputs(self, images: ImageList, feats: dict[int, Tensor]):
        """The head over every FPN level, and the anchors.

        Returns (head_outputs: dict of B,sum(HWA),* tensors, level-major as torchvision's heads
        give them; anchors: one sum(HWA),4 tensor per image; anchors per level: H*W*A each).
        """
        features = list(self.neck_features(feats).values())
        head_outputs = self.head(features)
        anchors = self.anchor_generator(images, features)
        per_location = self.anchor_generator.num_anchors_per_location()[0]
        per_level = [x.size(2) * x.size(3) * per_location for x in features]
        return head_outputs, anchors, per_level

    def forward(self, images: ImageList, feats: dict[int, Tensor], targets=None):
        head_outputs, anchors, per_level = self.dense_outputs(images, feats)
        if self.training:
            return [], self.family_losses(_labels_from_zero(targets), head_outputs, anchors, per_level)
        split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        detections = self.postprocess_detections(split_outputs, split_anchors, images.image_sizes)
        for det in detections:
            det["labels"] = det["labels"] + 1  # logit index -> label
        return detections, {}

    def per_image_losses(self, images: ImageList, feats: dict[int, Tensor], targets: list[dict],
                         seeds: list[list[int | None]]) -> Tensor:
        """Each image's total training loss. B

        Image i's loss equals `sum(self(image_i_alone, its feats, [targets[i]])[1].values())`
        (a test holds it to that). The neck, the dense head and the anchors run once for the
        batch; only the matching and the loss run image by image (torchvision's FCOS divides a
        batch's loss by the batch's foreground count, RetinaNet averages over images). FCOS
        and RetinaNet sample nothing (every anchor enters the loss), so every draw would give
        the same value: `seeds` is taken for the interface every head shares and the loss is
        computed once. Meant for batches of one image size.
        """
        head_outputs, anchors, per_level = self.dense_outputs(images, feats)
        targets = _labels_from_zero(targets)
        totals = []
        for i in range(len(anchors)):
            one = {k: v[i:i + 1] for k, v in head_outputs.items()}
            totals.append(sum(self.family_losses([targets[i]], one, [anchors[i]], per_level).values()))
        return torch.stack(totals)


class FCOSDetectorHead(OneStageHead):
    """FCOS after the backbone: anchor-free, one point per location, GIoU and centre-ness losses.

    Borrowed from torchvision's FCOS, which reads: anchor_generator, head, box_coder,
    center_sampling_radius, score_thresh, topk_candidates, nms_thresh, detections_per_img.
    """

    compute_loss = FCOS.compute_loss
    postprocess_detections = FCOS.postprocess_detections

    def __init__(self, neck: FeaturePyramidNetwork, anchor_generator: AnchorGenerator, head: FCOSHead,
                 stages: list[int], center_sampling_radius: float, score_thresh: float, nms_thresh: float,
                 detections_per_img: int, topk_candidates: int):
        super().__init__(neck, anchor_generator, head, det_utils.BoxLinearCoder(normalize_by_size=True), stages,
                         score_thresh, nms_thresh, detections_per_img, topk_candidates)
        self.center_sampling_radius = center_sampling_radius

    def family_losses(self, targets, head_outputs, anchors, anchors_per_level):
        return self.compute_loss(targets, head_outputs, anchors, anchors_per_level)


class RetinaNetDetectorHead(OneStageHead):
    """RetinaNet after the backbone: anchors matched by IoU, focal and L1 losses.

    Borrowed from torchvision's RetinaNet, which reads: anchor_generator, head, proposal_matcher,
    box_coder, score_thresh, topk_candidates, nms_thresh, detections_per_img.
    """

    compute_loss = RetinaNet.compute_loss
    postprocess_detections = RetinaNet.postprocess_detections

    def __init__(self, neck: FeaturePyramidNetwork, anchor_generator: AnchorGenerator, head: RetinaNetHead,
                 stages: list[int], proposal_matcher: det_utils.Matcher, score_thresh: float, nms_thresh: float,
                 detections_per_img: int, topk_candidates: int):
        super().__init__(neck, anchor_generator, head, det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)), stages,
                         score_thresh, nms_thresh, detections_per_img, topk_candidates)
        self.proposal_matcher = proposal_matcher

    def family_losses(self, targets, head_outputs, anchors, anchors_per_level):
        return self.compute_loss(targets, head_outputs, anchors)


def _p3_p7_neck(in_channels: list[int], channels: int) -> FeaturePyramidNetwork:
    """torchvision's one-stage neck: FPN over the stages, then P6 from P5 and P7 from P6."""
    return FeaturePyramidNetwork(in_channels, channels, extra_blocks=LastLevelP6P7(channels, channels))


def build_fcos_head(in_channels: list[int], stages: list[int], num_classes: int, cfg) -> FCOSDetectorHead:
    """Build an FCOS head from `cfg` (the recipe's ModelConfig; its `fcos` section).

    in_channels: the backbone's output channels of each stage in `stages`.
    num_classes: object classes, background excluded.
    """
    c, f = cfg.neck.out_channels, cfg.fcos
    anchors = AnchorGenerator(sizes=tuple((s,) for s in f.anchor_sizes), aspect_ratios=((1.0,),) * len(f.anchor_sizes))
    return FCOSDetectorHead(
        _p3_p7_neck(in_channels, c), anchors, FCOSHead(c, 1, num_classes, num_convs=f.num_convs), stages,
        center_sampling_radius=f.center_sampling_radius, score_thresh=f.score_thresh, nms_thresh=f.nms_thresh,
        detections_per_img=f.detections_per_img, topk_candidates=f.topk_candidates)


def retinanet_anchor_sizes(base_sizes: tuple[int, ...], scales_per_octave: int) -> tuple[tuple[int, ...], ...]:
    """Per level: the base size times 2**(i / scales_per_octave), i < scales_per_octave
    (torchvision's RetinaNet: x, int(x * 2**(1/3)), int(x * 2**(2/3)))."""
    return tuple(tuple(int(s * 2 ** (i / scales_per_octave)) for i in range(scales_per_octave)) for s in base_sizes)


def build_retinanet_head(in_channels: list[int], stages: list[int], num_classes: int, cfg) -> RetinaNetDetectorHead:
    """Build a RetinaNet head from `cfg` (the recipe's ModelConfig; its `retinanet` section).

    in_channels: the backbone's output channels of each stage in `stages`.
    num_classes: object classes, background excluded.
    """
    c, r = cfg.neck.out_channels, cfg.retinanet
    sizes = retinanet_anchor_sizes(r.anchor_sizes, r.scales_per_octave)
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(r.aspect_ratios),) * len(sizes))
    head = RetinaNetHead(c, anchors.num_anchors_per_location()[0], num_classes)
    return RetinaNetDetectorHead(
        _p3_p7_neck(in_channels, c), anchors, head, stages,
        proposal_matcher=det_utils.Matcher(r.fg_iou_thresh, r.bg_iou_thresh, allow_low_quality_matches=True),
        score_thresh=r.score_thresh, nms_thresh=r.nms_thresh, detections_per_img=r.detections_per_img,
        topk_candidates=r.topk_candidates)
