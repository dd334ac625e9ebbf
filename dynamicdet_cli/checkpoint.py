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
    training          None for fresh weights; else dict(epochs, best_metric, run, ...)
    validation        None, or dict(image_ids list[int], scores Tensor[N], dataset str, images str):
                      the router's difficulty scores on the validation set, its annotation file
                      and image folder (no `images` in files written before it was recorded)
    latency           list of dict(device, threads, batch_size, image_size, dtype, easy_ms, hard_ms,
                      images, repeats, time): one per regime (regime.py); dtype, images and
                      repeats are absent from older files (dtype then float32)
    operating_points  dict name -> dict(tau, hard_ratio, target_ms, expected_ms, and with a
                      latency target the regime keys of its measurement)
    provenance        dict(package, torch, torchvision, created, command)

Resume state (optimizer, scheduler, epoch, RNG) lives in the run folder, not here.
Writes are atomic: a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import datetime as _dt
import pickle
import sys
import zipfile
from pathlib import Path

import torch
import torchvision

from dynamicdet_cli import __version__
from dynamicdet_cli.atomic import atomic_path
from dynamicdet_cli.errors import DynamicDetError

FORMAT_NAME = "dynamicdet"
FORMAT_VERSION = 1
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


def new_checkpoint(recipe: dict, classes: list[str], category_ids: list[int], model: torch.nn.Module) -> dict:
    """A checkpoint for `model` with nothing measured or trained yet."""
    ckpt = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "recipe": recipe,
        "classes": [str(c) for c in classes],
        "category_ids": [int(c) for c in category_ids],
        "detector": None,
        "router": None,
        "router_stats": {},
        "training": None,
        "validation": None,
        "latency": [],
        "operating_points": {},
        "provenance": provenance(),
    }
    store_detector(ckpt, model)
    return ckpt


def _cpu_state(module: torch.nn.Module, prefix: str = "") -> dict:
    return {k[len(prefix):]: v.detach().cpu().clone() for k, v in module.state_dict().items() if k.startswith(prefix)}


def store_detector(ckpt: dict, model: torch.nn.Module) -> None:
    """Copy the detector weights (everything but the router) of `model` into `ckpt`."""
    ckpt["detector"] = {k: v for k, v in _cpu_state(model).items() if not k.startswith("router.")}


def store_router(ckpt: dict, model: torch.nn.Module) -> None:
    ckpt["router"] = _cpu_state(model.router)


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """Write atomically: nothing at `path` is lost if the write fails half-way."""
    path = Path(path)
    ckpt = dict(ckpt, provenance=dict(ckpt.get("provenance") or {}, saved=provenance()["created"]))
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read and check a dynamicdet checkpoint; every failure is a one-line DynamicDetError."""
    path = Path(path)
    if not path.is_file():
        raise DynamicDetError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        raise DynamicDetError(f"{path}: truncated or corrupt checkpoint (not a torch zip archive)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DynamicDetError(
            f"{path}: refused: the file carries pickled Python objects, not plain tensors and data "
            "(it is not a dynamicdet checkpoint, or it was tampered with)") from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError):
        raise DynamicDetError(f"{path}: truncated or corrupt checkpoint (could not be read)") from None
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
    return ckpt


def model_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu"):
    """Build the model the checkpoint describes and load its weights (router if stored)."""
    from dynamicdet_cli.model.build import build_model
    from dynamicdet_cli.recipe import recipe_from_dict

    recipe = recipe_from_dict(ckpt["recipe"])
    model = build_model(recipe.model, num_classes=len(ckpt["classes"]))
    state = dict(ckpt["detector"])
    if ckpt["router"] is not None:
        state.update({f"router.{k}": v for k, v in ckpt["router"].items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k.startswith("router.") and ckpt["router"] is None)]
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise DynamicDetError(f"checkpoint weights do not match its recipe (e.g. {example}); the file is damaged")
    return model.to(device)
