"""The checkpoint as typed, frozen data: what every module reads instead of string keys.

`store.load_checkpoint` checks the file's fields once (store.check_fields) and parses them
into a `Checkpoint`; `store.save_checkpoint` writes `Checkpoint.to_dict()`, the plain dict of
tensors and primitives described in store.py's docstring (the on-disk format is unchanged,
so files written before these types load as they did). A change is a new value:
`dataclasses.replace(ckpt, operating_points=...)`, never an edit in place.

Defaults live in one place: a field absent from an older file takes the default written
here (a latency record's dtype "float32" and malloc "default"; a recipe key the recipe's own
default), never a second default where the field is read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Mapping

import torch

from dynamicdet_cli.config.recipe import Recipe, recipe_from_dict, recipe_to_dict
from dynamicdet_cli.core.allocator import DEFAULT as DEFAULT_MALLOC

FORMAT_NAME = "dynamicdet"
FORMAT_VERSION = 1

# The keys that say which regime (device, batch, input size, threads, dtype, malloc) a
# latency was measured in; a latency record has them all, an operating point with a target.
REGIME_KEYS = ("device", "batch_size", "image_size", "threads", "dtype", "malloc")


@dataclass(frozen=True)
class LatencyRecord:
    """Both routes timed in one regime (speed/latency.py measure_routes).

    easy_ms / hard_ms: mean milliseconds per image of each route at `batch_size`; curve_ms:
    (share routed hard, ms per image) of mixed batches, empty when not timed; images: where
    the timed images came from; repeats: timed passes per route; spread_pct: how far the
    passes disagreed ((max - min) / median, %), None with one pass; time: ISO-8601 UTC.
    """

    device: str
    batch_size: int
    image_size: int
    threads: int | None
    easy_ms: float
    hard_ms: float
    dtype: str = "float32"
    malloc: str = DEFAULT_MALLOC
    curve_ms: tuple[tuple[float, float], ...] = ()
    images: str | None = None
    repeats: int | None = None
    spread_pct: float | None = None
    time: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping) -> LatencyRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known and v is not None}
        values["curve_ms"] = tuple((float(k), float(ms)) for k, ms in d.get("curve_ms") or ())
        return cls(**values)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["curve_ms"] = [list(p) for p in self.curve_ms]
        return d


@dataclass(frozen=True)
class OperatingPoint:
    """A stored speed: route images with router score >= tau to the hard route.

    hard_ratio: the share of validation images at or above tau; target_ms / expected_ms: the
    latency target it was chosen for and the mean latency the stored measurement predicts
    (None when chosen by hard ratio or threshold); the regime fields (REGIME_KEYS) are those of
    that measurement, None when the point has no latency.
    """

    tau: float
    hard_ratio: float
    target_ms: float | None = None
    expected_ms: float | None = None
    device: str | None = None
    batch_size: int | None = None
    image_size: int | None = None
    threads: int | None = None
    dtype: str | None = None
    malloc: str | None = None

    @property
    def has_regime(self) -> bool:
        return self.device is not None and self.batch_size is not None and self.image_size is not None

    @classmethod
    def from_dict(cls, d: Mapping) -> OperatingPoint:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        d = {"tau": self.tau, "hard_ratio": self.hard_ratio, "target_ms": self.target_ms,
             "expected_ms": self.expected_ms}
        if self.has_regime:
            d.update({k: getattr(self, k) for k in REGIME_KEYS})
        return d


@dataclass(frozen=True)
class TrainingRecord:
    """What train-detectors did: epochs and optimiser steps run, the run folder, the
    validation metrics of the saved epoch (flat names such as d1_AP), and the training
    images kept out of step 1 for the router's targets."""

    epochs: int
    steps: int
    run: str
    val: Mapping[str, float] = field(default_factory=dict)
    router_image_ids: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping) -> TrainingRecord:
        return cls(int(d.get("epochs", 0)), int(d.get("steps", 0)), str(d.get("run", "")),
                   dict(d.get("val") or {}), tuple(d.get("router_image_ids") or ()))

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "steps": self.steps, "run": self.run, "val": dict(self.val),
                "router_image_ids": list(self.router_image_ids)}


@dataclass(frozen=True)
class ValidationScores:
    """The router's difficulty scores on the validation set: scores[i] is image image_ids[i]'s.
    dataset: the annotation file (for YOLO-format data the label folder); images: the image
    folder (None in files written before it was recorded)."""

    image_ids: tuple[int, ...]
    scores: torch.Tensor  # float[N]
    dataset: str | None = None
    images: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping) -> ValidationScores:
        return cls(tuple(int(i) for i in d["image_ids"]), d["scores"], d.get("dataset"), d.get("images"))

    def to_dict(self) -> dict:
        d = {"image_ids": list(self.image_ids), "scores": self.scores, "dataset": self.dataset}
        if self.images is not None:
            d["images"] = self.images
        return d


@dataclass(frozen=True)
class Checkpoint:
    """Everything a dynamicdet model file holds (see store.py for the file itself).

    recipe: the recipe the model was built from; classes[l - 1] / category_ids[l - 1]: name and
    COCO category id of label l; detector: state dict of everything but the router; router:
    the router's state dict, None until train-router has run; router_stats: train-router's
    summary figures (name -> number or text); training: None for fresh weights; validation:
    the router's scores on the validation set, None until train-router; latency: one record
    per regime timed; operating_points: name -> stored speed; provenance: package and torch
    versions, creation and save times, the command.
    """

    recipe: Recipe
    classes: tuple[str, ...]
    category_ids: tuple[int, ...]
    detector: Mapping[str, torch.Tensor]
    router: Mapping[str, torch.Tensor] | None = None
    router_stats: Mapping[str, float | int | str | None] = field(default_factory=dict)
    training: TrainingRecord | None = None
    validation: ValidationScores | None = None
    latency: tuple[LatencyRecord, ...] = ()
    operating_points: Mapping[str, OperatingPoint] = field(default_factory=dict)
    provenance: Mapping[str, str] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.recipe.model.family

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def default_point(self) -> str | None:
        """The stored point used when none is named: "default", else the only one, else None."""
        points = self.operating_points
        return "default" if "default" in points else next(iter(points)) if len(points) == 1 else None

    @classmethod
    def from_dict(cls, d: Mapping) -> Checkpoint:
        """Parse a dict whose fields store.check_fields has accepted."""
        return cls(
            recipe=recipe_from_dict(d["recipe"]),
            classes=tuple(d["classes"]),
            category_ids=tuple(int(c) for c in d["category_ids"]),
            detector=d["detector"],
            router=d["router"],
            router_stats=dict(d["router_stats"]),
            training=None if d["training"] is None else TrainingRecord.from_dict(d["training"]),
            validation=None if d["validation"] is None else ValidationScores.from_dict(d["validation"]),
            latency=tuple(LatencyRecord.from_dict(m) for m in d["latency"]),
            operating_points={name: OperatingPoint.from_dict(p) for name, p in d["operating_points"].items()},
            provenance=dict(d["provenance"]),
        )

    def to_dict(self) -> dict:
        """The plain dict store.save_checkpoint writes (tensors and primitives only)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "recipe": recipe_to_dict(self.recipe),
            "classes": list(self.classes),
            "category_ids": list(self.category_ids),
            "detector": dict(self.detector),
            "router": None if self.router is None else dict(self.router),
            "router_stats": dict(self.router_stats),
            "training": None if self.training is None else self.training.to_dict(),
            "validation": None if self.validation is None else self.validation.to_dict(),
            "latency": [m.to_dict() for m in self.latency],
            "operating_points": {name: p.to_dict() for name, p in self.operating_points.items()},
            "provenance": dict(self.provenance),
        }

