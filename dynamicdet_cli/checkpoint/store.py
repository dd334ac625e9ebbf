"""The one checkpoint format every subcommand reads and writes.

A checkpoint is one file holding a plain dict of tensors and primitives (so it loads with
`torch.load(..., weights_only=True)` and nothing executes on load):

    format            "dynamicdet"
    version           int, FORMAT_VERSION when written; newer files are refused
    recipe            the recipe as plain nested data (recipe_to_dict)
    classes           list[str]: label l (1-based) is classes[l - 1]
    category_ids      list[int]: label l is COCO category id category_ids[l - 1]
    detector          state dict of everything but the router
    router            state dict of the router, or None until train-router has run
    router_stats      dict of floats/ints/strings: Delta (median L1 - L2), shares, correlations
    training          None for fresh weights; else dict(epochs, best_metric, run, ..., router_image_ids:
                      the training images kept out of step 1 for the router's targets)
    validation        None, or dict(image_ids list[int], scores Tensor[N], dataset str, images str):
                      the router's difficulty scores on the validation set, its annotation file
                      (for YOLO-format data its label folder) and image folder (no `images` in
                      files written before it was recorded)
    latency           list of dict(device, threads, batch_size, image_size, dtype, malloc, easy_ms,
                      hard_ms, curve_ms, images, repeats, spread_pct, time): one per regime
                      (regime.py); dtype, malloc, curve_ms, images, repeats and spread_pct are
                      absent from older files (dtype then float32, malloc "default" (allocator.py);
                      spread_pct is None with one pass)
    operating_points  dict name -> dict(tau, hard_ratio, target_ms, expected_ms, and with a
                      latency target the regime keys of its measurement)
    provenance        dict(package, torch, torchvision, created, command)
    checksum          dict(algorithm "crc32", value int): over every tensor's bytes, dtype and
                      shape and every other field (checksum.py); absent in files written
                      by earlier versions, which still load with a warning

In code the checkpoint is a `types.Checkpoint` (frozen, typed): load_checkpoint parses the
file into one after checking it, save_checkpoint writes its to_dict().

Resume state (optimizer, scheduler, epoch, RNG) lives in the run folder, not here.
Writes are atomic: a temporary file in the same folder, then a rename. Loading checks the
checksum and the type of every field (one line naming the first bad field), and the model
built from a checkpoint checks every tensor's shape against the recipe and classes.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import pickle
import sys
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch
import torchvision

from dynamicdet_cli import __version__
from dynamicdet_cli.core import allocator
from dynamicdet_cli.core.atomic import atomic_path, locked
from dynamicdet_cli.config.recipe import Recipe
from dynamicdet_cli.core.checksum import content_checksum
from dynamicdet_cli.core.errors import DynamicDetError, missing_file, warn
from dynamicdet_cli.checkpoint.types import FORMAT_NAME, FORMAT_VERSION, Checkpoint
REQUIRED_KEYS = ("recipe", "classes", "category_ids", "detector", "router", "router_stats", "training",
                 "validation", "latency", "operating_points", "provenance")


def provenance() -> dict:
    return {
        "package": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["dynamicdet", *sys.argv[1:]])[:500],
    }


def new_checkpoint(recipe: Recipe, classes: list[str], category_ids: list[int], model: torch.nn.Module) -> Checkpoint:
    """A checkpoint for `model` with nothing measured or trained yet."""
    return Checkpoint(recipe=recipe, classes=tuple(str(c) for c in classes),
                      category_ids=tuple(int(c) for c in category_ids), detector=detector_state(model),
                      provenance=provenance())


def _cpu_state(module: torch.nn.Module, prefix: str = "") -> dict:
    return {k[len(prefix):]: v.detach().cpu().clone() for k, v in module.state_dict().items() if k.startswith(prefix)}


def detector_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The detector weights (everything but the router) of `model`, on the CPU."""
    return {k: v for k, v in _cpu_state(model).items() if not k.startswith("router.")}


def router_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return _cpu_state(model.router)


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write atomically: nothing at `path` is lost if the write fails half-way."""
    return write_checkpoint_dict(checkpoint.to_dict(), path)


def write_checkpoint_dict(ckpt: dict, path: str | Path) -> Path:
    """Write a checkpoint's plain dict (Checkpoint.to_dict) atomically, with the save time and
    checksum added. Tests write damaged dicts through it; code saves a Checkpoint."""
    path = Path(path)
    ckpt = dict(ckpt, provenance=dict(ckpt.get("provenance") or {}, saved=provenance()["created"]))
    ckpt.pop("checksum", None)
    ckpt["checksum"] = content_checksum(ckpt)
    with atomic_path(path) as tmp:
        try:
            torch.save(ckpt, tmp)
        except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) so
            reason = " ".join(str(err).replace(str(tmp), str(path)).split())[:160]  # the user knows path, not tmp
            raise DynamicDetError(f"{path}: could not be written ({reason}); check the free space "
                                  "on its device") from None
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read, check and parse a dynamicdet checkpoint; every failure is a one-line DynamicDetError."""
    return Checkpoint.from_dict(read_checkpoint_dict(path))


def read_checkpoint_dict(path: str | Path) -> dict:
    """The checked plain dict a checkpoint file holds (what load_checkpoint parses)."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        raise DynamicDetError(f"{path}: truncated or corrupt checkpoint (not a torch zip archive)")
    try:
        # mmap: the tensors are read once, by the checksum, instead of copied by the load too
        with warnings.catch_warnings():  # torch warns of a foreign pickle's protocol, then fails: the error says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise DynamicDetError(
            f"{path}: refused: the file carries pickled Python objects, not plain tensors and data "
            "(it is not a dynamicdet checkpoint, or it was tampered with)") from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError):
        raise DynamicDetError(f"{path}: truncated or corrupt checkpoint (could not be read)") from None
    if isinstance(ckpt, dict) and {"optimizer", "epoch", "model"} <= set(ckpt):
        raise DynamicDetError(f"{path}: a training run's resume state, not a checkpoint: use best.pt or last.pt "
                              "beside it")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_NAME:
        raise DynamicDetError(f"{path}: not a dynamicdet checkpoint (build one with `dynamicdet build`)")
    version = ckpt.get("version")
    if not isinstance(version, int):
        raise DynamicDetError(f"{path}: dynamicdet checkpoint without a format version")
    if version > FORMAT_VERSION:
        raise DynamicDetError(
            f"{path}: checkpoint format version {version} is newer than this dynamicdet reads "
            f"({FORMAT_VERSION}); upgrade dynamicdet")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise DynamicDetError(f"{path}: damaged dynamicdet checkpoint, missing {', '.join(missing)}")
    _verify_checksum(ckpt, path)
    check_fields(ckpt, path)
    bad = first_non_finite(ckpt)
    if bad is not None:
        raise DynamicDetError(
            f"{path}: field {bad} holds NaN or infinite weights (the run that saved it diverged; its checksum "
            "is right, so the file was saved so): use an earlier checkpoint, or train again with a lower train.lr")
    return ckpt


def first_non_finite(ckpt: Checkpoint | dict) -> str | None:
    """The first weight (as `detector[key]` / `router[key]`) holding NaN or inf, or None.

    One summing pass over every floating tensor, after the checksum has read the same pages;
    bench/bench_finite_check.py measures what it adds to a load."""
    states = (ckpt.get("detector"), ckpt.get("router")) if isinstance(ckpt, dict) else (ckpt.detector, ckpt.router)
    for field, state in zip(("detector", "router"), states):
        for key, value in (state or {}).items():
            if value.is_floating_point() and not _finite(value):
                return f"{field}[{key}]"
    return None


def _finite(tensor: torch.Tensor) -> bool:
    # A finite sum proves every element finite (a NaN or inf makes the sum NaN or inf); the
    # sum runs at memory speed, far faster than isfinite().all() (docs/benchmarks.md). Only a
    # sum that overflowed (or bad weights) takes the exact check.
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _verify_checksum(ckpt: dict, path: Path) -> None:
    stored = ckpt.pop("checksum", None)
    if stored is None:
        warn(f"{path} has no checksum (written by an earlier dynamicdet), so damage to it cannot be "
             "detected; writing it again (train-router or calibrate) adds one")
        return
    if not isinstance(stored, dict) or "value" not in stored:
        raise DynamicDetError(f"{path}: damaged checkpoint: field checksum is not a checksum record")
    if content_checksum(ckpt, stored.get("algorithm")) != stored:
        raise DynamicDetError(f"{path}: damaged checkpoint: its content does not match the checksum written "
                              "with it (the file changed after it was saved); restore it or write it again")


# ----------------------------------------------------------------------------- field checks

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _tensors(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in value.items())


def check_fields(ckpt: dict, path: str | Path = "checkpoint") -> None:
    """Raise a one-line DynamicDetError naming the first field whose type or value is wrong."""
    def bad(field: str, expected: str):
        raise DynamicDetError(f"{path}: damaged checkpoint: field {field} {expected}")

    from dynamicdet_cli.config.recipe import recipe_from_dict
    if not isinstance(ckpt["recipe"], dict):
        bad("recipe", "is not a mapping")
    try:
        recipe_from_dict(ckpt["recipe"])
    except DynamicDetError as err:
        bad("recipe", f"is not a valid recipe ({err})")
    classes, cat_ids = ckpt["classes"], ckpt["category_ids"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        bad("classes", "is not a non-empty list of class names")
    if len(set(classes)) != len(classes):
        bad("classes", "names a class twice")
    if not isinstance(cat_ids, list) or not all(_is_int(c) for c in cat_ids) or len(cat_ids) != len(classes):
        bad("category_ids", f"is not a list of {len(classes)} integers (one per class)")
    if len(set(cat_ids)) != len(cat_ids):
        bad("category_ids", "names a category twice")
    if not _tensors(ckpt["detector"]) or not ckpt["detector"]:
        bad("detector", "is not a state dict of tensors")
    if ckpt["router"] is not None and not _tensors(ckpt["router"]):
        bad("router", "is neither empty (None) nor a state dict of tensors")
    stats = ckpt["router_stats"]
    if not isinstance(stats, dict) or not all(v is None or isinstance(v, (int, float, str)) for v in stats.values()):
        bad("router_stats", "is not a mapping of numbers")
    training = ckpt["training"]
    if training is not None and not (isinstance(training, dict) and isinstance(training.get("val", {}), dict)
                                     and all(_is_number(v) for v in training.get("val", {}).values())):
        bad("training", "is not a record of the training (epochs, steps, val metrics)")
    held = (training or {}).get("router_image_ids", [])
    if not (isinstance(held, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in held)):
        bad("training.router_image_ids", "is not a list of image ids (integers)")
    _check_validation(ckpt["validation"], bad)
    _check_latency(ckpt["latency"], bad)
    _check_points(ckpt["operating_points"], bad)
    if not isinstance(ckpt["provenance"], dict):
        bad("provenance", "is not a mapping")


def _check_validation(val, bad) -> None:
    if val is None:
        return
    if not isinstance(val, dict) or not isinstance(val.get("image_ids"), list) or not all(
            _is_int(i) for i in val["image_ids"]):
        bad("validation", "is not a record of image_ids (integers) and scores")
    scores = val.get("scores")
    if not (torch.is_tensor(scores) and scores.is_floating_point() and scores.ndim == 1
            and scores.numel() == len(val["image_ids"])):
        bad("validation.scores", f"is not a 1-D float tensor of {len(val['image_ids'])} scores (one per image id)")
    if scores.numel() and not bool(torch.isfinite(scores).all()):
        bad("validation.scores", "holds non-finite scores")


def _check_latency(latency, bad) -> None:
    if not isinstance(latency, list):
        bad("latency", "is not a list of measurements")
    for i, m in enumerate(latency):
        ok = (isinstance(m, dict) and isinstance(m.get("device"), str)
              and all(_is_int(m.get(k)) and m[k] > 0 for k in ("threads", "batch_size", "image_size"))
              and all(_is_number(m.get(k)) and m[k] > 0 for k in ("easy_ms", "hard_ms"))
              and m.get("malloc") in (None, allocator.DEFAULT, allocator.KEEP_FREED)
              and isinstance(m.get("curve_ms", []), list)
              and all(isinstance(p, list) and len(p) == 2 and all(_is_number(x) for x in p)
                      for p in m.get("curve_ms", [])))
        if not ok:
            bad(f"latency[{i}]", "is not a measurement (device, threads, batch_size, image_size, easy_ms, hard_ms; "
                                 "malloc, if given, default or keep-freed)")


def _check_points(points, bad) -> None:
    if not isinstance(points, dict):
        bad("operating_points", "is not a mapping of names to operating points")
    for name, p in points.items():
        ok = (isinstance(name, str) and isinstance(p, dict)
              and all(_is_number(p.get(k)) and 0.0 <= p[k] <= 1.0 for k in ("tau", "hard_ratio"))
              and all(p.get(k) is None or (_is_number(p[k]) and p[k] > 0) for k in ("target_ms", "expected_ms")))
        if not ok:
            bad(f"operating_points[{name!r}]", "is not an operating point (tau and hard_ratio in [0, 1], "
                                               "target_ms and expected_ms positive or empty)")


def model_from_checkpoint(ckpt: Checkpoint, device: str | torch.device = "cpu"):
    """Build the model the checkpoint describes and load its weights (router if stored)."""
    from dynamicdet_cli.model.build import build_model

    model = build_model(ckpt.recipe.model, num_classes=ckpt.num_classes)
    state = dict(ckpt.detector)
    if ckpt.router is not None:
        state.update({f"router.{k}": v for k, v in ckpt.router.items()})
    expected = model.state_dict()
    for key, value in state.items():
        if key in expected and value.shape != expected[key].shape:
            field = f"router[{key[7:]}]" if key.startswith("router.") else f"detector[{key}]"
            raise DynamicDetError(
                f"checkpoint field {field} has shape {list(value.shape)}, but its recipe and "
                f"{ckpt.num_classes} classes need {list(expected[key].shape)}; the file is damaged")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k.startswith("router.") and ckpt.router is None)]
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise DynamicDetError(f"checkpoint weights do not match its recipe (e.g. {example}); the file is damaged")
    return model.to(device)


@contextmanager
def held_for_update(checkpoint: str | Path, output: str | Path | None = None):
    """Hold a checkpoint that a command rewrites in place (`output` None or the same file) from
    its read to its write: two commands updating one file then run one after the other, and
    neither update is lost. Writing elsewhere holds nothing."""
    checkpoint = Path(checkpoint)
    output = Path(output) if output is not None else None
    if not checkpoint.is_file() or (output is not None and not (output.exists() and os.path.samefile(output, checkpoint))):
        yield
        return
    with locked(checkpoint, on_wait=lambda: warn(f"{checkpoint} is being updated by another command; "
                                                    "waiting for it to finish")):
        yield
