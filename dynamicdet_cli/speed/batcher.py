"""Running a stream of image batches through the dynamic detector, each route's work
regrouped into full batches.

`DynamicDetector.detect` splits every input batch by route: at batch 8 with 3 images over
tau, detector 1 runs on 5 images and backbone 2 + detector 2 on 3, and each sub-batch pays
its call's fixed cost at a smaller size. Over a stream that makes the mean time per image at
a share k of hard images exceed lat1 + k (lat2 - lat1), the line a latency target is turned
into a threshold with (figures below). A RouteBatcher
keeps backbone 1's features of the images that wait for their route, and runs a route only
when `batch_size` images wait for it (or at `finish`), so every call but the last of each
route is a full batch:

    batcher = RouteBatcher(model, route, batch_size)
    for images, keys in batches:                 # images: list of 3,H,W in [0, 1]
        for done in batcher.add(images, keys): ...   # Done(key, detection, ms, warmup)
    for done in batcher.finish(): ...

Whether to regroup is a trade (regroup_pays): an image's features wait through later
batches' backbone-1 passes and are copied twice (set aside, gathered). With the malloc
setting the package applies (allocator.py) that costs little: measured on the demo model's
mixed batches (bench/bench_calibration.py), regrouped runs stayed close to the line lat1 +
k (lat2 - lat1) at 1 and 2 threads, while splitting batch by batch cost well above it. So it
regroups on the CPU at any thread count (and on CUDA, where every call also pays kernel
launches: not measured here). Under glibc's default malloc (DYNAMICDET_MALLOC=default) the
waiting tensors cost page faults, and with one thread splitting measured faster than
regrouping, so with that malloc and one thread it splits, as model.detect does. Figures,
command and date: docs/benchmarks.md#mixed-batches.

Contract:
- Results come out when their route runs, not in input order; `key` says which image.
- `detection` is what `model.detect` returns for that image (same keys, original image
  pixels): each image's RPN, RoI heads and post-processing do not depend on the other images
  of a call, and BatchNorm runs in eval mode, so regrouping changes only float rounding.
- What waits: backbone 1's features, and the resized pixels only for the hard route
  (backbone 2 reads them; detector 1 reads the batch's shape alone, see _no_pixels).
- An input batch is split by the padded shape each image would have alone
  (model.shape_groups), backbone 1 runs once per shape, and images wait in groups of one
  such shape: features of different shapes are never stacked, and no image's phi or
  detections depend on its batch-mates. Fewer than `batch_size` images wait per route:
  when a route's groups of several shapes hold that many between them, its oldest group
  runs as it is (variable-size inputs run some partial batches, and memory stays bounded).
- `ms`: the image's model time: its equal share of its input batch's shared part
  (resize/normalise, backbone 1, router, setting its images aside by route) plus its equal
  share of its route's call (gathering the waiting images; easy: detector 1; hard: composite
  connection, backbone 2, detector 2; both with post-processing). The ms of all images add
  up to the time spent in `add` and `finish`. `warmup`: the image's input batch was the
  first, or its route's call was that route's first (one-time set-up).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList

from dynamicdet_cli.core import allocator
from dynamicdet_cli.model.detector import in_input_order
from dynamicdet_cli.speed.hold import LatencyHold


@dataclass
class Done:
    """One image's result: its key, its detection dict (model.detect's contract), its model
    time in ms and whether that time includes one-time warm-up (see the module docstring)."""

    key: Hashable
    detection: dict
    ms: float
    warmup: bool


@dataclass
class _Waiting:
    """Images routed one way, waiting for their route to run: everything that route needs."""

    keys: list
    tensors: Tensor                  # n,3,H,W: the resized, normalised, padded images (a
                                     # stride-0 view of one zero for the easy route: see _no_pixels)
    feats: dict[int, Tensor]         # backbone 1's features, stage -> n,C,h,w
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    phi: Tensor                      # n
    ms: list[float]                  # each image's share of its input batch's shared part
    warmup: list[bool]

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, index: list[int] | slice) -> _Waiting:
        pick = (lambda xs: [xs[i] for i in index]) if isinstance(index, list) else (lambda xs: xs[index])
        keys = pick(self.keys)
        tensors = _no_pixels(self.tensors, len(keys)) if _is_stand_in(self.tensors) else self.tensors[index]
        return _Waiting(keys, tensors, {k: v[index] for k, v in self.feats.items()},
                        pick(self.image_sizes), pick(self.original_sizes), self.phi[index], pick(self.ms),
                        pick(self.warmup))

    def without_pixels(self) -> _Waiting:
        """The same images for the easy route, which reads the batch's shape only."""
        return _Waiting(self.keys, _no_pixels(self.tensors, len(self)), self.feats, self.image_sizes,
                        self.original_sizes, self.phi, self.ms, self.warmup)

    @staticmethod
    def cat(parts: list[_Waiting]) -> _Waiting:
        if len(parts) == 1:
            return parts[0]
        n = sum(len(p) for p in parts)
        tensors = (_no_pixels(parts[0].tensors, n) if _is_stand_in(parts[0].tensors)
                   else torch.cat([p.tensors for p in parts]))
        return _Waiting([k for p in parts for k in p.keys], tensors,
                        {k: torch.cat([p.feats[k] for p in parts]) for k in parts[0].feats},
                        [s for p in parts for s in p.image_sizes], [s for p in parts for s in p.original_sizes],
                        torch.cat([p.phi for p in parts]), [m for p in parts for m in p.ms],
                        [w for p in parts for w in p.warmup])


def _no_pixels(tensors: Tensor, n: int) -> Tensor:
    """An n,C,H,W stand-in for an image batch, no memory behind it (one zero, stride 0).

    Detector 1 (run_route "easy": RPN or anchor heads, RoI heads) reads the image batch's
    shape, dtype and device only (anchors and image sizes), not its pixels; images that wait
    for the easy route need not keep theirs (about 3/4 of the bytes a waiting image would
    otherwise copy at 128 px, twice). The family tests hold regrouped results to model.detect's."""
    return tensors.new_zeros(()).expand(n, *tensors.shape[1:])


def _is_stand_in(tensors: Tensor) -> bool:
    """Whether `tensors` is a _no_pixels stand-in (indexing it would build real pixels)."""
    return tensors.stride(0) == 0


def regroup_pays(device: torch.device) -> bool:
    """Whether regrouping is the faster way on `device` with this process's thread count and
    malloc setting (measured: see the module docstring)."""
    return device.type == "cuda" or allocator.setting() == allocator.KEEP_FREED or torch.get_num_threads() > 1


class RouteBatcher:
    """Routes images batch by batch and runs each route on full batches (module docstring).

    model: a DynamicDetector in eval mode; route: "easy", "hard" or a threshold tau;
    batch_size: images per route call (at least 1); regroup: False runs each input batch's
    routes as soon as it is routed (the split model.detect makes); None: regroup_pays() on
    the model's device. Call under torch.inference_mode().
    """

    def __init__(self, model, route, batch_size: int, regroup: bool | None = None):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.model, self.route, self.batch_size = model, route, batch_size
        self.regroup = regroup_pays(next(model.parameters()).device) if regroup is None else regroup
        self.waiting: dict[tuple[str, tuple[int, ...]], list[_Waiting]] = {}  # (route, shape) -> parts
        self.calls = {"easy": 0, "hard": 0}
        self.batches = 0
        self.last_phi: Tensor | None = None  # B: the router scores of the latest input batch

    def add(self, images: list[Tensor], keys: Iterable[Hashable], route=None, original_sizes=None) -> list[Done]:
        """Route `images` (keys: one per image) and run every route that has a full batch.
        `route`: this batch's route or threshold, if not the batcher's; `original_sizes`: the
        frame of each image's output, where it was scaled down before (model.prepare)."""
        keys = list(keys)
        if len(keys) != len(images):
            raise ValueError(f"{len(images)} images but {len(keys)} keys")
        if not images:
            return []
        sync = _sync_for(images[0].device)
        sync()
        start = time.perf_counter()
        model = self.model
        image_list, _, original_sizes = model.prepare(images, original_sizes=original_sizes)
        phis, stored, ready = [], [], []
        for group_index, group in model.shape_groups(image_list):  # one padded shape each
            feats1 = model.backbone1(group.tensors)
            phi = model.difficulty(feats1, group)
            phis.append((group_index, phi))
            routed = model.split_by_route(phi, self.route if route is None else route)
            batch = _Waiting([keys[i] for i in group_index], group.tensors, feats1, list(group.image_sizes),
                             [original_sizes[i] for i in group_index], phi,
                             [0.0] * len(group_index), [self.batches == 0] * len(group_index))
            shape = tuple(group.tensors.shape[-2:])
            for name, index in zip(("easy", "hard"), routed):
                if index:
                    part = batch.without_pixels() if name == "easy" else batch
                    stored.append(part.take(index) if len(index) < len(batch) else part)
                    self.waiting.setdefault((name, shape), []).append(stored[-1])
                    ready.append((name, shape))
        self.last_phi = in_input_order(phis, len(images))
        sync()
        share = 1000.0 * (time.perf_counter() - start) / len(images)
        for part in stored:
            part.ms[:] = [share] * len(part)
        self.batches += 1
        done = []
        for name, shape in ready:
            if (name, shape) not in self.waiting:
                continue  # run with an earlier group's full batch
            done += self._run_ready(name, shape) if self.regroup else self._run(name, self.waiting.pop((name, shape)))
        return done

    def finish(self) -> list[Done]:
        """Run whatever still waits (partial batches); the batcher is then empty."""
        done = []
        for (route, _), parts in list(self.waiting.items()):
            if parts:
                done += self._run(route, parts)
        self.waiting.clear()
        return done

    def _run_ready(self, route: str, shape: tuple[int, ...]) -> list[Done]:
        """Run `route` on every full batch of `shape`, then on its oldest partial groups while
        the route's groups hold batch_size images or more between them."""
        parts = self.waiting[(route, shape)]
        done = []
        while sum(len(p) for p in parts) >= self.batch_size:
            chosen, count = [], 0
            while count < self.batch_size:
                part = parts.pop(0)
                need = self.batch_size - count
                if len(part) > need:
                    parts.insert(0, part.take(slice(need, None)))
                    part = part.take(slice(0, need))
                chosen.append(part)
                count += len(part)
            done += self._run(route, chosen)
        if not parts:
            del self.waiting[(route, shape)]  # so the dict's order stays the order groups began waiting
        groups = [key for key in self.waiting if key[0] == route]  # the longest waiting first
        while sum(len(p) for key in groups for p in self.waiting[key]) >= self.batch_size:
            done += self._run(route, self.waiting.pop(groups.pop(0)))
        return done

    def _run(self, route: str, parts: list[_Waiting]) -> list[Done]:
        sync = _sync_for(parts[0].tensors.device)
        sync()
        start = time.perf_counter()
        group = _Waiting.cat(parts)
        images = ImageList(group.tensors, group.image_sizes)
        dets = self.model.run_route(route, images, group.feats)
        dets = self.model.transform.postprocess(dets, group.image_sizes, group.original_sizes)
        sync()
        share = 1000.0 * (time.perf_counter() - start) / len(group)
        first_call = self.calls[route] == 0
        self.calls[route] += 1
        out = []
        for i, det in enumerate(dets):
            det["route"] = route
            det["difficulty"] = group.phi[i]
            out.append(Done(group.keys[i], det, group.ms[i] + share, group.warmup[i] or first_call))
        return out


def route_stream(batcher: RouteBatcher, batches: Iterable[tuple], hold: LatencyHold | None = None) -> Iterator[list[Done]]:
    """Every input batch (images, keys), or (images, keys, original_sizes) for images scaled
    down before (RouteBatcher.add), through `batcher`, then whatever still waits: the images
    finished at each step, in the order their routes ran.

    With `hold`, each batch is routed at the controller's tau and the controller times the
    batcher's work for it (start before, update after): the time the caller spends reading
    the next batch or writing results is not counted. Without, every image is routed at the
    batcher's route."""
    for images, keys, *sizes in batches:
        sizes = sizes[0] if sizes else None
        if hold is None:
            yield batcher.add(images, keys, original_sizes=sizes)
            continue
        hold.start()
        done = batcher.add(images, keys, route=hold.tau, original_sizes=sizes)
        _tell(hold, done, batcher.last_phi.tolist(), first=batcher.batches == 1)
        yield done
    if hold is None or not batcher.batches:
        yield batcher.finish()
        return
    hold.start()
    done = batcher.finish()
    _tell(hold, done, [], first=False)
    yield done


def _tell(hold: LatencyHold, done: list[Done], scores: list[float], first: bool) -> None:
    """Hand the controller the batch it timed: the scores routed, the images finished."""
    n_hard = sum(d.detection["route"] == "hard" for d in done)
    hold.update(scores, len(done) - n_hard, n_hard, warmup=first or any(d.warmup for d in done))


def _sync_for(device: torch.device):
    """What makes a wall-clock span cover the device's work: CUDA runs asynchronously."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
