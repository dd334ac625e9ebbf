"""router_cache: per-image L1, L2 and v computed once, independent of the batch; seeded
views averaged into one entry per image."""

from __future__ import annotations

import copy

import torch

from dynamicdet_cli.checkpoint.store import model_from_checkpoint
from dynamicdet_cli.data.transforms import build_transforms
from dynamicdet_cli.router.cache import RouterCache, cache_router_inputs


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
    assert not torch.allclose(two.v[1::2], one.v)  # the other views are augmented (seeded: same every run)
    torch.testing.assert_close(two.l1, again.l1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(two.v, again.v, rtol=1e-4, atol=1e-5)
    assert all(p.requires_grad == n.startswith("router.") for n, p in model.named_parameters())


def test_views_of_one_image_are_averaged_into_one_entry():
    cache = RouterCache(l1=torch.tensor([1.0, 3.0, 5.0, 2.0]), l2=torch.tensor([0.0, 2.0, 4.0, 1.0]),
                        v=torch.tensor([[0.0, 2.0], [2.0, 4.0], [9.0, 9.0], [4.0, 0.0]]), image_ids=[7, 7, 9, 7])
    one = cache.average_views()
    assert one.image_ids == [7, 9]
    torch.testing.assert_close(one.l1, torch.tensor([2.0, 5.0]))
    torch.testing.assert_close(one.l2, torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(one.v, torch.tensor([[2.0, 2.0], [9.0, 9.0]]))


def test_split_keeps_an_images_views_together_and_is_seeded():
    ids = [i for i in range(20) for _ in range(3)]
    cache = RouterCache(torch.arange(60.0), torch.zeros(60), torch.randn(60, 4), ids)
    rest, held = cache.split(0.25, seed=3)
    assert len(set(held.image_ids)) == 5 and not set(held.image_ids) & set(rest.image_ids)
    assert len(held) == 15 and len(rest) == 45
    assert cache.split(0.25, seed=3)[1].image_ids == held.image_ids
    assert cache.split(0.25, seed=4)[1].image_ids != held.image_ids
