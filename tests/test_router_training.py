"""router_training: the router loss, the exact median, the cache, router training on cached
vectors, and the whole train-router step on a tiny model (detector weights untouched)."""

from __future__ import annotations

import copy

import pytest
import torch

from dynamicdet_cli.checkpoint import model_from_checkpoint, new_checkpoint
from dynamicdet_cli.data.coco import CocoDataset, load_data_config
from dynamicdet_cli.data.shapes import make_shapes
from dynamicdet_cli.data.transforms import build_transforms
from dynamicdet_cli.errors import DynamicDetError
from dynamicdet_cli.model.build import build_model
from dynamicdet_cli.model.router import Router
from dynamicdet_cli.recipe import RouterTrainConfig, recipe_to_dict
from dynamicdet_cli.router_training import (RouterCache, cache_router_inputs, exact_median, router_loss,
                                            score_dataset, spearman, summary_table, train_router,
                                            train_router_checkpoint)

FAST = RouterTrainConfig(epochs=3, lr=1e-3, weight_decay=1e-4, batch_size=4, views=1, loss_draws=1, seed=0)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """12 training and 8 validation shapes images of 64 px, opened without augmentation."""
    cfg = load_data_config(make_shapes(tmp_path_factory.mktemp("shapes"), n_train=12, n_val=8, size=64, seed=0))
    plain = build_transforms(False)
    return (CocoDataset(cfg.train_ann, cfg.train_images, plain), CocoDataset(cfg.val_ann, cfg.val_images, plain))


@pytest.fixture(scope="module")
def trained_ckpt(shapes, tiny_recipe):
    """A tiny model's checkpoint marked as having trained detectors (the weights are fresh)."""
    train_set, _ = shapes
    torch.manual_seed(0)
    model = build_model(tiny_recipe.model, num_classes=train_set.num_classes)
    ckpt = new_checkpoint(recipe_to_dict(tiny_recipe), train_set.classes, train_set.cat_ids, model)
    ckpt["training"] = {"epochs": 1}
    return ckpt


# ----------------------------------------------------------------------------- the loss

def test_router_loss_gradient_is_gain_over_median():
    g = torch.Generator().manual_seed(0)
    l1, l2 = torch.rand(6, generator=g) * 3, torch.rand(6, generator=g) * 3
    phi = torch.rand(6, generator=g).requires_grad_()
    delta = 0.4
    router_loss(phi, l1, l2, delta).backward()
    torch.testing.assert_close(phi.grad, ((l2 - l1) + delta) / 6)
    # METHOD.md's sign: phi goes up (gradient descent) exactly where L1 - L2 exceeds Delta
    assert torch.equal(phi.grad < 0, (l1 - l2) > delta)


def test_router_loss_values():
    phi, l1, l2 = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0])
    # (L1 - Delta/2) for phi = 0, (L2 + Delta/2) for phi = 1
    assert router_loss(phi, l1, l2, 0.5).item() == pytest.approx(((2 - 0.25) + (1 + 0.25)) / 2)


@pytest.mark.parametrize("n", [1, 2, 7, 10])
def test_exact_median_matches_sorted_values(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    s = sorted(x.tolist())
    want = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    assert exact_median(x) == pytest.approx(want, abs=1e-7)


def test_exact_median_even_is_not_torch_lower_median():
    assert exact_median(torch.tensor([4.0, 1.0, 3.0, 2.0])) == 2.5


def test_spearman_ties_and_edge_cases():
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 45])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    # ties take their average rank: ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4]
    ra, rb = torch.tensor([1, 2.5, 2.5, 4]), torch.tensor([1.0, 2, 3, 4])
    want = torch.corrcoef(torch.stack([ra, rb]))[0, 1].item()
    assert spearman(torch.tensor([1.0, 2, 2, 3]), torch.tensor([1.0, 2, 3, 4])) == pytest.approx(want)
    assert spearman(torch.ones(4), torch.arange(4.0)) != spearman(torch.ones(4), torch.arange(4.0))  # NaN


# ----------------------------------------------------------------------------- training on a cache

def test_router_learns_which_images_gain_from_detector_2():
    g = torch.Generator().manual_seed(0)
    n, d, n_hard = 48, 8, 16
    v = torch.randn(n, d, generator=g) * 5 + 20  # far from standardised, as pooled features are
    v[:n_hard, 3] += 15  # the hard images are separable along one feature
    l1 = 1 + torch.rand(n, generator=g)
    gain = 0.1 + 0.2 * torch.rand(n, generator=g)
    gain[:n_hard] += 1.0  # detector 2 helps the hard ones much more
    cache = RouterCache(l1=l1, l2=l1 - gain, v=v, image_ids=list(range(n)))
    torch.manual_seed(0)
    router = Router(d)
    history = train_router(router, cache, exact_median(cache.gain), epochs=150, lr=1e-2, weight_decay=0.0,
                           batch_size=16, seed=0)
    assert history["loss"][-1] < history["loss"][0]
    with torch.no_grad():
        phi = router(v)  # raw vectors: the standardisation is folded into the router
    assert phi[:n_hard].min() > phi[n_hard:].max()
    assert phi[:n_hard].min() > 0.5
    # the loss is linear in phi: without tempering the logits run off and phi ties at 1.0
    assert history["logit_scale"] < 1.0 and router.logits(v).abs().max() <= 8.0 + 1e-4
    assert ((phi > 0) & (phi < 1)).all()


# ----------------------------------------------------------------------------- the cache

def test_cache_does_not_depend_on_batch_and_views_are_seeded(shapes, trained_ckpt):
    train_set, _ = shapes
    small = copy.copy(train_set)
    small.image_ids = train_set.image_ids[:4]
    model = model_from_checkpoint(trained_ckpt)
    one = cache_router_inputs(model, small, "cpu", batch_size=1, draws=1, show_progress=False)
    four = cache_router_inputs(model, small, "cpu", batch_size=4, draws=1, show_progress=False)
    assert one.image_ids == four.image_ids == small.image_ids
    torch.testing.assert_close(one.l1, four.l1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one.l2, four.l2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one.v, four.v, rtol=1e-4, atol=1e-5)

    augment = build_transforms(True, hflip=0.5, photometric=0.5)
    two = cache_router_inputs(model, small, "cpu", batch_size=4, views=2, draws=1, augment=augment,
                              show_progress=False)
    again = cache_router_inputs(model, small, "cpu", batch_size=3, views=2, draws=1, augment=augment,
                                show_progress=False)
    assert two.image_ids == [i for i in small.image_ids for _ in range(2)]
    torch.testing.assert_close(two.l1[::2], one.l1, rtol=1e-4, atol=1e-5)  # view 0 is the image as is
    torch.testing.assert_close(two.l1, again.l1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(two.v, again.v, rtol=1e-4, atol=1e-5)
    assert all(p.requires_grad == n.startswith("router.") for n, p in model.named_parameters())


# ----------------------------------------------------------------------------- the whole step

def test_train_router_checkpoint_keeps_detector_bit_for_bit(shapes, trained_ckpt):
    train_set, val_set = shapes
    before = {k: v.clone() for k, v in trained_ckpt["detector"].items()}
    latency = [{"device": "cpu", "easy_ms": 1.0, "hard_ms": 2.0}]
    calibrated = dict(trained_ckpt, latency=latency, operating_points={"old": {"tau": 0.5, "hard_ratio": 0.5}})
    new, summary = train_router_checkpoint(calibrated, train_set, val_set, FAST, "cpu", show_progress=False,
                                           random_draws=2)
    assert new["detector"].keys() == before.keys()
    assert all(torch.equal(new["detector"][k], before[k]) for k in before)
    assert all(torch.equal(trained_ckpt["detector"][k], before[k]) for k in before)  # input untouched
    assert trained_ckpt["router"] is None and new["router"] is not None

    val = new["validation"]
    assert val["image_ids"] == val_set.image_ids and val["dataset"] == str(val_set.ann_file.resolve())
    assert val["images"] == str(val_set.image_dir.resolve())  # calibrate times these very images
    assert val["scores"].shape == (len(val_set),) and ((val["scores"] > 0) & (val["scores"] < 1)).all()
    stats = new["router_stats"]
    assert all(v is None or type(v) in (int, float) for v in stats.values())
    assert stats["delta"] == pytest.approx(summary["delta"]) and stats["train_entries"] == len(train_set)
    assert 0.0 <= summary["train_hard_share"] <= 1.0 and summary["hard_share_50"] == 0.5
    for key in ("ap_easy", "ap_hard", "ap_router_50", "ap_random_50", "train_spearman", "val_spearman"):
        assert isinstance(summary[key], float)
    assert summary_table(summary).row_count >= 8
    # thresholds picked from another router's scores are void; measured latencies are not
    assert new["operating_points"] == {} and new["latency"] == latency

    # the stored router reproduces the stored validation scores
    model = model_from_checkpoint(new)
    ids, scores = score_dataset(model, val_set, "cpu", batch_size=8)
    assert ids == val["image_ids"]
    torch.testing.assert_close(scores, val["scores"], rtol=1e-4, atol=1e-6)


def test_untrained_checkpoint_is_refused(shapes, trained_ckpt):
    train_set, val_set = shapes
    fresh = dict(trained_ckpt, training=None)
    with pytest.raises(DynamicDetError, match="run train-detectors first"):
        train_router_checkpoint(fresh, train_set, val_set, FAST, "cpu", show_progress=False)


def test_other_classes_are_refused(shapes, trained_ckpt):
    train_set, val_set = shapes
    other = dict(trained_ckpt, classes=["cat", "dog", "bird", "fish", "cow"])
    with pytest.raises(DynamicDetError, match=r"classes \[circle.*differ.*\[cat, dog"):
        train_router_checkpoint(other, train_set, val_set, FAST, "cpu", show_progress=False)


def test_missing_validation_set_is_refused(shapes, trained_ckpt):
    with pytest.raises(DynamicDetError, match="validation set"):
        train_router_checkpoint(trained_ckpt, shapes[0], None, FAST, "cpu", show_progress=False)
