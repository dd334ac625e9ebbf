"""The router's training data: each image's two detection losses and its router input.

The detectors are frozen during router training, so L1, L2 (each detector's full loss on
an image) and v (the pooled backbone-1 vector the router reads) are computed ONCE per image
and the router is then trained on the cache alone (see router_fit.py).

L1 and L2 depend on the heads' random anchor/proposal sampling. For a stable ranking every
image's sampling is seeded from (seed, image id, view), and `draws` seeded draws are
averaged, so an image's cached losses depend neither on its batch nor on the run. Augmented
views of one image are averaged into one entry (`average_views`): they are one image's
difficulty measured several times, not independent examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dynamicdet_cli.data.transforms import Transform
from dynamicdet_cli.core.cpus import loader_workers
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.model.seeding import seed_sampling
from dynamicdet_cli.core.progress import progress_bar
from dynamicdet_cli.core.stats import held_out


@dataclass
class RouterCache:
    """Per cached entry: each detector's loss, the router's input, the image id.

    l1, l2: N; v: N,d (CPU, float32); image_ids: N (an id repeats once per view until
    `average_views`).
    """

    l1: Tensor
    l2: Tensor
    v: Tensor
    image_ids: list[int]

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def gain(self) -> Tensor:
        """L1 - L2 per entry: how much the second detector helps. N"""
        return self.l1 - self.l2

    def subset(self, index: list[int]) -> "RouterCache":
        return RouterCache(self.l1[index], self.l2[index], self.v[index], [self.image_ids[i] for i in index])

    def average_views(self) -> "RouterCache":
        """One entry per image: the mean of its views' L1, L2 and v (first-seen order)."""
        groups: dict[int, list[int]] = {}
        for j, image_id in enumerate(self.image_ids):
            groups.setdefault(image_id, []).append(j)
        if all(len(g) == 1 for g in groups.values()):
            return self
        mean = lambda x: torch.stack([x[g].mean(0) for g in groups.values()])  # noqa: E731
        return RouterCache(mean(self.l1), mean(self.l2), mean(self.v), list(groups))

    def split(self, share: float, seed: int) -> tuple["RouterCache", "RouterCache"]:
        """(rest, held out): a seeded `share` of the images held out, all views of an image
        on the same side."""
        held = held_out(sorted(set(self.image_ids)), share, seed)
        inside = [j for j, i in enumerate(self.image_ids) if i not in held]
        outside = [j for j, i in enumerate(self.image_ids) if i in held]
        return self.subset(inside), self.subset(outside)


def sample_seed(seed: int, image_id: int, view: int) -> int:
    """The seed of one image view's augmentation and loss sampling (fits torch.manual_seed
    after model.seeding.draw_seed)."""
    return (int(seed) * 1_000_003 + int(image_id) * 31 + int(view)) % (2**31 - 1)


class _SeededViews(Dataset):
    """Item j = view j % views of image j // views. View 0 is the dataset's item as is; views
    1.. pass it through `augment`, seeded from (seed, image id, view), so a view is the same
    in every run, batch and worker."""

    def __init__(self, dataset, views: int, augment: Transform | None, seed: int):
        self.dataset, self.views, self.augment, self.seed = dataset, views, augment, seed

    def __len__(self) -> int:
        return len(self.dataset) * self.views

    def __getitem__(self, j: int):
        position, view = divmod(j, self.views)
        image_id = int(self.dataset.image_ids[position])
        with torch.random.fork_rng(devices=[]):
            seed_sampling(sample_seed(self.seed, image_id, view), torch.device("cpu"))  # the loader's transforms
            item = self.dataset[position]
            if item is None:
                return None  # an unreadable image under skip_bad_images
            image, target = item
            if view > 0:
                image, target = self.augment(image, target)
        return image, target, j


def _as_is(item):
    return item  # the loader only fetches (in workers when asked); batching is ours


def _same_shape_batches(items, batch_size: int):
    """Group items into batches of one image shape: padding never differs within a batch,
    so the pooled router input of an image does not depend on its batch-mates."""
    pending: dict[tuple, list] = {}
    for item in items:
        if item is None:
            continue
        key = tuple(item[0].shape[-2:])
        pending.setdefault(key, []).append(item)
        if len(pending[key]) == batch_size:
            yield pending.pop(key)
    yield from (batch for batch in pending.values() if batch)


def _to_device(target: dict, device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in target.items()}


def _loader(dataset, views: int, augment, seed: int, workers: int) -> DataLoader:
    source = _SeededViews(dataset, views, augment, seed)
    return DataLoader(source, batch_size=None, shuffle=False, num_workers=loader_workers(workers),
                      collate_fn=_as_is)


def cache_router_inputs(model, dataset, device, batch_size: int = 8, views: int = 1, draws: int = 2,
                        augment: Transform | None = None, seed: int = 0, workers: int = 0,
                        show_progress: bool = True, label: str = "caching L1, L2, v") -> RouterCache:
    """L1, L2 and v of every image of `dataset` (and of `views - 1` augmented copies of it).

    dataset: a CocoDataset WITHOUT random augmentation (evaluation transforms); view 0 is
    each image as is. With views > 1, `augment` (e.g. build_transforms(True, ...)) is applied
    on top for views 1..views-1. draws: seeded loss draws averaged per view. The model's
    detectors are frozen (`freeze_detectors`) and its input transform put in eval mode, so
    images are resized to the single test-time size the router sees at inference. Entries
    are in dataset order, views of an image consecutive (see `RouterCache.average_views`).
    """
    if views > 1 and augment is None:
        raise ValueError("views > 1 needs an `augment` transform for the extra views")
    model.freeze_detectors()  # also puts the input transform in eval mode: one, the inference, size
    loader = _loader(dataset, views, augment, seed, workers)
    found: dict[int, tuple[float, float, Tensor, int]] = {}
    with torch.no_grad(), progress_bar(show_progress) as bar:
        task = bar.add_task(label, total=len(loader.dataset))
        for batch in _same_shape_batches(loader, batch_size):
            images = [image.to(device) for image, _, _ in batch]
            targets = [_to_device(t, device) for _, t, _ in batch]
            seeds = [sample_seed(seed, int(t["image_id"]), j % views) for _, t, j in batch]
            l1, l2, v = model.per_image_losses(images, targets, seeds=seeds, draws=draws)  # B, B, B,d
            l1, l2, v = l1.tolist(), l2.tolist(), v.float().cpu()
            for k, (_, t, j) in enumerate(batch):
                found[j] = (l1[k], l2[k], v[k], int(t["image_id"]))
            bar.advance(task, len(batch))
    if not found:
        raise DynamicDetError("no usable images to train the router on")
    order = sorted(found)
    cache = RouterCache(
        l1=torch.tensor([found[j][0] for j in order]),
        l2=torch.tensor([found[j][1] for j in order]),
        v=torch.stack([found[j][2] for j in order]),  # N,d
        image_ids=[found[j][3] for j in order],
    )
    bad = ~(torch.isfinite(cache.l1) & torch.isfinite(cache.l2))
    if bad.any():
        example = cache.image_ids[int(bad.nonzero()[0])]
        raise DynamicDetError(f"non-finite detection loss on {int(bad.sum())} image(s), e.g. image id {example}: "
                              "the detectors are broken; retrain them (train-detectors)")
    return cache


@torch.inference_mode()
def score_dataset(model, dataset, device, batch_size: int = 8, workers: int = 0) -> tuple[list[int], Tensor]:
    """The router's difficulty phi of every image of `dataset` (backbone 1 + router only).

    Returns (image ids, scores N) in dataset order; batches hold images of one shape.
    """
    model.eval()
    found: dict[int, tuple[int, float]] = {}
    for batch in _same_shape_batches(_loader(dataset, 1, None, 0, workers), batch_size):
        image_list, _, _ = model.prepare([image.to(device) for image, _, _ in batch])
        phi = model.difficulty(model.backbone1(image_list.tensors), image_list).float().cpu()  # B
        for k, (_, t, j) in enumerate(batch):
            found[j] = (int(t["image_id"]), float(phi[k]))
    order = sorted(found)
    return [found[j][0] for j in order], torch.tensor([found[j][1] for j in order])
