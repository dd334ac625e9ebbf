"""Issue 22's GPU measurements in one command, inside its own time budget.

    python bench/gpu_check.py OUT --device cuda              # on the GPU machine (docs/gpu.md)
    python bench/gpu_check.py OUT --device cpu --quick       # the same steps at toy sizes: a dry run

Writes OUT/results.json (rewritten after every step, so a run cut short still leaves what it
measured) and OUT/log.txt (everything printed, the subprocesses' output too). Steps, in order:

  env          versions (python, torch, torchvision, pycocotools, ...), the device, the budget
  cuda_tests   tests/test_cuda.py (skipped, with the reason, where no CUDA device is present)
  train        the recipe's joint training with --amp (train.train_one_epoch, the trainer's own
               step: autocast, GradScaler, the recipe's optimizer and schedule) against one plain
               torchvision detector of detector 1's configuration trained the same way: images/s,
               peak device memory, training FLOPs (bench_train.training_flops), time ratio against
               FLOP ratio (goal: within 1.1x)
  loader       the training data loader alone, same batch and workers: images/s it delivers
               against what the training step consumes
  easy_route   bench_easy_route's comparison (easy route against plain torchvision, goal at most
               1.02x) at batch 1 and 8, fp32 and AMP, with lat1 / lat2 from latency.measure_routes
  route_sync   what the routing's host synchronisations cost: a threshold that sends every image
               one way against that whole route by name (the same work, without split_by_route's
               nonzero() / tolist()); a stream of batches through a RouteBatcher (which
               synchronises around every call to time it) against model.detect; on CUDA also the
               host synchronisations per call, counted by torch.cuda.set_sync_debug_mode
  calibrate    `dynamicdet train-router` on fresh detectors, then `calibrate --latency 50%` and
               `evaluate --point` at batch 1 and 8 (the CLI, in subprocesses): achieved mean latency
               per image against the target (goal: within 5%)
  yolo         recipes/dy-yolo-s.yaml at 640 px, batch 1, float16 autocast: FPS per route beside
               the authors' V100 figures; and one training step at batch 8 with 500 boxes per
               image (bench/bench_yolo.py): seconds and peak GPU memory
  yolo_family  every Dy-YOLO scale (recipes/dy-yolo-{n,s,m,l,x}.yaml) at 640 px, float16 autocast,
               batch 1 and 8, routes alternated over all of them (bench_yolo.family_latency): ms per
               image and FPS of each route, hard / easy in time beside the FLOP ratio
  shape_groups recipes/dy-yolo-s.yaml, batch 8 of three COCO-like shapes (4:3, 3:4, 3:2 at 640 px),
               float16 autocast: backbone 1 once per padded shape (what inference does) against
               the batch padded together, ms per image and phi's shift from each image alone
               (bench/bench_shape_groups.py)
  suite        the test suite (pytest, with pytest-xdist when present), with what is left of the budget

Each step runs under an alarm set to what is left of the budget; a step that fails records its
error and the next one runs; a step that would start too close to the end is skipped with the
reason. Data and checkpoints go to a temporary folder (--work), never under OUT.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import importlib.util
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

T0 = time.perf_counter()  # the budget counts from here, torch's import included

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_easy_route import alternate, autocast_for, build_pair, compare, router_ms, sync_for  # noqa: E402
from bench_shape_groups import compare as compare_shape_groups  # noqa: E402
from bench_train import training_flops  # noqa: E402
from bench_yolo import YOLO_TIMING_SETS, family_latency, train_step_memory  # noqa: E402
from dynamicdet_cli.speed.calibrate import measure_latency  # noqa: E402
from dynamicdet_cli.checkpoint.store import load_checkpoint, new_checkpoint, save_checkpoint  # noqa: E402
from dynamicdet_cli.checkpoint.types import Checkpoint, TrainingRecord  # noqa: E402
from dynamicdet_cli.data.coco import CocoDataset, collate  # noqa: E402
from dynamicdet_cli.data.shapes import make_shapes  # noqa: E402
from dynamicdet_cli.data.transforms import build_transforms  # noqa: E402
from dynamicdet_cli.train.distributed import Dist  # noqa: E402
from dynamicdet_cli.speed.latency import measure_routes  # noqa: E402
from dynamicdet_cli.model.build import build_model  # noqa: E402
from dynamicdet_cli.model.reference import torchvision_reference  # noqa: E402
from dynamicdet_cli.speed.batcher import RouteBatcher  # noqa: E402
from dynamicdet_cli.config.recipe import ONE_STAGE_FAMILIES, load_recipe  # noqa: E402
from dynamicdet_cli.speed.regime import device_name  # noqa: E402
from dynamicdet_cli.train.loop import amp_dtype, build_optimizer, lr_factor, train_one_epoch  # noqa: E402
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it

YOLO_RECIPE = REPO / "recipes" / "dy-yolo-s.yaml"
YOLO_FAMILY = [REPO / "recipes" / f"dy-yolo-{scale}.yaml" for scale in "nsmlx"]
AUTHORS_V100 = {"model": "Dy-YOLOv7 at 640 px, V100 (paper)", "fps_10pct_hard": 110.0, "fps_all_hard": 83.0}
PACKAGES = ("torch", "torchvision", "numpy", "pycocotools", "typer", "rich", "yaml", "PIL", "onnx",
            "onnxruntime", "matplotlib", "pytest", "xdist")


@dataclass(frozen=True)
class Sizes:
    """How big each step is: the GPU run's sizes, or --quick's toy ones."""

    recipe: str = "recipes/dy-faster-rcnn-r50-fpn.yaml"
    side: int = 800                  # square synthetic images, and the networks' input size
    train_images: int = 64           # shapes images written for training and the loader
    val_images: int = 64             # shapes images for train-router, calibrate and evaluate
    train_steps: int = 200           # timed training steps per model (fewer if the budget says so)
    train_warmup: int = 10
    train_seconds: float = 120.0     # the timed steps of both models together should fit in this
    loader_batches: int = 100
    batch_sizes: tuple = (1, 8)
    easy_repeats: int = 30
    sync_repeats: int = 30
    calibrate_repeats: int = 5
    yolo_side: int = 640
    yolo_repeats: int = 50
    yolo_train_batch: int = 8        # one training step of the s recipe: batch, boxes per image
    yolo_train_boxes: int = 500
    family_batch_sizes: tuple = (1, 8)
    family_repeats: int = 30
    shape_repeats: int = 20
    suite: tuple = ("tests",)


QUICK = Sizes(recipe="recipes/shapes-tiny.yaml", side=128, train_images=16, val_images=16, train_steps=4,
              train_warmup=1, train_seconds=20.0, loader_batches=8, easy_repeats=3, sync_repeats=3,
              calibrate_repeats=1, yolo_side=128, yolo_repeats=3, yolo_train_batch=2, yolo_train_boxes=50,
              family_batch_sizes=(1,), family_repeats=2, shape_repeats=2,
              suite=("tests/test_cuda.py", "tests/config/test_recipe.py"))

# Seconds a step needs at least to be worth starting (full run; --quick: a tenth), and at most
# may take (full run only: a toy run on a busy CPU is slow, and its budget alone stops it).
NEEDS = {"env": 0, "data": 30, "cuda_tests": 30, "train": 90, "loader": 15, "easy_route": 40, "route_sync": 20,
         "calibrate": 90, "yolo": 20, "yolo_family": 20, "shape_groups": 20,
         "suite": 30}
CAPS = {"env": 30, "data": 90, "cuda_tests": 90, "train": 200, "loader": 45, "easy_route": 90, "route_sync": 60,
        "calibrate": 180, "yolo": 60, "yolo_family": 60, "shape_groups": 60,
        "suite": 600}


class StepTimeout(Exception):
    """The budget ran out while a step was running."""


# ----------------------------------------------------------------------------- the frame

class Check:
    """The run: its output folder, log, budget and results."""

    def __init__(self, out: Path, work: Path, device: torch.device, sizes: Sizes, budget_s: float,
                 quick: bool, train_sets: list[str]):
        self.out, self.work, self.device, self.sizes, self.quick = out, work, device, sizes, quick
        self.train_sets = train_sets
        self.start = T0
        self.deadline = self.start + budget_s
        self.partial: dict = {}  # what the running step has measured so far, kept if it fails
        self.log_file = open(out / "log.txt", "a", buffering=1)
        self.results = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        "command": " ".join(sys.argv), "device": str(device), "quick": quick,
                        "budget_s": budget_s, "sizes": asdict(sizes), "steps": {}}
        self.data_yaml: Path | None = None

    def log(self, text: str) -> None:
        stamp = f"[{time.perf_counter() - self.start:7.1f}s] "
        for line in str(text).splitlines() or [""]:
            print(stamp + line, flush=True)
            self.log_file.write(stamp + line + "\n")

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def save(self) -> None:
        self.results["wall_s"] = round(time.perf_counter() - self.start, 1)
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        tmp.replace(self.out / "results.json")

    def step(self, name: str, fn) -> None:
        """Run fn(self) -> dict under the budget's alarm; record ok / error / skipped."""
        needs = NEEDS[name] / (10 if self.quick else 1)
        record = {"status": "skipped"}
        self.partial = {}
        if self.left() < needs:
            record["reason"] = f"{max(self.left(), 0):.0f} s left of the budget, the step needs about {needs:.0f} s"
            self.log(f"== {name}: skipped ({record['reason']})")
        else:
            self.log(f"== {name} ({self.left():.0f} s left)")
            start = time.perf_counter()
            limit = self.left() if self.quick else min(self.left(), CAPS[name])
            try:
                with _alarm(limit):
                    record = {"status": "ok", **fn(self)}
            except StepTimeout:
                record = {"status": "error", "error": f"stopped after {limit:.0f} s: the step's share of the budget ran out"}
            except Exception as exc:  # one step's failure must not cost the others
                record = {"status": "error", "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
                self.log(traceback.format_exc())
            if record["status"] == "error" and self.partial:
                record["partial"] = self.partial
            record["seconds"] = round(time.perf_counter() - start, 1)
            self.log(f"   {name}: {record['status']} in {record['seconds']} s"
                     + (f": {record['error']}" if "error" in record else ""))
            _free(self.device)
        self.results["steps"][name] = record
        self.save()

    def run(self, args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        """A subprocess (python -m dynamicdet_cli ..., pytest ...) with this repository importable;
        its output goes to the log."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                   PYTHONUNBUFFERED="1", COLUMNS="160")
        self.log("$ " + " ".join(args))
        timeout = max(1.0, self.left() - 5) if timeout is None else timeout
        try:
            done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.log(_text(exc.stdout) + _text(exc.stderr))
            raise StepTimeout() from exc
        self.log(done.stdout + done.stderr)
        return done

    def cli(self, *args: str) -> str:
        done = self.run(["-m", "dynamicdet_cli", *args])
        if done.returncode != 0:
            lines = [x for x in (done.stdout + done.stderr).splitlines() if x.strip()]
            raise RuntimeError(f"dynamicdet {args[0]} exited {done.returncode}: {lines[-1] if lines else ''}")
        return done.stdout


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


@contextlib.contextmanager
def _alarm(seconds: float):
    def ring(*_):
        raise StepTimeout()
    if seconds <= 0:
        raise StepTimeout()
    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3)}


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


# ----------------------------------------------------------------------------- the steps

def step_env(c: Check) -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            versions[name] = getattr(module, "__version__", "installed")
        except Exception as exc:  # a missing package is a finding, not a failure
            versions[name] = f"missing ({type(exc).__name__})"
    info = {"versions": versions, "device_name": device_name(c.device), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    if c.device.type == "cuda":
        props = torch.cuda.get_device_properties(c.device)
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), gpu=props.name,
                    capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                        timeout=10).stdout.strip() or None
    except Exception:
        info["commit"] = None  # the device machine gets a copy of the tree, maybe without .git
    c.log(json.dumps(info, indent=1))
    return info


def step_data(c: Check) -> dict:
    """The synthetic shapes dataset at the check's size, shared by train, loader and calibrate."""
    s = c.sizes
    c.data_yaml = make_shapes(c.work / "shapes", n_train=s.train_images, n_val=s.val_images, size=s.side, seed=0)
    return {"data": str(c.data_yaml), "train_images": s.train_images, "val_images": s.val_images, "side": s.side}


def _train_recipe(c: Check):
    s = c.sizes
    return load_recipe(REPO / s.recipe, [*c.train_sets, f"model.transform.min_size=[{s.side}]",
                                         f"model.transform.max_size={s.side}"])


def _train_dataset(c: Check, recipe) -> CocoDataset:
    aug = recipe.train.augment  # as train-detectors opens its training set
    folder = c.data_yaml.parent
    return CocoDataset(folder / "train.json", folder / "train",
                       transforms=build_transforms(True, aug.hflip, aug.photometric, aug.zoom_out)
                       ).fit_to(*recipe.model.transform.largest_training_input())


def _loader(dataset, cfg, steps: int, seed: int) -> DataLoader:
    """train._train_loader's loader (batch, workers, collate), its sampler drawing with
    replacement so that it yields `steps` batches whatever the dataset's size."""
    g = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, replacement=True, num_samples=steps * cfg.batch_size, generator=g)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                      collate_fn=collate, drop_last=True)


class SummedLosses(nn.Module):
    """A plain torchvision detector with the trainer's loss keys: 'loss' = the sum of its parts
    (labels counted from 0 for the one-stage families, as torchvision's count them)."""

    def __init__(self, detector: nn.Module, one_stage: bool):
        super().__init__()
        self.detector, self.one_stage = detector, one_stage

    def forward(self, images, targets):
        if self.one_stage:
            targets = [{**t, "labels": t["labels"] - 1} for t in targets]
        losses = self.detector(images, targets)
        return {**losses, "loss": sum(losses.values())}


def _train_models(recipe, num_classes: int) -> dict:
    """Both models from the same seed: the plain one is detector 1's configuration (bench_train)."""
    torch.manual_seed(0)
    dynamic = build_model(recipe.model, num_classes=num_classes)
    dynamic.router.requires_grad_(False)  # step 1 trains the detectors only
    torch.manual_seed(0)
    plain = torchvision_reference(build_model(recipe.model, num_classes=num_classes), recipe.model)
    return {"dynamic": dynamic, "plain": SummedLosses(plain, recipe.model.family in ONE_STAGE_FAMILIES)}


def _timed_epoch(c: Check, model, optimizer, scheduler, scaler, dataset, cfg, steps: int, seed: int) -> tuple[dict, float]:
    loader = _loader(dataset, cfg, steps, seed)
    sync = sync_for(c.device)
    sync()
    start = time.perf_counter()
    stats = train_one_epoch(model, loader, optimizer, scheduler, scaler, c.device, epoch=0, env=Dist(), amp=True)
    sync()
    return stats, time.perf_counter() - start


def step_train(c: Check) -> dict:
    s = c.sizes
    recipe = _train_recipe(c)
    cfg = recipe.train
    dataset = _train_dataset(c, recipe)
    out = c.partial
    out.update(recipe=s.recipe, overrides=c.train_sets, side=s.side, batch_size=cfg.batch_size, workers=cfg.workers,
               amp_dtype=str(amp_dtype(c.device)), optimizer=cfg.optimizer, lr=cfg.lr)
    per_model_s = s.train_seconds / 2
    for name, model in _train_models(recipe, dataset.num_classes).items():
        model.to(c.device).train()
        optimizer = build_optimizer(model, cfg)
        total = s.train_warmup + s.train_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, total, cfg))
        scaler = torch.amp.GradScaler(c.device.type, enabled=amp_dtype(c.device) == torch.float16)
        _, warm_s = _timed_epoch(c, model, optimizer, scheduler, scaler, dataset, cfg, s.train_warmup, seed=1)
        # The warm-up's steps (first-call set-up included) overestimate a step: a safe guess.
        steps = max(2, min(s.train_steps, int(per_model_s / (warm_s / s.train_warmup))))
        _peak_reset(c.device)
        stats, seconds = _timed_epoch(c, model, optimizer, scheduler, scaler, dataset, cfg, steps, seed=2)
        peak = _peak_gib(c.device)  # before the float32 FLOP count below adds its own pass
        images = stats["steps"] * cfg.batch_size
        first = next(iter(_loader(dataset, cfg, 1, seed=3)))
        batch = ([im.to(c.device) for im in first[0]],
                 [{k: (v.to(c.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in first[1]])
        flops = training_flops(model, batch, "loss")  # float32, forward + backward, one batch
        out[name] = {"steps": stats["steps"], "warmup_steps": s.train_warmup, "warmup_s": round(warm_s, 2),
                     "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 3),
                     "images_per_s_trainer": round(stats["images_per_s"], 3),
                     "last_loss": round(stats.get("loss", float("nan")), 4),
                     "grad_scale": scaler.get_scale() if scaler.is_enabled() else None,
                     "gflops_per_image": round(flops / cfg.batch_size / 1e9, 2), **peak}
        c.log(f"   {name}: {out[name]}")
        model.to("cpu")
        del model, optimizer, scheduler, scaler
        _free(c.device)
    time_ratio = out["plain"]["images_per_s"] / out["dynamic"]["images_per_s"]
    flop_ratio = out["dynamic"]["gflops_per_image"] / out["plain"]["gflops_per_image"]
    out.update(time_ratio=round(time_ratio, 3), flop_ratio=round(flop_ratio, 3),
               time_over_flop_ratio=round(time_ratio / flop_ratio, 3),
               goal="time ratio within 1.1x of the FLOP ratio", goal_met=time_ratio / flop_ratio <= 1.1)
    c.results["train_rate"] = out["dynamic"]["images_per_s"]
    return out


def step_loader(c: Check) -> dict:
    s = c.sizes
    recipe = _train_recipe(c)
    cfg = recipe.train
    loader = _loader(_train_dataset(c, recipe), cfg, s.loader_batches, seed=4)
    start = time.perf_counter()
    first_s, images = None, 0
    for batch_images, _ in loader:
        images += len(batch_images)
        for im in batch_images:
            im.to(c.device, non_blocking=True)  # as the training step takes them
        if first_s is None:
            first_s = time.perf_counter() - start  # worker start-up and the first batch
    seconds = time.perf_counter() - start
    rate = images / seconds
    steady = (images - cfg.batch_size) / max(seconds - first_s, 1e-9)
    out = {"batch_size": cfg.batch_size, "workers": cfg.workers, "batches": s.loader_batches,
           "seconds": round(seconds, 2), "first_batch_s": round(first_s, 2), "images_per_s": round(rate, 2),
           "images_per_s_after_first": round(steady, 2)}
    step_rate = c.results.get("train_rate")
    if step_rate:
        out.update(training_consumes_images_per_s=step_rate, loader_over_consumption=round(steady / step_rate, 2),
                   starves=steady < step_rate)
    return out


def _pair_on_device(c: Check):
    recipe, model, reference, side = build_pair(REPO / c.sizes.recipe, c.sizes.side, [])
    model.to(c.device)
    reference.to(c.device)
    return recipe, model, reference, side


def _images(n: int, side: int, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, side, side, generator=g).to(device) for _ in range(n)]  # each 3,H,W in [0, 1]


def step_easy_route(c: Check) -> dict:
    s = c.sizes
    _, model, reference, side = _pair_on_device(c)
    sync = sync_for(c.device)
    out = c.partial
    out.update(recipe=s.recipe, side=side, repeats=s.easy_repeats, runs=[])
    for amp in (False, True):
        for batch in s.batch_sizes:
            images = _images(batch, side, c.device)
            with autocast_for(c.device, amp):
                t_easy, t_plain = compare(model, reference, images, 3, s.easy_repeats, sync)
                router = router_ms(model, images, s.easy_repeats, sync)
                lat = measure_routes(model, c.device, _images(2 * batch, side, c.device, seed=1), batch,
                                     repeats=max(3, s.easy_repeats // 6))
                detections = sum(len(d["boxes"]) for d in model.detect(images, route="easy"))
            run = {"batch": batch, "amp": amp, "easy_ms": _median(t_easy), "plain_ms": _median(t_plain),
                   "easy_detections_per_image": round(detections / batch, 1),
                   "ratio_of_medians": round(statistics.median(t_easy) / statistics.median(t_plain), 4),
                   "paired_ratio": round(statistics.median(e / p for e, p in zip(t_easy, t_plain)), 4),
                   "router_ms": round(router, 4), "lat1_ms_per_image": round(lat.easy_ms, 3),
                   "lat2_ms_per_image": round(lat.hard_ms, 3), "lat_spread_pct": lat.spread_pct}
            run["goal_met"] = run["ratio_of_medians"] <= 1.02
            c.log(f"   {run}")
            out["runs"].append(run)
    out["goal"] = "easy route at most 1.02x plain torchvision (ratio of medians)"
    return out


def _count_syncs(device: torch.device, fn) -> int | None:
    """Host synchronisations during fn(), as torch.cuda.set_sync_debug_mode('warn') reports them."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@torch.inference_mode()
def step_route_sync(c: Check) -> dict:
    """split_by_route (model/detector.py) turns `phi > tau` into index lists with nonzero() and
    tolist(): the host waits for backbone 1 and the router before it can queue the heads. A
    whole route by name skips that; a threshold that sends every image the same way does the
    same work through it. RouteBatcher (speed/batcher.py) also synchronises before and after
    every call to time it per image."""
    s = c.sizes
    _, model, _, side = _pair_on_device(c)
    sync = sync_for(c.device)
    out = c.partial
    out.update(side=side, repeats=s.sync_repeats, runs=[])
    for batch in s.batch_sizes:
        images = _images(batch, side, c.device)
        for route, tau in (("easy", 1.5), ("hard", -0.5)):  # outside phi's (0, 1): all one way
            routes = {r["route"] for r in model.detect(images, route=tau)}
            assert routes == {route}, f"tau {tau} routed {routes}, not all {route}"
            t_named, t_tau = alternate(lambda: model.detect(images, route=route),
                                       lambda: model.detect(images, route=tau), 3, s.sync_repeats, sync)
            run = {"batch": batch, "route": route, "named_ms": _median(t_named), "threshold_ms": _median(t_tau),
                   "threshold_cost_pct": round(100 * (statistics.median(t_tau) / statistics.median(t_named) - 1), 2),
                   "paired_cost_pct": round(100 * (statistics.median(t / n for t, n in zip(t_tau, t_named)) - 1), 2),
                   "syncs_named": _count_syncs(c.device, lambda: model.detect(images, route=route)),
                   "syncs_threshold": _count_syncs(c.device, lambda: model.detect(images, route=tau))}
            c.log(f"   {run}")
            out["runs"].append(run)
        stream = [_images(batch, side, c.device, seed=10 + i) for i in range(4)]

        def batcher_pass():
            batcher = RouteBatcher(model, "easy", batch, regroup=False)
            for i, b in enumerate(stream):
                batcher.add(b, range(i * batch, (i + 1) * batch))
            batcher.finish()

        def detect_pass():
            for b in stream:
                model.detect(b, route="easy")

        t_batcher, t_detect = alternate(batcher_pass, detect_pass, 2, max(3, s.sync_repeats // 3), sync)
        run = {"batch": batch, "stream_batches": len(stream), "route_batcher_ms": _median(t_batcher),
               "detect_ms": _median(t_detect),
               "batcher_cost_pct": round(100 * (statistics.median(t_batcher) / statistics.median(t_detect) - 1), 2)}
        c.log(f"   {run}")
        out["runs"].append(run)
    out["note"] = ("threshold_cost_pct: split_by_route's comparison, nonzero() and tolist() (host syncs) against "
                   "the named route, same work; batcher_cost_pct: RouteBatcher's per-call timing syncs against "
                   "model.detect over a stream of batches, easy route")
    return out


def _fresh_checkpoint(c: Check) -> Path:
    """Fresh detectors (no training: throughput and latency do not depend on the weights), saved
    as a checkpoint train-router accepts."""
    s = c.sizes
    recipe = load_recipe(REPO / s.recipe, [*c.train_sets, f"model.transform.min_size=[{s.side}]",
                                           f"model.transform.max_size={s.side}"])
    folder = c.data_yaml.parent
    train_set = CocoDataset(folder / "train.json", folder / "train")
    torch.manual_seed(0)
    model = build_model(recipe.model, num_classes=train_set.num_classes)
    # A training record of 0 epochs and steps: train-router refuses a checkpoint without one,
    # and these detectors are fresh, never trained.
    ckpt = replace(new_checkpoint(recipe, train_set.classes, train_set.cat_ids, model),
                   training=TrainingRecord(epochs=0, steps=0, run=""))
    return save_checkpoint(ckpt, c.work / "model.pt")


def step_calibrate(c: Check) -> dict:
    s = c.sizes
    ckpt_path = _fresh_checkpoint(c)
    dev = str(c.device)
    c.cli("train-router", str(ckpt_path), "--data", str(c.data_yaml), "--device", dev, "--no-progress")
    out = c.partial
    out.update(recipe=s.recipe, side=s.side, val_images=s.val_images, runs=[])
    for batch in s.batch_sizes:
        name = f"half_b{batch}"
        c.cli("calibrate", str(ckpt_path), "--device", dev, "--latency", "50%", "--batch-size", str(batch),
              "--name", name, "--repeats", str(s.calibrate_repeats))
        ckpt = load_checkpoint(ckpt_path)  # once per batch size: what calibrate just stored
        point = ckpt.operating_points[name]
        eval_dir = c.work / f"eval_b{batch}"
        c.cli("evaluate", str(ckpt_path), "--data", str(c.data_yaml), "--point", name, "--batch-size", str(batch),
              "--device", dev, "--out", str(eval_dir), "--no-progress")
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        warm = _warm_latency(c, ckpt, point.tau, batch)
        target = point.target_ms
        run = {"batch": batch, "target_ms": round(target, 3), "expected_ms": round(point.expected_ms, 3),
               "tau": point.tau, "hard_ratio_val": point.hard_ratio,
               "achieved_ms": round(metrics["latency_ms"], 3), "achieved_hard_share": metrics["hard_share"],
               "error_pct": round(100 * (metrics["latency_ms"] - target) / target, 2), "images": metrics["images"],
               "achieved_ms_warm": round(warm, 3), "error_pct_warm": round(100 * (warm - target) / target, 2),
               **_calibration_record(ckpt, batch)}
        run["goal_met"] = abs(run["error_pct"]) <= 5
        run["goal_met_warm"] = abs(run["error_pct_warm"]) <= 5
        c.log(f"   {run}")
        out["runs"].append(run)
    out["goal"] = ("achieved mean latency per image within 5% of the target; achieved_ms: the evaluate command's "
                   "latency_ms (model time, its process's first calls included); achieved_ms_warm: evaluate_route "
                   "run again in this process after one untimed pass at the same tau")
    return out


def _warm_latency(c: Check, ckpt: Checkpoint, tau: float, batch: int) -> float:
    """Mean model ms per image of evaluate_route at `tau`, its second pass in this process."""
    from dynamicdet_cli.checkpoint.store import model_from_checkpoint
    from dynamicdet_cli.evaluation.evaluate import evaluate_route
    model = model_from_checkpoint(ckpt, c.device).eval()
    folder = c.data_yaml.parent
    dataset = CocoDataset(folder / "val.json", folder / "val", transforms=build_transforms(False))
    for _ in range(2):
        result = evaluate_route(model, dataset, tau, c.device, c.work / f"warm_b{batch}", batch, show_progress=False)
    return result.latency_ms


def _calibration_record(ckpt: Checkpoint, batch: int) -> dict:
    """What calibrate measured at `batch` (lat1, lat2, its spread, the mixed-batch curve) and the
    spread of the router's validation scores (fresh detectors: tau needs scores that differ)."""
    lat = next((m for m in reversed(ckpt.latency) if m.batch_size == batch), None)
    scores = ckpt.validation.scores.float()
    record = dict.fromkeys(("lat1_ms", "lat2_ms", "spread_pct", "curve_ms"))
    if lat is not None:
        record.update(lat1_ms=lat.easy_ms, lat2_ms=lat.hard_ms, spread_pct=lat.spread_pct,
                      curve_ms=[list(p) for p in lat.curve_ms])
    record["val_scores_min_max"] = [round(float(scores.min()), 4), round(float(scores.max()), 4)]
    return record


def step_yolo(c: Check) -> dict:
    s = c.sizes
    recipe = load_recipe(YOLO_RECIPE, YOLO_TIMING_SETS)
    torch.manual_seed(0)
    model = build_model(recipe.model).eval().to(c.device)
    images = _images(1, s.yolo_side, c.device)
    sync = sync_for(c.device)
    ms = {}
    out = c.partial  # what was measured survives a timeout in the training step below
    with torch.inference_mode(), torch.autocast(c.device.type, dtype=amp_dtype(c.device)):
        for route in ("easy", "hard"):
            ms[route] = measure_latency(lambda: model.detect(images, route=route), warmup=10,
                                        repeats=s.yolo_repeats, sync=sync if c.device.type == "cuda" else None)
            out[f"{route}_ms"] = round(ms[route], 3)
            out[f"{route}_detections"] = len(model.detect(images, route=route)[0]["boxes"])
    out["overrides"] = YOLO_TIMING_SETS
    at_10 = ms["easy"] + 0.1 * (ms["hard"] - ms["easy"])  # the paper's line at 10% hard
    a10, ahard = 1000 / AUTHORS_V100["fps_10pct_hard"], 1000 / AUTHORS_V100["fps_all_hard"]
    authors_easy = (a10 - 0.1 * ahard) / 0.9  # their lat1 on the same line
    # one training step (both detectors, forward and backward) with many boxes: the assigner's memory
    step = train_step_memory(str(YOLO_RECIPE), s.yolo_side, s.yolo_train_batch, s.yolo_train_boxes,
                             torch.get_num_threads(), str(c.device))
    return {**out, "recipe": str(YOLO_RECIPE.relative_to(REPO)), "side": s.yolo_side, "batch": 1,
            "train_step": {"batch": s.yolo_train_batch, "boxes_per_image": s.yolo_train_boxes, **step},
            "precision": f"autocast {amp_dtype(c.device)}", "easy_ms": round(ms["easy"], 3),
            "hard_ms": round(ms["hard"], 3), "fps_easy": round(1000 / ms["easy"], 1),
            "fps_hard": round(1000 / ms["hard"], 1), "fps_10pct_hard_line": round(1000 / at_10, 1),
            "hard_over_easy": round(ms["hard"] / ms["easy"], 3),
            "authors": {**AUTHORS_V100, "fps_easy_derived": round(1000 / authors_easy, 1),
                        "hard_over_easy_derived": round(ahard / authors_easy, 3)}}


def step_yolo_family(c: Check) -> dict:
    s = c.sizes
    sync = sync_for(c.device)
    recipes = [str(p.relative_to(REPO)) for p in YOLO_FAMILY if p.exists()]
    return family_latency(recipes, s.yolo_side, list(s.family_batch_sizes), warmup=5 if not c.quick else 1,
                          repeats=s.family_repeats, device=c.device, amp=True, sync=sync, partial=c.partial)


def step_shape_groups(c: Check) -> dict:
    s = c.sizes
    recipe = load_recipe(YOLO_RECIPE, YOLO_TIMING_SETS)
    torch.manual_seed(0)
    model = build_model(recipe.model).eval().to(c.device)
    side = s.yolo_side
    shapes = [(side * 3 // 4, side), (side, side * 3 // 4), (side * 2 // 3, side)]  # height, width
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, *shapes[i % 3], generator=g).to(c.device) for i in range(8)]
    with torch.autocast(c.device.type, dtype=amp_dtype(c.device)):
        result = compare_shape_groups(model, images, warmup=3 if not c.quick else 1, repeats=s.shape_repeats,
                                      sync=sync_for(c.device))
    return {"recipe": str(YOLO_RECIPE.relative_to(REPO)), "overrides": YOLO_TIMING_SETS,
            "shapes_hw": shapes, "precision": f"autocast {amp_dtype(c.device)}", **result}


def step_cuda_tests(c: Check) -> dict:
    return _pytest(c, ["tests/test_cuda.py"], workers=0)


def step_suite(c: Check) -> dict:
    xdist = importlib.util.find_spec("xdist") is not None
    workers = min(8, (os.cpu_count() or 1) // 2) if xdist and not c.quick else 0
    return _pytest(c, list(c.sizes.suite), workers)


def _pytest(c: Check, paths: list[str], workers: int) -> dict:
    args = ["-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *paths]
    if workers > 1:
        args += ["-n", str(workers)]
    os.environ.setdefault("OMP_NUM_THREADS", "2")  # as `make test`
    done = c.run(args)
    lines = [x for x in done.stdout.splitlines() if x.strip()]
    summary = next((x for x in reversed(lines) if re.search(r"\d+ (passed|failed|skipped|error)", x)), "")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|deselected)", summary)}
    failed = [x for x in lines if x.startswith(("FAILED", "ERROR"))]
    skipped = [x for x in lines if x.startswith("SKIPPED")]
    return {"paths": paths, "workers": workers, "returncode": done.returncode, "summary": summary,
            "counts": counts, "failed": failed[:50], "skipped": skipped[:20]}


STEPS = [("env", step_env), ("data", step_data), ("cuda_tests", step_cuda_tests), ("train", step_train),
         ("loader", step_loader), ("easy_route", step_easy_route), ("route_sync", step_route_sync),
         ("calibrate", step_calibrate), ("yolo", step_yolo),
         ("yolo_family", step_yolo_family), ("shape_groups", step_shape_groups), ("suite", step_suite)]
NEEDS_DATA = {"train", "loader", "calibrate"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for results.json and log.txt (created)")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--quick", action="store_true", help="toy sizes (tiny recipe, 128 px, a few steps): a dry run")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (default 480)")
    ap.add_argument("--recipe", help="recipe of the train / easy_route / route_sync / calibrate steps")
    ap.add_argument("--size", type=int, help="image side, px (default 800; --quick 128)")
    ap.add_argument("--set", dest="train_sets", action="append",
                    default=['model.backbone.weights=""', "train.lr=0.002"],
                    help="recipe override for the train and calibrate steps (repeatable; default: fresh "
                         "backbones, no download, and lr 0.002, so that from-scratch steps stay finite)")
    ap.add_argument("--only", help="comma-separated steps to run (env and data always run)")
    ap.add_argument("--work", type=Path, help="folder for data and checkpoints (default: a temporary one)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: torch {torch.__version__} sees no CUDA device; use --device cpu")
        return 2
    sizes = QUICK if args.quick else Sizes()
    sizes = replace(sizes, **({"recipe": args.recipe} if args.recipe else {}), **({"side": args.size} if args.size else {}))
    args.out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) | {"env", "data"} if args.only else None
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check_")))
        work.mkdir(parents=True, exist_ok=True)
        check = Check(args.out, work, device, sizes, args.budget, args.quick, args.train_sets)
        check.log(f"gpu_check: device {device}, {'quick' if args.quick else 'full'} sizes, budget {args.budget:.0f} s, "
                  f"out {args.out}, work {work}")
        for name, fn in STEPS:
            if only is not None and name not in only:
                continue
            if name in NEEDS_DATA and check.data_yaml is None:
                check.results["steps"][name] = {"status": "skipped", "reason": "no data: the data step failed"}
                continue
            if name in ("yolo", "yolo_family") and not YOLO_RECIPE.exists():
                check.results["steps"][name] = {"status": "skipped",
                                                "reason": f"{YOLO_RECIPE.relative_to(REPO)} does not exist"}
                continue
            check.step(name, fn)
        check.save()
        states = {n: r["status"] for n, r in check.results["steps"].items()}
        check.log(f"done in {check.results['wall_s']} s: {states}; {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
