"""Step 2 of DynamicDet: train the router with both detectors frozen.

    L1, L2 = each detector's full detection loss on a training image
    Delta  = exact median over the training set of (L1 - L2)
    L      = (1 - phi) (L1 - Delta/2) + phi (L2 + Delta/2),   dL/dphi = (L2 - L1) + Delta

The detectors never change here, so L1, L2 and the router's input vector v (pooled
backbone-1 features) are computed ONCE per training image (`cache_router_inputs`) and the
router, a two-layer MLP, is then trained for many epochs over the cached vectors alone
(`train_router`): router training costs about one loss pass of both detectors over the
training set, not epochs of it. Delta is the exact median of the whole cache, not the
running median of the authors' code.

L1 and L2 depend on the heads' random anchor/proposal sampling. For a stable ranking every
image's sampling is seeded from (seed, image id, view), and `draws` seeded draws are
averaged, so an image's cached losses depend neither on its batch nor on the run.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.table import Table
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dynamicdet_cli.checkpoint import model_from_checkpoint, store_router
from dynamicdet_cli.data.transforms import Transform, build_transforms
from dynamicdet_cli.errors import DynamicDetError
from dynamicdet_cli.inference import RouteResults, run_both_routes
from dynamicdet_cli.progress import progress_bar
from dynamicdet_cli.sweep import compose_sweep

SUMMARY_RATIOS = (0.0, 0.5, 1.0)  # all easy, half hard, all hard
LOGIT_BOUND = 8.0  # |router logit| on the training cache: phi within [3e-4, 1 - 3e-4], far from float32's 1.0


# ----------------------------------------------------------------------------- the loss

def router_loss(phi: Tensor, l1: Tensor, l2: Tensor, delta: float) -> Tensor:
    """Mean over the batch of (1 - phi)(L1 - Delta/2) + phi (L2 + Delta/2); phi, l1, l2: B."""
    return ((1 - phi) * (l1 - delta / 2) + phi * (l2 + delta / 2)).mean()


def exact_median(x: Tensor) -> float:
    """The median of all values of `x`; for an even count, the mean of the two middle ones
    (torch.median returns the lower one)."""
    values = x.detach().flatten().double().sort().values
    n = values.numel()
    assert n > 0, "median of no values"
    mid = n // 2
    return float(values[mid]) if n % 2 else float((values[mid - 1] + values[mid]) / 2)


def _ranks(x: Tensor) -> Tensor:
    """1-based ranks of the values of `x`, ties given their average rank. N, float64"""
    x = x.detach().flatten().double().cpu()
    unique, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # 0-based rank of each unique value's first copy
    return (first + (counts + 1) / 2).double()[inverse]


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two equally long vectors (ties averaged); NaN when
    either is constant or has fewer than two values."""
    a, b = torch.as_tensor(a).flatten(), torch.as_tensor(b).flatten()
    assert a.numel() == b.numel(), f"spearman of {a.numel()} and {b.numel()} values"
    if a.numel() < 2:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.square().sum() * rb.square().sum()).sqrt()
    return float((ra * rb).sum() / denom) if denom > 0 else math.nan


# ----------------------------------------------------------------------------- the cache

@dataclass
class RouterCache:
    """Per cached image view: each detector's loss, the router's input, the image id.

    l1, l2: N; v: N,d (CPU, float32); image_ids: N (an id repeats once per view).
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


def sample_seed(seed: int, image_id: int, view: int) -> int:
    """The seed of one image view's augmentation and loss sampling (fits torch.manual_seed
    after per_image_losses' `seed * 1009 + draw`)."""
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
            torch.manual_seed(sample_seed(self.seed, image_id, view))
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


def cache_router_inputs(model, dataset, device, batch_size: int = 8, views: int = 1, draws: int = 2,
                        augment: Transform | None = None, seed: int = 0, workers: int = 0,
                        show_progress: bool = True) -> RouterCache:
    """L1, L2 and v of every image of `dataset` (and of `views - 1` augmented copies of it).

    dataset: a CocoDataset WITHOUT random augmentation (evaluation transforms); view 0 is
    each image as is. With views > 1, `augment` (e.g. build_transforms(True, ...)) is applied
    on top for views 1..views-1. draws: seeded loss draws averaged per view. The model's
    detectors are frozen (`freeze_detectors`) and its input transform put in eval mode, so
    images are resized to the single test-time size the router sees at inference. Entries
    are in dataset order, views of an image consecutive.
    """
    if views > 1 and augment is None:
        raise ValueError("views > 1 needs an `augment` transform for the extra views")
    model.freeze_detectors()  # also puts the input transform in eval mode: one, the inference, size
    source = _SeededViews(dataset, views, augment, seed)
    loader = DataLoader(source, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is)
    found: dict[int, tuple[float, float, Tensor, int]] = {}
    with torch.no_grad(), progress_bar(show_progress) as bar:
        task = bar.add_task("caching L1, L2, v", total=len(source))
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


# ----------------------------------------------------------------------------- training

def reset_router(router, seed: int) -> None:
    """Fresh weights that depend only on `seed` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in router.modules():
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()


def _fold_standardisation(router, mean: Tensor, std: Tensor) -> None:
    """Make `router(v)` equal what it computed on (v - mean) / std: W1' = W1 / std,
    b1' = b1 - W1' mean. The router keeps its architecture and reads raw v at inference."""
    first = router.mlp[0]
    with torch.no_grad():
        w = first.weight / std  # hidden,d
        first.bias.sub_(w @ mean)
        first.weight.copy_(w)


def _temper(router, v: Tensor, bound: float) -> float:
    """Scale the last layer so that |logit| <= bound on `v`; returns the factor (<= 1).

    The router loss is linear in phi, so training drives logits towards +-inf; in float32,
    sigmoid is exactly 1.0 above ~17, and images tied at 1.0 make small hard ratios
    unreachable. A positive factor on the logit keeps the ranking and the phi > 0.5 side of
    every image, which is all that routing uses."""
    last = router.mlp[-1]
    with torch.no_grad():
        peak = float(router.logits(v).abs().max())
        factor = min(1.0, bound / peak) if peak > 0 else 1.0
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    return factor


def train_router(router, cache: RouterCache, delta: float, epochs: int, lr: float, weight_decay: float,
                 batch_size: int, seed: int) -> dict:
    """AdamW on router_loss over the cached vectors only (the detectors are not involved).

    Trains on standardised v (mean 0, std 1 per feature over the cache: backbone stages differ
    in scale by orders of magnitude) and folds the standardisation into the first layer at
    the end, then scales the last layer down so no cached logit exceeds LOGIT_BOUND (see
    `_temper`: ranks and phi > 0.5 are unchanged). The router's current weights are the
    starting point; batches are shuffled with a generator seeded by `seed`.
    Returns {"loss": mean loss per epoch, "logit_scale": the factor applied, "seconds": float}.
    """
    start = time.perf_counter()
    device = next(router.parameters()).device
    mean, std = cache.v.mean(0), cache.v.std(0, unbiased=False)  # d
    # A feature (nearly) constant over the cache would get a huge weight after folding and
    # blow up on images where it is not: floor the scale at a tenth of the typical one.
    std = std.clamp_min(max(0.1 * float(std.median()), 1e-6))
    v = ((cache.v - mean) / std).to(device)  # N,d
    l1, l2 = cache.l1.to(device), cache.l2.to(device)
    router.train()
    optimizer = torch.optim.AdamW(router.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history: list[float] = []
    for _ in range(epochs):
        total = 0.0
        for index in torch.randperm(len(cache), generator=generator).split(batch_size):
            index = index.to(device)
            loss = router_loss(router(v[index]), l1[index], l2[index], delta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        history.append(total / len(cache))
    router.eval()
    _fold_standardisation(router, mean.to(device), std.to(device))
    factor = _temper(router, cache.v.to(device), LOGIT_BOUND)
    return {"loss": history, "logit_scale": factor, "seconds": time.perf_counter() - start}


@torch.inference_mode()
def score_dataset(model, dataset, device, batch_size: int = 8, workers: int = 0) -> tuple[list[int], Tensor]:
    """The router's difficulty phi of every image of `dataset` (backbone 1 + router only).

    Returns (image ids, scores N) in dataset order; batches hold images of one shape.
    """
    model.eval()
    source = _SeededViews(dataset, 1, None, 0)
    loader = DataLoader(source, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is)
    found: dict[int, tuple[int, float]] = {}
    for batch in _same_shape_batches(loader, batch_size):
        image_list, _, _ = model.prepare([image.to(device) for image, _, _ in batch])
        phi = model.difficulty(model.backbone1(image_list.tensors), image_list).float().cpu()  # B
        for k, (_, t, j) in enumerate(batch):
            found[j] = (int(t["image_id"]), float(phi[k]))
    order = sorted(found)
    return [found[j][0] for j in order], torch.tensor([found[j][1] for j in order])


# ----------------------------------------------------------------------------- the summary

@torch.no_grad()
def _phi(router, v: Tensor) -> Tensor:
    router.eval()
    device = next(router.parameters()).device
    return router(v.to(device)).float().cpu()


def _gap_share(ap: float, ap_easy: float, ap_hard: float) -> float | None:
    """Share of the easy-to-hard AP gain recovered at `ap`; None without a positive gap."""
    if min(ap, ap_easy, ap_hard) < 0 or ap_hard - ap_easy <= 1e-9:
        return None
    return (ap - ap_easy) / (ap_hard - ap_easy)


def router_summary(model, train_cache: RouterCache, val_cache: RouterCache, val_set, routes: RouteResults,
                   delta: float, random_draws: int = 10, seed: int = 0) -> dict:
    """The numbers of the summary table (plain floats / ints / None).

    delta; share of training entries with phi > 0.5 (and of validation images); Spearman of
    phi against L1 - L2 on train and val; val AP routed all easy, all hard, and 50% hard by
    the router and at random (mean, std over `random_draws`), and the share of the
    easy-to-hard AP gap each 50% routing recovers: (AP(0.5) - AP(0)) / (AP(1) - AP(0)).
    `routes`: both detectors' val results with the (new) router's scores, run_both_routes.
    """
    phi_train, phi_val = _phi(model.router, train_cache.v), _phi(model.router, val_cache.v)
    rows = compose_sweep(val_set.coco, routes.image_ids, routes.easy, routes.hard, routes.scores,
                         list(SUMMARY_RATIOS), None, None, random_draws=random_draws, seed=seed)
    easy, half, hard = rows
    summary = {
        "delta": float(delta),
        "train_entries": len(train_cache),
        "train_hard_share": float((phi_train > 0.5).float().mean()),
        "val_hard_share": float((phi_val > 0.5).float().mean()),
        "train_spearman": spearman(phi_train, train_cache.gain),
        "val_spearman": spearman(phi_val, val_cache.gain),
        "val_images": len(routes.image_ids),
        "ap_easy": easy["AP"],
        "ap_hard": hard["AP"],
        "ap_router_50": half["AP"],
        "hard_share_50": half["hard_share"],
        "ap_random_50": half["random_AP"],
        "ap_random_50_std": half["random_AP_std"],
    }
    summary["gap_router_50"] = _gap_share(half["AP"], easy["AP"], hard["AP"])
    summary["gap_random_50"] = _gap_share(half["random_AP"], easy["AP"], hard["AP"])
    difficulty = [val_set.coco.imgs[i].get("difficulty") for i in routes.image_ids]
    if all(isinstance(d, (int, float)) for d in difficulty):  # the synthetic shapes data
        summary["val_spearman_known_difficulty"] = spearman(routes.scores, torch.tensor(difficulty))
    return summary


# ----------------------------------------------------------------------------- the command

def _check_inputs(ckpt: dict, train_set, val_set) -> None:
    if ckpt.get("training") is None:
        raise DynamicDetError("detectors never trained: run train-detectors first (the router learns which "
                              "images detector 2 helps, which fresh detectors cannot tell)")
    if val_set is None:
        raise DynamicDetError("train-router needs a validation set (its router scores calibrate the "
                              "thresholds): give val_ann/val_images")
    for name, ds in (("training", train_set), ("validation", val_set)):
        if list(ds.classes) != list(ckpt["classes"]):
            raise DynamicDetError(f"the {name} data's classes {_brief(ds.classes)} differ from the checkpoint's "
                                  f"{_brief(ckpt['classes'])}; use the data the detectors were trained on")


def _brief(names: list[str], n: int = 5) -> str:
    return "[" + ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "") + "]"


def view_augmentation(ckpt: dict) -> Transform:
    """The checkpoint recipe's training augmentation, for the extra cached views."""
    aug = (ckpt["recipe"].get("train") or {}).get("augment") or {}
    return build_transforms(True, aug.get("hflip", 0.5), aug.get("photometric", 0.5), aug.get("zoom_out", 0.0))


def train_router_checkpoint(ckpt: dict, train_set, val_set, cfg, device, show_progress: bool = True,
                            random_draws: int = 10) -> tuple[dict, dict]:
    """The whole of `train-router`: returns (new checkpoint, summary); the caller saves it.

    train_set / val_set: CocoDatasets with evaluation transforms (no augmentation; extra views
    use the checkpoint recipe's train.augment). cfg: RouterTrainConfig. The router starts from
    fresh weights seeded by cfg.seed; the detector weights of the result are the very tensors
    read (store_detector is not called).
    """
    _check_inputs(ckpt, train_set, val_set)
    device = torch.device(device)
    model = model_from_checkpoint(ckpt, device)
    reset_router(model.router, cfg.seed)
    augment = view_augmentation(ckpt) if cfg.views > 1 else None
    # Images go through the detectors in the batches they were trained in (known to fit in
    # memory); cfg.batch_size is the router's batch over cached vectors.
    images_per_batch = int((ckpt["recipe"].get("train") or {}).get("batch_size", 8))

    start = time.perf_counter()
    train_cache = cache_router_inputs(model, train_set, device, images_per_batch, cfg.views, cfg.loss_draws,
                                      augment, cfg.seed, show_progress=show_progress)
    cache_seconds = time.perf_counter() - start
    delta = exact_median(train_cache.gain)
    history = train_router(model.router, train_cache, delta, cfg.epochs, cfg.lr, cfg.weight_decay,
                           cfg.batch_size, cfg.seed)
    # One pass of both detectors over val gives the stored scores and the summary's APs.
    routes = run_both_routes(model, val_set, device, images_per_batch, show_progress=show_progress,
                             label="val: both routes")

    val_cache = cache_router_inputs(model, val_set, device, images_per_batch, 1, cfg.loss_draws,
                                    None, cfg.seed, show_progress=show_progress)
    summary = router_summary(model, train_cache, val_cache, val_set, routes, delta, random_draws, cfg.seed)
    summary.update(epochs=cfg.epochs, final_loss=history["loss"][-1], views=cfg.views, draws=cfg.loss_draws,
                   logit_scale=history["logit_scale"], cache_seconds=cache_seconds, train_seconds=history["seconds"])

    new = copy.copy(ckpt)  # shallow: "detector" stays the very dict of tensors that was read
    store_router(new, model)
    new["router_stats"] = {k: v for k, v in summary.items() if v is None or isinstance(v, (int, float))}
    new["validation"] = {"image_ids": routes.image_ids, "scores": routes.scores, "dataset": str(Path(val_set.ann_file).resolve()), "images": str(Path(val_set.image_dir).resolve())}
    # Scores of another router are void, and so are thresholds picked from them.
    new["operating_points"] = {}
    return new, summary


def _f(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def summary_table(summary: dict) -> Table:
    """What train-router did and how well the router ranks and routes."""
    s = summary
    table = Table(title="router training", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("Delta = median(L1 - L2)", _f(s["delta"], 4))
    table.add_row("training entries (views, loss draws)",
                  f"{s['train_entries']} ({s.get('views', 1)}, {s.get('draws', 1)})")
    table.add_row("share with phi > 0.5 (train / val)", f"{_pct(s['train_hard_share'])} / {_pct(s['val_hard_share'])}")
    table.add_row("Spearman(phi, L1 - L2) train / val", f"{_f(s['train_spearman'])} / {_f(s['val_spearman'])}")
    if "val_spearman_known_difficulty" in s:
        table.add_row("Spearman(phi, known difficulty) val", _f(s["val_spearman_known_difficulty"]))
    table.add_row("val AP all easy / all hard", f"{_f(s['ap_easy'])} / {_f(s['ap_hard'])}")
    table.add_row(f"val AP {_pct(s['hard_share_50'])} hard: router", _f(s["ap_router_50"]))
    table.add_row("  random routing (mean +- std)", f"{_f(s['ap_random_50'])} +- {_f(s['ap_random_50_std'])}")
    table.add_row("AP gap recovered: router / random", f"{_pct(s['gap_router_50'])} / {_pct(s['gap_random_50'])}")
    if "cache_seconds" in s:
        table.add_row("router epochs, final loss", f"{s['epochs']}, {_f(s['final_loss'], 4)}")
        table.add_row("time: cache / router epochs", f"{s['cache_seconds']:.1f} s / {s['train_seconds']:.1f} s")
    return table
