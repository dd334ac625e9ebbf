"""Dy-Mask R-CNN: the easy route against a plain torchvision MaskRCNN, mixed routes, and the
per-image losses (mask loss included) against the head's own forward."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from dynamicdet_cli.model.build import build_model
from dynamicdet_cli.model.mask_rcnn_head import MaskRCNNHead
from dynamicdet_cli.model.reference import torchvision_mask_rcnn
from dynamicdet_cli.config.recipe import load_recipe, with_overrides

from conftest import RECIPES, TINY_OVERRIDES
from helpers import regrouped_at_median, routed_at_median

LOSS_PARTS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


@pytest.fixture(scope="module")
def mask_recipe():
    """recipes/shapes-mask-tiny.yaml at 64 px."""
    return with_overrides(load_recipe(RECIPES / "shapes-mask-tiny.yaml"), TINY_OVERRIDES)


@pytest.fixture
def make_mask_model(mask_recipe, one_thread):
    def make(*overrides: str, seed: int = 0):
        torch.manual_seed(seed)
        return build_model(with_overrides(mask_recipe, list(overrides)).model).eval()
    return make


def assert_same_masks(got: dict, want: dict) -> None:
    assert got["boxes"].shape[0] > 0, "the test needs some detections to compare"
    for key in ("boxes", "scores", "labels", "masks"):
        assert_close(got[key], want[key])


def _targets(n_boxes: list[int], size: int = 64, seed: int = 0) -> list[dict]:
    """Random boxes, each with a mask: its box less two rows at the top and bottom, so the
    mask is not simply the box."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in n_boxes:
        xy = torch.rand(n, 2, generator=g) * 30
        boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 20], dim=1)  # N,4 x1y1x2y2
        masks = torch.zeros(n, size, size, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
            masks[k, y1 + 2:y2 - 2, x1:x2] = 1
        out.append({"boxes": boxes, "labels": torch.randint(1, 6, (n,), generator=g), "masks": masks})
    return out


def test_heads_are_mask_rcnn_heads(make_mask_model):
    model = make_mask_model("model.roi_heads.canonical_scale=56")
    assert isinstance(model.head1, MaskRCNNHead) and isinstance(model.head2, MaskRCNNHead)
    assert model.head1.roi_heads.has_mask() and model.head2.roi_heads.has_mask()
    roi = model.head1.roi_heads  # the mask branch reads each box from the box branch's level
    assert roi.mask_roi_pool.canonical_scale == roi.box_roi_pool.canonical_scale == 56


def test_easy_route_is_a_plain_torchvision_mask_rcnn(make_mask_model, mask_recipe, images):
    model = make_mask_model("model.roi_heads.score_thresh=0.0")
    reference = torchvision_mask_rcnn(model, mask_recipe.model)
    with torch.no_grad():
        ours = model.detect(images, route="easy")
        theirs = reference(images)
    for got, want in zip(ours, theirs):
        assert got["route"] == "easy"
        assert got["masks"].shape[1:] == (1, 64, 64)  # pasted into the input image
        assert_same_masks(got, want)


def test_mixed_batch_matches_each_image_alone(make_mask_model, images):
    mixed, alone, _, _ = routed_at_median(make_mask_model(), images)
    for got, want in zip(mixed, alone):
        assert_same_masks(got, want)


def test_regrouped_routes_match_each_image_alone(make_mask_model, images):
    regrouped, alone = regrouped_at_median(make_mask_model(), images)
    for got, want in zip(regrouped, alone):
        assert_same_masks(got, want)


def test_detect_both_gives_each_route_with_masks(make_mask_model, images):
    model = make_mask_model()
    with torch.no_grad():
        easy, hard, _ = model.detect_both(images[:2])
        want_easy = model.detect(images[:2], route="easy")
        want_hard = model.detect(images[:2], route="hard")
    for got, want in zip(easy + hard, want_easy + want_hard):
        assert_same_masks(got, want)


def test_joint_training_has_both_mask_losses(make_mask_model, images):
    model = make_mask_model().train()
    torch.manual_seed(0)
    losses = model(images[:2], _targets([3, 2]))
    assert set(losses) == {f"d{i}/{p}" for i in (1, 2) for p in (*LOSS_PARTS, "total")} | {"loss"}
    assert losses["d1/loss_mask"] > 0 and losses["d2/loss_mask"] > 0
    assert_close(losses["d1/total"], sum(losses[f"d1/{p}"] for p in LOSS_PARTS))
    losses["loss"].backward()
    grads = [p.grad for p in model.head2.roi_heads.mask_predictor.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_training_without_masks_is_refused(make_mask_model, images):
    targets = _targets([1])
    del targets[0]["masks"]
    with pytest.raises(ValueError, match="masks"):
        make_mask_model().train()(images[:1], targets)


@pytest.mark.parametrize("head", ["head1", "head2"])
def test_per_image_losses_equal_the_heads_forward_draw_by_draw(make_mask_model, images, head):
    """Each image's draw, mask loss included, must be what the head's own forward (RPN +
    RoIHeads with its mask branch) gives for that image alone under the same seed."""
    model = make_mask_model()
    model.freeze_detectors()
    batch_images, batch_targets = images[:3], _targets([2, 0, 3], seed=1)
    seeds = [[3, 4], [5, 6], [7, 8]]

    def feats_of(image_list):
        f1 = model.backbone1(image_list.tensors)
        return f1 if head == "head1" else model.second_backbone(image_list.tensors, f1)

    with torch.no_grad():
        image_list, targets, _ = model.prepare(batch_images, batch_targets)
        got = getattr(model, head).per_image_losses(image_list, feats_of(image_list), targets, seeds)
        want, mask_parts = [], []
        for i in range(3):
            one, one_targets, _ = model.prepare([batch_images[i]], [batch_targets[i]])
            draws = []
            for seed in seeds[i]:
                torch.manual_seed(seed)
                losses = getattr(model, head)(one, feats_of(one), one_targets)[1]
                assert "loss_mask" in losses
                mask_parts.append(float(losses["loss_mask"]))
                draws.append(sum(losses.values()))
            want.append((draws[0] + draws[1]) / 2)
    assert any(m > 0 for m in mask_parts)  # the mask loss is part of what is compared
    assert_close(got, torch.stack(want), rtol=1e-4, atol=1e-5)


def test_router_targets_include_the_mask_loss(make_mask_model, images):
    """L1 and L2 are each detector's full loss: scaling only the mask predictor's weights
    changes them (box-only losses would not move)."""
    model = make_mask_model()
    model.freeze_detectors()
    targets = _targets([2, 3], seed=2)
    with torch.no_grad():
        l1, l2, _ = model.per_image_losses(images[:2], targets, seeds=[1, 2])
        for m in (model.head1, model.head2):
            m.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(5.0)
        l1_scaled, l2_scaled, _ = model.per_image_losses(images[:2], targets, seeds=[1, 2])
    assert not torch.allclose(l1, l1_scaled) and not torch.allclose(l2, l2_scaled)


def test_init_from_a_torchvision_mask_rcnn_state_dict(tmp_path, one_thread):
    """--init with torchvision's MaskRCNN layout (maskrcnn_resnet50_fpn's, here on a ResNet-18
    to stay small) fills both detectors' mask branches."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    from dynamicdet_cli.train.starting_weights import load_init_weights

    torch.manual_seed(1)
    theirs = MaskRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5), num_classes=None,
                      box_head=TwoMLPHead(256 * 7 * 7, 32), box_predictor=FastRCNNPredictor(32, 6),  # a small box head
                      mask_predictor=MaskRCNNPredictor(256, 256, 6))
    torch.save(theirs.state_dict(), tmp_path / "maskrcnn.pt")
    recipe = load_recipe(RECIPES / "dy-mask-rcnn-r50-fpn.yaml", ["model.num_classes=5", "model.backbone.depth=18",
                                                                 "model.roi_heads.representation_size=32"])
    torch.manual_seed(0)
    ours = build_model(recipe.model)
    note = load_init_weights(ours, str(tmp_path / "maskrcnn.pt"))
    assert "torchvision detector state dict" in note and "skipped" not in note
    for head in (ours.head1, ours.head2):
        assert_close(head.roi_heads.mask_predictor.mask_fcn_logits.weight,
                     theirs.roi_heads.mask_predictor.mask_fcn_logits.weight, rtol=0, atol=0)
        assert_close(head.roi_heads.mask_head[0][0].weight, theirs.roi_heads.mask_head[0][0].weight, rtol=0, atol=0)
