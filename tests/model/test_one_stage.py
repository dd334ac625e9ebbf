"""One-stage families (FCOS, RetinaNet): each route against torchvision's own detector, mixed
routes, per-image losses against the head's own forward, training losses, recipes, cost, init."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.model.build import build_model
from dynamicdet_cli.model.one_stage_heads import FCOSDetectorHead, RetinaNetDetectorHead, retinanet_anchor_sizes
from dynamicdet_cli.train.starting_weights import load_init_weights
from dynamicdet_cli.model.reference import torchvision_reference
from dynamicdet_cli.config.recipe import load_recipe, with_overrides
from dynamicdet_cli.model.cost import route_flops, route_params

from conftest import RECIPES, TINY_OVERRIDES
from helpers import regrouped_at_median, routed_at_median

FAMILIES = ["fcos", "retinanet"]
LOSS_PARTS = {"fcos": ("classification", "bbox_regression", "bbox_ctrness"),
              "retinanet": ("classification", "bbox_regression")}
# Every candidate kept, so that untrained heads return detections to compare; RetinaNet's anchors
# at the strides of the 64 px test images (its COCO sizes start at 32 px).
TEST_SETS = ("model.fcos.score_thresh=0.0", "model.retinanet.score_thresh=0.0",
             "model.retinanet.anchor_sizes=[8,16,32,64,128]")


@pytest.fixture(scope="module")
def one_stage_recipe():
    """recipes/shapes-fcos-tiny.yaml at 64 px."""
    return with_overrides(load_recipe(RECIPES / "shapes-fcos-tiny.yaml"), TINY_OVERRIDES)


@pytest.fixture
def make_one_stage(one_stage_recipe, one_thread):
    """make_one_stage(family, *overrides) -> (model in eval mode, its ModelConfig), seed 0."""
    def make(family: str, *overrides: str):
        cfg = with_overrides(one_stage_recipe, [f"model.family={family}", *TEST_SETS, *overrides]).model
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        # Untrained, every class score sits at the head's prior (0.01): thousands of ties, whose
        # order floating-point noise decides. Spread the scores so detections can be compared.
        for head in (model.head1, model.head2):
            for conv in head.head.classification_head.modules():
                if isinstance(conv, torch.nn.Conv2d):
                    torch.nn.init.normal_(conv.weight, std=0.05)  # about He initialisation
        return model, cfg
    return make


def _targets(n_boxes: list[int], seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in n_boxes:
        xy = torch.rand(n, 2, generator=g) * 30
        out.append({"boxes": torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 24], dim=1),  # N,4 x1y1x2y2
                    "labels": torch.randint(1, 6, (n,), generator=g)})
    return out


def assert_same_detections(got: dict, want: dict) -> None:
    assert got["boxes"].shape[0] > 0, "the test needs some detections to compare"
    for key in ("boxes", "scores", "labels"):
        assert_close(got[key], want[key])


# ----------------------------------------------------------------------------- routes vs references

@pytest.mark.parametrize("family", FAMILIES)
def test_easy_route_is_the_plain_torchvision_detector(make_one_stage, images, family):
    model, cfg = make_one_stage(family)
    reference = torchvision_reference(model, cfg)
    assert type(reference).__name__ == {"fcos": "FCOS", "retinanet": "RetinaNet"}[family]
    with torch.no_grad():
        ours = model.detect(images, route="easy")
        theirs = reference(images)
    for got, want in zip(ours, theirs):
        assert got["route"] == "easy"
        # torchvision's labels are logit indices from 0 (no background class); ours count from 1
        assert_same_detections(got, {**want, "labels": want["labels"] + 1})
        assert 1 <= got["labels"].min() and got["labels"].max() <= 5


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_batch_matches_each_image_alone(make_one_stage, images, family):
    mixed, alone, _, _ = routed_at_median(make_one_stage(family)[0], images)
    for got, want in zip(mixed, alone):
        assert_same_detections(got, want)


@pytest.mark.parametrize("family", FAMILIES)
def test_regrouped_routes_match_each_image_alone(make_one_stage, images, family):
    regrouped, alone = regrouped_at_median(make_one_stage(family)[0], images)
    for got, want in zip(regrouped, alone):
        assert_same_detections(got, want)


@pytest.mark.parametrize("family", FAMILIES)
def test_hard_route_differs_from_the_easy_one(make_one_stage, images, family):
    """The hard route runs detector 2 (other weights): were it detector 1 again, the tests above
    would pass for the wrong reason."""
    model, _ = make_one_stage(family)
    with torch.no_grad():
        easy, hard = model.detect(images[:1], route="easy")[0], model.detect(images[:1], route="hard")[0]
    assert hard["route"] == "hard"
    assert not torch.equal(easy["scores"], hard["scores"])


# ----------------------------------------------------------------------------- losses

@pytest.mark.parametrize("family", FAMILIES)
def test_per_image_losses_equal_the_heads_forward_on_each_image_alone(make_one_stage, images, family):
    """The head runs once for the batch, the loss per image; each image's loss must be what the
    head's own training forward (torchvision's compute_loss) gives for that image alone."""
    model, _ = make_one_stage(family)
    model.freeze_detectors()
    batch_images, batch_targets = images[:3], _targets([3, 0, 1])
    with torch.no_grad():
        l1, l2, _ = model.per_image_losses(batch_images, batch_targets, seeds=[1, 2, 3], draws=2)
        for head, got in (("head1", l1), ("head2", l2)):
            want = []
            for img, target in zip(batch_images, batch_targets):
                one, one_targets, _ = model.prepare([img], [target])
                feats = model.backbone1(one.tensors)
                if head == "head2":
                    feats = model.second_backbone(one.tensors, feats)
                want.append(sum(getattr(model, head)(one, feats, one_targets)[1].values()))
            assert_close(got, torch.stack(want), rtol=1e-4, atol=1e-5)
    assert len(set(l1.tolist())) == 3  # three images, three different losses


@pytest.mark.parametrize("family", FAMILIES)
def test_joint_training_losses_and_gradients(make_one_stage, images, family):
    model, _ = make_one_stage(family)
    model.train()
    losses = model(images[:2], _targets([3, 2]))
    parts = LOSS_PARTS[family]
    assert set(losses) == {f"d{i}/{p}" for i in (1, 2) for p in (*parts, "total")} | {"loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    for part in ("backbone1", "backbone2", "head1", "head2"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), part


@pytest.mark.parametrize("family", FAMILIES)
def test_images_without_boxes_give_zero_box_regression(make_one_stage, images, family):
    model, _ = make_one_stage(family)
    model.train()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in range(2)]
    losses = model(images[:2], empty)
    for d in ("d1", "d2"):
        assert losses[f"{d}/bbox_regression"].item() == 0.0
        assert losses[f"{d}/classification"] > 0  # every location is a negative
    assert all(torch.isfinite(v) for v in losses.values())


# ----------------------------------------------------------------------------- recipes, cost, init

@pytest.mark.parametrize("name,family", [("dy-fcos-r50-fpn.yaml", "fcos"), ("dy-retinanet-r50-fpn.yaml", "retinanet"),
                                         ("shapes-fcos-tiny.yaml", "fcos")])
def test_shipped_one_stage_recipes_build_torchvisions_configuration(name, family):
    cfg = load_recipe(RECIPES / name).model
    assert cfg.family == family and cfg.backbone.stages == (2, 3, 4)
    head = build_model(cfg).head1
    assert isinstance(head, FCOSDetectorHead if family == "fcos" else RetinaNetDetectorHead)
    assert list(head.neck_features({s: torch.zeros(1, c, 2, 2) for s, c in
                                   zip((2, 3, 4), [m[0].in_channels for m in head.neck.inner_blocks])})) \
        == ["0", "1", "2", "p6", "p7"]
    if family == "retinanet":  # torchvision's _default_anchorgen
        assert head.anchor_generator.sizes == tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3)))
                                                    for x in (32, 64, 128, 256, 512))
        assert head.anchor_generator.num_anchors_per_location() == [9] * 5
    else:
        assert head.anchor_generator.num_anchors_per_location() == [1] * 5


def test_retinanet_anchor_sizes_follow_the_octave_scales():
    assert retinanet_anchor_sizes((32,), 3) == ((32, 40, 50),)
    assert retinanet_anchor_sizes((8, 16), 1) == ((8,), (16,))


@pytest.mark.parametrize("override,needle", [
    ("model.fcos.anchor_sizes=[8,16,32]", "model.fcos.anchor_sizes: 3 sizes given, but the FPN has 5 levels"),
    ("model.neck.out_channels=48", "multiple of 32 from 64 up"),
    ("model.neck.out_channels=32", "multiple of 32 from 64 up"),
])
def test_one_stage_recipe_errors_say_what_to_change(one_stage_recipe, override, needle):
    with pytest.raises(DynamicDetError, match=needle):
        with_overrides(one_stage_recipe, [override])


def test_retinanet_thresholds_in_order(one_stage_recipe):
    with pytest.raises(DynamicDetError, match="bg_iou_thresh"):
        with_overrides(one_stage_recipe, ["model.family=retinanet", "model.retinanet.bg_iou_thresh=0.6"])


@pytest.mark.parametrize("family", FAMILIES)
def test_route_costs_are_ordered(make_one_stage, family):
    model, _ = make_one_stage(family)
    params = route_params(model)
    assert 0 < params["easy"] < params["hard"] < params["total"]
    flops = route_flops(model, 64, 64)
    assert 0 < flops["easy"] < flops["hard"]


def test_init_from_a_torchvision_fcos_state_dict(tmp_path, one_thread):
    """A torchvision FCOS's weights (backbone.body, backbone.fpn, head) land in both detectors."""
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    torch.manual_seed(1)
    theirs = FCOS(backbone, num_classes=5)
    path = tmp_path / "fcos_r18.pth"
    torch.save(theirs.state_dict(), path)
    cfg = load_recipe(RECIPES / "dy-fcos-r50-fpn.yaml", ["model.backbone.depth=18", "model.num_classes=5"]).model
    torch.manual_seed(0)
    model = build_model(cfg)
    report = load_init_weights(model, str(path))
    assert "into both detectors" in report and "skipped" not in report
    for d in ("head1", "head2"):
        ours = getattr(model, d)
        assert_close(ours.head.classification_head.cls_logits.weight, theirs.head.classification_head.cls_logits.weight)
        assert_close(ours.neck.extra_blocks.p7.weight, theirs.backbone.fpn.extra_blocks.p7.weight)
    assert_close(model.backbone2.stages["3"][0].conv1.weight, theirs.backbone.body.layer3[0].conv1.weight)
