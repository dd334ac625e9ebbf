"""Step 1 of DynamicDet: joint training of both detectors, loss = w1 * L1 + w2 * L2.

A run folder holds everything about one run:
    recipe.yaml      the recipe used (with the data's classes)
    metrics.jsonl    one JSON line per epoch: mean losses, lr, images/s, COCO metrics
    results.png      metrics.jsonl drawn (run_plot.py; with matplotlib installed)
    events.out.tfevents.*  the same as TensorBoard scalars (tensorboard_log.py; with tensorboard installed)
    state.pt         resume state: model, optimizer, scheduler, grad scaler, weight average, epoch, step
    last.pt, best.pt model checkpoints in the one dynamicdet format (best = mean AP of d1, d2)

With `train.ema_decay` > 0, an exponential moving average of the weights (ema.py) is what is
evaluated and saved in last.pt and best.pt (and so what the router's step starts from).

With `train.router_holdout` > 0, a seeded share of the training images is kept out of
step 1 entirely; the checkpoints list them (`training.router_image_ids`) and train-router
takes its targets from them: images the detectors never fitted.

Resume is epoch-exact: state.pt is written (atomically) after each epoch, and the random
state is re-seeded from (seed, epoch) at the start of every epoch, so a resumed epoch replays
exactly what the killed one would have done. A run killed mid-epoch loses at most that epoch.

Several processes: run under torchrun (DistributedDataParallel; distributed.py joins the
processes); each process sees its share of the data; only rank 0 writes files and evaluates.
`train.batch_size` is the images of one optimizer step in all, split evenly across the
processes, so a recipe means the same steps and learning rate on one process or several.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from dynamicdet_cli.core.atomic import atomic_path, locked, write_text
from dynamicdet_cli.core.cpus import is_rank_zero, loader_workers
from dynamicdet_cli.checkpoint.store import first_non_finite, new_checkpoint, save_checkpoint
from dynamicdet_cli.checkpoint.types import TrainingRecord
from dynamicdet_cli.data.coco import CocoDataset, class_mismatch, collate
from dynamicdet_cli.data.mosaic import Mosaic
from dynamicdet_cli.train.ema import WeightAverage, ema_decay_at
from dynamicdet_cli.train.distributed import (Dist, evaluation_threads, init_distributed, mean_over_processes,
                                        process_batch_size)
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.evaluation.inference import evaluate_both
from dynamicdet_cli.model.build import build_model, needs_masks
from dynamicdet_cli.core.progress import progress_bar
from dynamicdet_cli.config.recipe import Recipe, recipe_from_dict, recipe_to_dict, with_overrides
from dynamicdet_cli.train.run_plot import PLOT_NAME, RunPlot
from dynamicdet_cli.train.starting_weights import initialise
from dynamicdet_cli.train.tensorboard_log import TensorBoardLog

STATE_FORMAT = "dynamicdet-run-state"
RUN_FILES = ("state.pt", "last.pt", "best.pt", "metrics.jsonl")  # a folder holding any of them holds a run


# ----------------------------------------------------------------------------- optimisation

def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """SGD or AdamW; biases and normalisation scales (the 1-D tensors) get no weight decay.

    Decay would pull the composite connection's BatchNorm scales, which start at zero, back
    towards zero, keeping backbone 2 blind to backbone 1 (torchvision's references exempt
    norm layers likewise).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def warmup_steps(cfg, total_steps: int) -> int:
    """The warm-up's length in a run of `total_steps`: the recipe's, at most a fifth of the run."""
    return min(cfg.warmup_iters, max(total_steps // 5, 1), max(total_steps - 1, 0))


def mosaic_off_epochs(cfg) -> int:
    """The last epochs that train without mosaic: the recipe's, at most a fifth of the run's
    epochs (a run no longer than augment.mosaic_off_epochs would otherwise never see one)."""
    return min(cfg.augment.mosaic_off_epochs, cfg.epochs // 5)


def schedule_notes(cfg, total_steps: int) -> list[str]:
    """What this run does differently from the recipe's numbers, because the run is short: one
    line each, for the CLI to print and metrics.jsonl to keep."""
    notes = []
    warm = warmup_steps(cfg, total_steps)
    if cfg.warmup_iters > warm:
        notes.append(f"lr warm-up: {warm} step{'s' * (warm != 1)}, not train.warmup_iters={cfg.warmup_iters}: at most a fifth "
                     f"of this run's {total_steps} steps")
    if cfg.augment.mosaic > 0 and cfg.augment.mosaic_off_epochs > mosaic_off_epochs(cfg):
        off = mosaic_off_epochs(cfg)
        notes.append(f"mosaic: off for the last {off} epoch{'s' * (off != 1)}, not augment.mosaic_off_epochs="
                     f"{cfg.augment.mosaic_off_epochs}: at most a fifth of this run's {cfg.epochs} epochs")
    capped = ema_decay_at(total_steps, cfg.ema_decay, cfg.ema_ramp, total_steps)
    if cfg.ema_decay > 0 and capped < ema_decay_at(total_steps, cfg.ema_decay, cfg.ema_ramp, total_steps, None):
        notes.append(f"weight average: train.ema_decay={cfg.ema_decay:g} reaches back about "
                     f"{1 / (1 - cfg.ema_decay):.0f} steps, more than this run's {total_steps}; it is held to "
                     "about half the steps taken, and a smaller decay would suit a run this short")
    return notes


def lr_factor(step: int, total_steps: int, cfg) -> float:
    """Multiplier of the peak lr at `step`: linear warm-up, then step / cosine / constant.

    The warm-up is `train.warmup_iters` steps, but at most a fifth of the run (at least one step
    where there is one): a recipe's warm-up sized for COCO (dy-yolo's 5000 steps) would otherwise
    take the whole of a short fine-tuning run, which would never reach its peak lr nor decay."""
    warm = warmup_steps(cfg, total_steps)
    if step < warm:
        return 0.001 + (1 - 0.001) * step / warm
    progress = (step - warm) / max(total_steps - warm, 1)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.schedule == "step":
        return 0.1 ** sum(step >= m * total_steps for m in cfg.milestones)
    return 1.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- one epoch

def amp_dtype(device: torch.device) -> torch.dtype:
    """--amp: float16 with a GradScaler on CUDA; bfloat16 on CPU (float32's range, no scaler)."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def restore_scaler(scaler: torch.amp.GradScaler, saved: dict) -> None:
    """Resume the loss scale. A run started without float16 (on a CPU, or without --amp) saved
    an empty state, which torch refuses to load into an enabled scaler: the resumed run then
    starts from the scaler's initial scale, which it lowers within a few steps."""
    if saved:
        scaler.load_state_dict(saved)


def train_one_epoch(model, loader, optimizer, scheduler, scaler, device, epoch: int, env: Dist,
                    amp: bool = False, grad_clip: float = 0.0, bar=None, max_steps: int | None = None,
                    first_step: int = 0, ema=None) -> dict:
    """One pass over `loader`. Returns mean loss parts, lr, images/s and steps done.

    `ema` (a WeightAverage, ema.py) is updated from the model after every optimizer step.

    Raises DynamicDetError on a non-finite loss, naming the step and the loss part.
    `max_steps` stops after that many global steps (an interrupted run, for tests and
    smoke runs); the returned stats then say `complete: False`.
    """
    model.train()
    sums: dict[str, float] = {}
    steps, images_seen, start = 0, 0, time.perf_counter()
    task = bar.add_task(f"epoch {epoch + 1}", total=len(loader)) if bar is not None else None
    for images, targets in loader:
        if max_steps is not None and first_step + steps >= max_steps:
            return {"complete": False, "steps": steps}
        if not images:
            continue
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
            losses = model(images, targets)
        logged = mean_over_processes(losses, env)
        if not math.isfinite(logged["loss"]):
            bad = next((k for k, v in logged.items() if not math.isfinite(v) and k != "loss"), "loss")
            raise DynamicDetError(
                f"non-finite loss at epoch {epoch + 1}, step {first_step + steps + 1}: {bad} = {logged[bad]}; "
                "training stopped, the checkpoints already saved are unchanged "
                "(lower train.lr or set train.grad_clip)")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(getattr(model, "module", model))  # DDP wraps the model
        steps += 1
        images_seen += len(images) * env.world_size
        for k, v in logged.items():
            sums[k] = sums.get(k, 0.0) + v
        if bar is not None:
            rate = images_seen / (time.perf_counter() - start)
            bar.update(task, advance=1, status=(
                f"loss {logged['loss']:.3f} (d1 {logged['d1/total']:.3f}, d2 {logged['d2/total']:.3f}) "
                f"lr {optimizer.param_groups[0]['lr']:.2e} {rate:.1f} img/s"))
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the last step's kernels belong to this epoch's time
    elapsed = time.perf_counter() - start
    stats = {k: v / max(steps, 1) for k, v in sums.items()}
    stats.update(complete=True, steps=steps, lr=optimizer.param_groups[0]["lr"],
                 images_per_s=images_seen / elapsed if elapsed > 0 else 0.0, seconds=elapsed)
    return stats


# ----------------------------------------------------------------------------- the run

def _train_loader(dataset, cfg, env: Dist, epoch: int, pin_memory: bool = False) -> DataLoader:
    """A loader whose order depends only on (seed, epoch): what makes resume exact.
    Each process loads its share of the recipe's batch (see process_batch_size); its workers'
    augmentation draws are seeded by (seed, epoch, rank), so processes do not repeat each
    other's draws. `pin_memory` (for a CUDA device) lets the copies to the device overlap."""
    if env.enabled:
        sampler = DistributedSampler(dataset, env.world_size, env.rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
    return DataLoader(dataset, batch_size=process_batch_size(cfg.batch_size, env), sampler=sampler,
                      num_workers=loader_workers(cfg.workers), pin_memory=pin_memory,
                      collate_fn=collate, drop_last=False,
                      generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, env.rank)))


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of an epoch's random draws (augmentation) on one training process: the same for
    the same (seed, epoch, rank), so a resumed epoch draws what the interrupted one did, and
    different across ranks, so two processes do not flip their i-th images alike. Rank 0's is
    what a single process uses."""
    return seed * 100003 + epoch + rank * RANK_SEED_STRIDE


RANK_SEED_STRIDE = 7919  # between the seeds of two training processes' draws in one epoch


def _augmented(dataset, cfg, epoch: int):
    """The training set as epoch `epoch` sees it: with mosaics (data/mosaic.py) at the recipe's
    probability, except in the last mosaic_off_epochs(cfg) epochs."""
    a = cfg.augment
    if a.mosaic > 0 and epoch < cfg.epochs - mosaic_off_epochs(cfg):
        return Mosaic(dataset, a.mosaic)
    return dataset


def _save_state(path: Path, model, optimizer, scheduler, scaler, epoch: int, step: int, best: float,
                recipe: dict, classes, category_ids, ema=None) -> None:
    state = {
        "format": STATE_FORMAT, "version": 1, "epoch": epoch, "step": step, "best": best,
        "model": model.state_dict(), "ema": None if ema is None else ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "recipe": recipe, "classes": list(classes), "category_ids": list(category_ids),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_run_state(run: Path) -> dict:
    """The resume state of a run folder, or a one-line error."""
    path = Path(run) / "state.pt"
    if not path.is_file():
        raise DynamicDetError(f"{run}: no resume state (state.pt) in this run folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise DynamicDetError(f"{path}: damaged resume state; restart the run or use last.pt with --init") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise DynamicDetError(f"{path}: not a dynamicdet run state")
    return state


def _write_metrics(run: Path, record: dict) -> None:
    """Append one line by rewriting the (small) file atomically: a kill never leaves half a line."""
    path = run / "metrics.jsonl"
    write_text(path, "".join(line + "\n" for line in _metric_lines(path)) + json.dumps(record) + "\n")


@contextmanager
def held_run_folder(run: Path):
    """Hold the run folder while training writes it: a second training into the same folder is
    refused at once instead of interleaving its files with the first's. Under torchrun rank 0
    holds it (the only writer). A folder this call created and nothing wrote is removed again."""
    if not is_rank_zero():
        yield
        return
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    try:
        with ExitStack() as held:
            try:
                held.enter_context(locked(run, wait=False))
            except BlockingIOError:
                raise DynamicDetError(f"{run} is being written by another train-detectors; wait for it to "
                                      "finish, or choose another --out") from None
            yield
    finally:
        if created and run.is_dir() and not any(run.iterdir()):
            run.rmdir()  # nothing was written: leave no empty folder behind


def holds_a_run(run: Path) -> bool:
    """Whether `run` holds something a new run would destroy: a checkpoint, a resume state, or an
    epoch's metrics. A run stopped before its first epoch ended left only its start lines in
    metrics.jsonl; starting again replaces them, as that run's message promises."""
    if any((run / name).exists() for name in RUN_FILES if name != "metrics.jsonl"):
        return True
    for line in _metric_lines(run / "metrics.jsonl"):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return True  # not ours to judge: keep it
        if not isinstance(record, dict) or "event" not in record:
            return True
    return False


def _metric_lines(path: Path) -> list[str]:
    """The whole JSON lines of a metrics file; a torn last line (an older, appending version) is left out."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        lines = lines[:-1]
    return lines


def start_line(device: torch.device, env: Dist, cfg, steps_per_epoch: int, amp: bool, start_epoch: int) -> str:
    """Where and how a run trains, in one line: the device (with --device auto the user did
    not name it), processes, batch, precision, and the epochs ahead."""
    threads = torch.get_num_threads()
    each = " each" if env.enabled else ""
    where = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" \
        else f"cpu ({threads} thread{'s' * (threads != 1)}{each})"
    processes = f", {env.world_size} processes" if env.enabled else ""
    per = f" ({process_batch_size(cfg.batch_size, env)} per process)" if env.enabled else ""
    precision = str(amp_dtype(device)).removeprefix("torch.") if amp else "float32"
    ahead = f"epochs {start_epoch + 1}-{cfg.epochs}" if start_epoch else f"{cfg.epochs} epoch(s)"
    return (f"training on {where}{processes}: batch {cfg.batch_size}{per}, {precision}, {ahead} of "
            f"{steps_per_epoch} steps")


def _trim_metrics(run: Path, epochs_done: int) -> None:
    """On resume: drop lines of epochs after the resume state's (written just before a kill)."""
    path = run / "metrics.jsonl"
    lines = _metric_lines(path)
    kept = [line for line in lines if json.loads(line).get("epoch", 0) <= epochs_done]
    if path.is_file() and kept != path.read_text(encoding="utf-8", errors="replace").splitlines():
        write_text(path, "".join(line + "\n" for line in kept))


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM during training; says which epoch was running, how many are
    saved in state.pt, and which signal stopped it."""

    def __init__(self, run: Path, epoch: int, epochs_done: int, signum: int = signal.SIGINT):
        super().__init__(run, epoch, epochs_done, signum)
        self.run, self.epoch, self.epochs_done, self.signum = run, epoch, epochs_done, signum


@contextmanager
def _interrupted(run: Path, current_epoch, saved_epochs):
    """Ctrl-C, or SIGTERM (docker stop, a scheduler's preemption, torchrun stopping its
    processes), as one TrainingInterrupted: the epoch running and `saved_epochs()`, the epochs
    state.pt holds. SIGTERM is caught only in the main thread, and its handler is put back after."""
    received = [signal.SIGINT]

    def on_term(signum, frame):
        received[0] = signum
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        yield
    except KeyboardInterrupt as err:
        if isinstance(err, TrainingInterrupted):
            raise
        raise TrainingInterrupted(run, current_epoch(), saved_epochs(), received[0]) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, before)


@dataclass
class TrainResult:
    run: Path
    epochs: int
    complete: bool
    best_metric: float | None
    last_val: dict | None
    history: list[dict]


def train_detectors(recipe: Recipe, train_set: CocoDataset, val_set: CocoDataset | None, run: Path,
                    device_name: str = "cpu", amp: bool = False, resume: bool = False,
                    init: str | None = None, max_steps: int | None = None, show_progress: bool = True,
                    on_epoch=None, force: bool = False, state: dict | None = None, on_note=None,
                    on_start=None) -> TrainResult:
    """Train both detectors jointly; write the run folder; return what happened.

    `state`: with `resume`, the run's state as load_run_state read it, if the caller has
    already (the CLI reads the recipe from it first); None: read here.

    `on_epoch(record)` is called on rank 0 after each epoch (the CLI prints its table);
    `on_note(text)` on rank 0 before the first, for each of schedule_notes (also in metrics.jsonl);
    `on_start(text)` on rank 0 once, with start_line's account of where and how the run trains
    (printed, not kept: metrics.jsonl holds the epochs and the notes).
    A fresh run starts from `init` (a file or torchvision:NAME) or else the recipe's
    model.backbone.weights (starting_weights.initialise); a resumed run from its state.
    """
    env, device = init_distributed(device_name)
    run = Path(run)
    state = (state if state is not None else load_run_state(run)) if resume else None
    if state is not None:
        recipe = recipe_from_dict(state["recipe"])
        if state["epoch"] >= recipe.train.epochs:
            raise DynamicDetError(f"{run} finished its {recipe.train.epochs} epochs: nothing to resume (best.pt and "
                                  f"last.pt hold it); to train on from it, start a new run with --init {run}/last.pt")
        if list(state["classes"]) != list(train_set.classes):
            raise DynamicDetError(f"{run}: the run was trained on classes {state['classes'][:5]}..., "
                                  f"the data has {train_set.classes[:5]}...")
    elif not force and holds_a_run(run):
        held = ", ".join(name for name in RUN_FILES if (run / name).exists())
        raise DynamicDetError(f"{run} already holds a run ({held}); continue it with --resume, replace it with "
                              "--force, or choose another --out")
    problem = class_mismatch(val_set.classes, train_set.classes, "validation data", "training data") \
        if val_set is not None else None
    if problem:  # its AP would score labels as other categories, or stop the run at its first evaluation
        raise DynamicDetError(problem)
    recipe = with_overrides(recipe, [f"model.num_classes={train_set.num_classes}"])
    for name, ds in (("training", train_set), ("validation", val_set)):
        if ds is not None and needs_masks(recipe.model.family) and not ds.masks:
            raise DynamicDetError(f"the {name} data was opened without instance masks, but model.family "
                                  f"{recipe.model.family} trains on them: open it with masks=True")
    cfg = recipe.train
    recipe_data = recipe_to_dict(recipe)
    router_ids: list[int] = []
    if cfg.router_holdout > 0:
        kept, router_ids = train_set.split_ids(cfg.router_holdout, cfg.seed)
        if not kept or not router_ids:
            raise DynamicDetError(f"train.router_holdout={cfg.router_holdout} of {len(train_set)} training images "
                                  "leaves no images on one side; use more images or another share")
        train_set = train_set.restricted_to(kept)
    # Images larger than the model's input are read at its size: the loader never augments (nor
    # ships to the device) pixels the model's resize would throw away.
    train_set = train_set.fit_to(*recipe.model.transform.largest_training_input())

    seed_everything(cfg.seed)
    model = build_model(recipe.model, num_classes=train_set.num_classes)
    model.router.requires_grad_(False)  # step 1 trains the detectors only
    init_note = initialise(model, init, recipe.model.backbone) if state is None else None
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = len(_train_loader(train_set, cfg, env, 0))
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype(device) == torch.float16)
    ema = WeightAverage(model, cfg.ema_decay, cfg.ema_ramp, total_steps) if cfg.ema_decay > 0 else None
    start_epoch, step, best = 0, 0, -1.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_scaler(scaler, state["scaler"])
        start_epoch, step, best = state["epoch"], state["step"], state["best"]
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        elif ema is not None:  # a state from a run without the average: start it from here
            ema.update_parameters(model)
    saved = model if ema is None else ema.module  # what is evaluated and saved
    train_model = model
    if env.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    if env.is_main:
        run.mkdir(parents=True, exist_ok=True)
        write_text(run / "recipe.yaml", yaml.safe_dump(recipe_data, sort_keys=False))
        if state is not None:
            _trim_metrics(run, start_epoch)
        else:  # a new run (--force) replaces the old one's files, so none outlives it half-replaced
            for name in (*RUN_FILES, PLOT_NAME):
                (run / name).unlink(missing_ok=True)
            for events in run.glob("events.out.tfevents.*"):  # TensorBoard would show both runs as one
                events.unlink(missing_ok=True)
        if on_start is not None:
            on_start(start_line(device, env, cfg, steps_per_epoch, amp, start_epoch))
        if init_note:
            _write_metrics(run, {"event": "init", "note": init_note})
        for note in schedule_notes(cfg, total_steps) if state is None else []:
            _write_metrics(run, {"event": "schedule", "note": note})
            if on_note is not None:
                on_note(note)

    history, last_val, complete = [], None, True
    epoch = epochs_saved = start_epoch  # epochs_saved: what state.pt holds, for an interruption's account
    plot = RunPlot(run)
    with progress_bar(show_progress and env.is_main) as bar, _interrupted(run, lambda: epoch, lambda: epochs_saved), \
            TensorBoardLog(run, start_epoch) as board:
        for epoch in range(start_epoch, cfg.epochs):
            seed_everything(cfg.seed * 1000 + epoch + env.rank * RANK_SEED_STRIDE)  # augmentation in the main process
            loader = _train_loader(_augmented(train_set, cfg, epoch), cfg, env, epoch,
                                   pin_memory=device.type == "cuda")
            stats = train_one_epoch(train_model, loader, optimizer, scheduler, scaler, device, epoch, env,
                                    amp=amp, grad_clip=cfg.grad_clip, bar=bar, max_steps=max_steps,
                                    first_step=step, ema=ema)
            step += stats["steps"]
            if not stats["complete"]:
                complete = False
                break
            record = {"epoch": epoch + 1, "step": step, **{k: v for k, v in stats.items() if k != "complete"}}
            _stop_if_diverged(saved, run, epoch)  # the average of a diverged model is not finite either
            last_epoch = epoch + 1 == cfg.epochs
            if env.is_main and val_set is not None and ((epoch + 1) % cfg.eval_every == 0 or last_epoch):
                with evaluation_threads(env, device):
                    last_val = evaluate_both(saved, val_set, device, batch_size=cfg.batch_size,
                                             show_progress=False)
                record["val"] = last_val
            if env.is_main:
                metric = (last_val["d1"]["AP"] + last_val["d2"]["AP"]) / 2 if "val" in record else None
                ckpt = replace(new_checkpoint(recipe, train_set.classes, train_set.cat_ids, saved),
                               training=TrainingRecord(epoch + 1, step, str(run), _flat_val(record.get("val")),
                                                       tuple(router_ids)))
                save_checkpoint(ckpt, run / "last.pt")
                # best.pt: the best evaluated epoch; until an epoch is evaluated (or without
                # validation data), the last one
                if (metric is None and best < 0) or (metric is not None and metric >= best):
                    best = metric if metric is not None else best
                    save_checkpoint(ckpt, run / "best.pt")
                # The logs before state.pt, the epoch's commit point: a resume from an earlier state
                # trims metrics.jsonl past its epoch and TensorBoard purges the steps after it.
                _write_metrics(run, record)
                plot.update()  # from the whole file: a resumed run's plot shows the whole run
                board.log(record)
                _save_state(run / "state.pt", model, optimizer, scheduler, scaler, epoch + 1, step, best,
                            recipe_data, train_set.classes, train_set.cat_ids, ema)
                epochs_saved = epoch + 1
                if on_epoch is not None:
                    on_epoch(record)
            history.append(record)
            if env.enabled:
                dist.barrier()
    return TrainResult(run, start_epoch + len(history), complete, best if best >= 0 else None, last_val, history)


def _stop_if_diverged(model, run: Path, epoch: int) -> None:
    """Weights that went NaN or inf with a finite loss (the last step of an epoch) are never
    saved: the run stops here, and last.pt keeps the last finite epoch."""
    bad = first_non_finite({"detector": model.state_dict()})
    if bad is not None:
        kept = f"{run}/last.pt keeps epoch {epoch}" if epoch else "no checkpoint was saved"
        raise DynamicDetError(f"training diverged in epoch {epoch + 1}: weight {bad[9:-1]} is NaN or infinite; "
                              f"{kept} (lower train.lr or set train.grad_clip)")


def _flat_val(val: dict | None) -> dict:
    if not val:
        return {}
    return {f"{d}_{k}": v for d in ("d1", "d2") for k, v in val[d].items() if k in ("AP", "AP50", "mask_AP")}
