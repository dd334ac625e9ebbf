"""The dynamic detector: each route against a reference, mixed routes, losses, router training, cost."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from dynamicdet_cli.model.backbone import RegNetBackbone, ResNetBackbone, build_regnet, build_resnet
from dynamicdet_cli.model.build import build_model
from dynamicdet_cli.model.reference import torchvision_faster_rcnn
from dynamicdet_cli.model.router import pool_features
from dynamicdet_cli.config.recipe import load_recipe, with_overrides
from dynamicdet_cli.model.cost import route_flops, route_params
from helpers import routed_at_median

LOSS_PARTS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


def assert_same_detections(got: dict, want: dict) -> None:
    assert got["boxes"].shape[0] > 0, "the test needs some detections to compare"
    for key in ("boxes", "scores", "labels"):
        assert_close(got[key], want[key])


# ----------------------------------------------------------------------------- routes vs references

def test_easy_route_is_a_plain_torchvision_faster_rcnn(make_model, tiny_recipe, images):
    model = make_model("model.roi_heads.score_thresh=0.0")
    cfg = tiny_recipe.model
    reference = torchvision_faster_rcnn(model, cfg)
    with torch.no_grad():
        ours = model.detect(images, route="easy")
        theirs = reference(images)
    for got, want in zip(ours, theirs):
        assert got["route"] == "easy"
        assert_same_detections(got, want)


REGNET = ("model.backbone.kind=regnet", "model.backbone.widths=[16,32,64,128]", "model.backbone.stem_width=16")
RESNET = ("model.backbone.kind=resnet", "model.backbone.depth=10")


@pytest.mark.parametrize("kind", ["resnet", "regnet"])
@pytest.mark.parametrize("share_stem", [False, True])
def test_zero_composite_leaves_backbone2_independent(make_model, tiny_recipe, share_stem, kind):
    extra = REGNET if kind == "regnet" else RESNET
    model = make_model(f"model.backbone.share_stem={str(share_stem).lower()}", "model.composite.zero_init=true", *extra)
    b = model_backbone_cfg(tiny_recipe, extra)
    # An independent backbone: B2's own weights; with a shared stem, B1's stem and stage 1.
    if kind == "regnet":
        alone = RegNetBackbone(build_regnet(b.depths, b.widths, b.group_width, b.bottleneck, b.se_ratio,
                                            b.stem_width, b.norm), first_stage=1).eval()
    else:
        alone = ResNetBackbone(build_resnet(b.depth, b.norm), first_stage=1).eval()
    state = {k: v for k, v in model.backbone2.state_dict().items()}
    if share_stem:
        state.update({k: v for k, v in model.backbone1.state_dict().items() if k.startswith(("stem.", "stages.1."))})
    alone.load_state_dict(state)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # B,3,H,W
    with torch.no_grad():
        feats1 = model.backbone1(x)
        assert all((h == 0).all() for h in model.composite(feats1).values())
        got = model.second_backbone(x, feats1)
        want = alone(x)
    assert sorted(got) == [1, 2, 3, 4]
    for l in want:
        assert_close(got[l], want[l], rtol=0, atol=0)


def model_backbone_cfg(tiny_recipe, overrides):
    from dynamicdet_cli.config.recipe import with_overrides
    return with_overrides(tiny_recipe, list(overrides)).model.backbone


def test_regnet_composite_inputs_match_every_stage_input(make_model):
    model = make_model(*REGNET, "model.composite.zero_init=false")
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))  # B,3,H,W
    with torch.no_grad():
        feats1 = model.backbone1(x)
        composite = model.composite(feats1)
        stem = model.backbone1.stem(x)
    assert [tuple(feats1[l].shape[1:]) for l in (1, 2, 3, 4)] == [(16, 16, 24), (32, 8, 12), (64, 4, 6), (128, 2, 3)]
    assert tuple(composite[1].shape) == tuple(stem.shape)  # stage 1's input: the stem's output, stride 2
    for l in (2, 3, 4):
        assert tuple(composite[l].shape) == tuple(feats1[l - 1].shape)
    assert any(h.abs().sum() > 0 for h in composite.values())


# ----------------------------------------------------------------------------- routing under a threshold

@pytest.mark.parametrize("kind", ["resnet", "regnet"])
def test_mixed_batch_matches_each_image_alone(make_model, images, kind):
    mixed, alone, _, _ = routed_at_median(make_model(*(REGNET if kind == "regnet" else RESNET)), images)
    for got, want in zip(mixed, alone):
        assert_close(got["difficulty"], want["difficulty"])
        assert_same_detections(got, want)


def test_threshold_ends_send_all_one_way(tiny_model, images):
    with torch.no_grad():
        assert {r["route"] for r in tiny_model.detect(images, route=0.0)} == {"hard"}
        assert {r["route"] for r in tiny_model.detect(images, route=1.0)} == {"easy"}


def _forbid(module: nn.Module, name: str):
    def hook(*_):
        raise AssertionError(f"{name} ran")
    return module.register_forward_pre_hook(hook)


def test_easy_route_never_runs_the_second_detector(tiny_model, images):
    for part in ("composite", "backbone2", "head2"):
        _forbid(getattr(tiny_model, part), part)
    with torch.no_grad():
        assert {r["route"] for r in tiny_model.detect(images, route="easy")} == {"easy"}


def test_hard_route_never_runs_head1(tiny_model, images):
    _forbid(tiny_model.head1, "head1")
    with torch.no_grad():
        assert {r["route"] for r in tiny_model.detect(images, route="hard")} == {"hard"}


def test_split_by_route_sends_phi_above_tau_hard():
    from dynamicdet_cli.model.detector import DynamicDetector
    phi = torch.tensor([0.2, 0.5, 0.9, 0.5])
    assert DynamicDetector.split_by_route(phi, 0.5) == ([0, 1, 3], [2])  # strictly above tau
    assert DynamicDetector.split_by_route(phi, "easy") == ([0, 1, 2, 3], [])
    assert DynamicDetector.split_by_route(phi, "hard") == ([], [0, 1, 2, 3])
    assert DynamicDetector.split_by_route(phi, 0.0) == ([], [0, 1, 2, 3])


def test_unknown_route_is_refused(tiny_model, images):
    with pytest.raises(ValueError, match="route"):
        tiny_model.detect(images[:1], route="medium")


# ----------------------------------------------------------------------------- training

def _targets(n_boxes: list[int]) -> list[dict]:
    out = []
    for n in n_boxes:
        xy = torch.rand(n, 2) * 30
        out.append({"boxes": torch.cat([xy, xy + 10 + torch.rand(n, 2) * 20], dim=1),  # N,4 x1y1x2y2
                    "labels": torch.randint(1, 6, (n,))})
    return out


def test_joint_training_losses_and_gradients(tiny_model, images):
    torch.manual_seed(0)
    model = tiny_model.train()
    losses = model(images[:2], _targets([3, 2]))
    expected = {f"d{i}/{p}" for i in (1, 2) for p in (*LOSS_PARTS, "total")} | {"loss"}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    for part in ("backbone1", "backbone2"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), part
    # The composite's BN scale starts at 0, so its conv gets no gradient yet but the scale does.
    bn_grads = [m.weight.grad for m in model.composite.modules() if isinstance(m, nn.BatchNorm2d)]
    assert any(g is not None and g.abs().sum() > 0 for g in bn_grads)


def test_images_without_boxes_give_zero_box_regression(tiny_model, images):
    torch.manual_seed(0)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in range(2)]
    losses = tiny_model.train()(images[:2], empty)
    for key in ("d1/loss_box_reg", "d2/loss_box_reg", "d1/loss_rpn_box_reg", "d2/loss_rpn_box_reg"):
        assert losses[key].item() == 0.0, key
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["d1/loss_classifier"] > 0 and losses["d1/loss_objectness"] > 0


def test_freeze_detectors_leaves_only_the_router_trainable(tiny_model):
    tiny_model.freeze_detectors()
    for name, p in tiny_model.named_parameters():
        assert p.requires_grad == name.startswith("router."), name
    assert not any(m.training for m in tiny_model.modules() if isinstance(m, nn.BatchNorm2d))
    assert tiny_model.head1.training and tiny_model.head2.training


def test_per_image_losses_are_shaped_finite_and_seeded(tiny_model, images):
    tiny_model.freeze_detectors()
    targets = _targets([2, 0, 1])
    batch = images[:3]
    with torch.no_grad():
        l1, l2, v = tiny_model.per_image_losses(batch, targets, seeds=[5, 6, 7], draws=2)
        again = tiny_model.per_image_losses(batch, targets, seeds=[5, 6, 7], draws=2)
    assert l1.shape == l2.shape == (3,)
    assert v.shape == (3, tiny_model.router.in_features)
    assert all(torch.isfinite(t).all() for t in (l1, l2, v))
    for a, b in zip((l1, l2, v), again):
        assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- cost per route

def test_route_costs_are_ordered(tiny_model):
    params = route_params(tiny_model)
    assert 0 < params["easy"] < params["hard"] < params["total"]
    flops = route_flops(tiny_model, 64, 64)
    assert 0 < flops["easy"] < flops["hard"]
    assert not tiny_model.training


def test_head_per_image_losses_equal_the_heads_forward_draw_by_draw(tiny_model, images):
    """per_image_losses shares the work before the sampling across a batch and across draws;
    each image's draw must still be what torchvision's RPN + RoIHeads forward gives for that
    image alone under the same seed."""
    tiny_model.freeze_detectors()
    batch_images, batch_targets = images[:2], _targets([2, 1])
    image_list, targets, _ = tiny_model.prepare(batch_images, batch_targets)
    seeds = [[3, 4], [5, 6]]
    with torch.no_grad():
        feats = tiny_model.backbone1(image_list.tensors)
        got = tiny_model.head1.per_image_losses(image_list, feats, targets, seeds)
        want = []
        for i in range(2):
            one, one_targets, _ = tiny_model.prepare([batch_images[i]], [batch_targets[i]])
            one_feats = tiny_model.backbone1(one.tensors)
            draws = []
            for seed in seeds[i]:
                torch.manual_seed(seed)
                draws.append(sum(tiny_model.head1(one, one_feats, one_targets)[1].values()))
            assert not torch.equal(draws[0], draws[1])  # the draws differ: averaging means something
            want.append((draws[0] + draws[1]) / 2)
    assert_close(got, torch.stack(want), rtol=1e-4, atol=1e-5)


def test_box_loss_weight_scales_the_box_term_in_training_and_in_router_targets(make_model, images):
    """roi_heads.box_loss_weight w: the head's loss_box_reg is w times the unweighted one (the
    other terms unchanged), and the router's per-image targets carry the same weighted sum."""
    plain, weighted = make_model("model.roi_heads.box_loss_weight=1"), make_model("model.roi_heads.box_loss_weight=0.25")
    weighted.load_state_dict(plain.state_dict())
    batch_images, batch_targets = images[:2], _targets([3, 2])
    terms = []
    for model in (plain, weighted):
        model.freeze_detectors()
        image_list, targets, _ = model.prepare(batch_images, batch_targets)
        with torch.no_grad():
            feats = model.backbone1(image_list.tensors)
            torch.manual_seed(3)
            terms.append(model.head1(image_list, feats, targets)[1])
    assert terms[0]["loss_box_reg"] > 0
    assert_close(terms[1]["loss_box_reg"], 0.25 * terms[0]["loss_box_reg"])
    for name in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier"):
        assert_close(terms[1][name], terms[0][name])
    with torch.no_grad():  # one image, one draw: the target is the weighted forward loss
        one, one_targets, _ = weighted.prepare(batch_images[:1], batch_targets[:1])
        feats = weighted.backbone1(one.tensors)
        got = weighted.head1.per_image_losses(one, feats, one_targets, [[7]])
        unweighted = plain.head1.per_image_losses(one, feats, one_targets, [[7]])
        torch.manual_seed(7)
        want = sum(weighted.head1(one, feats, one_targets)[1].values())
    assert_close(got, want.reshape(1), rtol=1e-4, atol=1e-5)
    assert got < unweighted


def test_the_mask_family_keeps_the_box_loss_weight():
    recipe = with_overrides(load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "shapes-mask-tiny.yaml"),
                            ["model.transform.min_size=64", "model.transform.max_size=64",
                             "model.roi_heads.box_loss_weight=0.25"])
    model = build_model(recipe.model)
    assert model.head1.box_loss_weight == model.head2.box_loss_weight == 0.25
    assert model.head1.roi_heads.has_mask()

def test_router_pools_each_image_over_its_own_region(make_model):
    """In a batch of mixed sizes, an image's router input stays close to what it is alone;
    pooling over the whole padded batch (the zeros of the padding included) would not."""
    model = make_model("model.transform.min_size=256", "model.transform.max_size=256")
    g = torch.Generator().manual_seed(1)
    small, large = torch.rand(3, 128, 256, generator=g), torch.rand(3, 256, 256, generator=g)
    with torch.no_grad():
        alone, _, _ = model.prepare([small])
        v_alone = model.router_input(model.backbone1(alone.tensors), alone)[0]
        batch, _, _ = model.prepare([small, large])
        feats = model.backbone1(batch.tensors)
        v_region = model.router_input(feats, batch)[0]
        v_whole = pool_features(feats, model.router_stages)[0]
    # Only the convolutions at the region's border see the padding differently.
    assert (v_region - v_alone).norm() < 0.3 * (v_whole - v_alone).norm()


def _mixed_sizes(seed: int = 2) -> list[torch.Tensor]:
    """Images of three padded shapes at the tiny recipe's 64 px: 64x64, 32x64 and 64x32 (two
    each), interleaved so that every shape shares the batch with the others."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in [(64, 64), (32, 64), (64, 32), (32, 64), (64, 64), (64, 32)]]


def test_own_shape_groups_crop_each_image_to_the_shape_it_has_alone(tiny_model):
    with torch.no_grad():
        batch, _, _ = tiny_model.prepare(_mixed_sizes())
    groups = tiny_model.shape_groups(batch)
    assert [index for index, _ in groups] == [[0, 4], [1, 3], [2, 5]]
    assert [tuple(g.tensors.shape) for _, g in groups] == [(2, 3, 64, 64), (2, 3, 32, 64), (2, 3, 64, 32)]
    for index, group in groups:
        with torch.no_grad():
            alone, _, _ = tiny_model.prepare([_mixed_sizes()[index[0]]])
        assert torch.equal(group.tensors[0], alone.tensors[0])
    square, _, _ = tiny_model.prepare(_mixed_sizes()[:1] * 3)
    (index, same), = tiny_model.shape_groups(square)
    assert index == [0, 1, 2] and same is square  # one shape: the batch itself, no copy


def test_an_images_phi_and_detections_do_not_depend_on_its_batch_mates(tiny_model):
    """detect and detect_both give every image of a mixed-size batch what it gets alone; the
    whole batch through backbone 1 at once (padded to 64x64) would move phi."""
    images = _mixed_sizes()
    with torch.inference_mode():
        alone = [tiny_model.detect([im], route="hard")[0] for im in images]
        mixed = tiny_model.detect(images, route="hard")
        easy, hard, phi = tiny_model.detect_both(images)
        batch, _, _ = tiny_model.prepare(images)
        padded_phi = tiny_model.difficulty(tiny_model.backbone1(batch.tensors), batch)
    want = torch.stack([a["difficulty"] for a in alone])
    assert_close(torch.stack([m["difficulty"] for m in mixed]), want)
    assert_close(phi, want)
    assert (padded_phi - want).abs().max() > 1e-4  # what the test would catch
    for got, via_both, want_one in zip(mixed, hard, alone):
        assert_same_detections(got, want_one)
        assert_close(via_both["boxes"], want_one["boxes"], atol=1e-3, rtol=1e-4)
    with torch.inference_mode():
        alone_easy = [tiny_model.detect([im], route="easy")[0] for im in images]
    for got, want_one in zip(easy, alone_easy):
        assert_close(got["boxes"], want_one["boxes"], atol=1e-3, rtol=1e-4)


def test_frozen_batchnorm_keeps_the_inputs_dtype_and_torchvisions_float32_result():
    """Under half-precision autocast torchvision's FrozenBatchNorm2d turned every output back
    into float32 (its buffers promote the product); ours keeps the input's dtype, and in float32
    computes exactly what torchvision's does, from the same checkpoint keys."""
    import torchvision.ops.misc as tv_misc
    from dynamicdet_cli.model.backbone import FrozenBatchNorm2d

    torch.manual_seed(0)
    ours, theirs = FrozenBatchNorm2d(8), tv_misc.FrozenBatchNorm2d(8)
    for name, buf in theirs.named_buffers():
        buf.copy_(torch.rand_like(buf) + 0.5)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(ours(x), theirs(x))
    half = x.to(torch.bfloat16)
    assert theirs(half).dtype == torch.float32  # what this class exists for
    assert ours(half).dtype == torch.bfloat16
    assert_close(ours(half).float(), theirs(x), rtol=0.02, atol=0.02)
    # the R50 recipes' backbones are built from it, so their stages stay in half precision
    r50 = build_resnet(50, "frozen_bn")
    assert isinstance(r50.bn1, FrozenBatchNorm2d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert r50.layer1(r50.maxpool(r50.relu(r50.bn1(r50.conv1(torch.rand(1, 3, 64, 64)))))).dtype == torch.bfloat16
