"""The Python API: what users do from code, and what the `dynamicdet` commands call.

    import dynamicdet_cli as dd

    model = dd.load("runs/demo/model.pt", device="cpu")
    outputs = model.predict(["a.jpg", pil_image, uint8_tensor], latency="40ms")
    outputs[0]["boxes"], outputs[0]["labels"], outputs[0]["scores"]    # torchvision's format
    outputs[0]["route"], outputs[0]["difficulty"]                      # which detector, and why
    model.calibrate(latency="50%", name="half")                         # stored in the checkpoint
    report = model.evaluate("data.yaml", point="half")                  # COCO AP, ms per image
    checkpoint, note = dd.api.build("dy-yolo-n")                        # a shipped recipe, by name
    run = dd.train_detectors("dy-yolo-n", "data.yaml", "runs/n")        # step 1, as train-detectors
    path, summary = dd.train_router(run.run / "best.pt", "data.yaml", "runs/n/model.pt")   # step 2

Choosing the speed (at most one; none: the stored "default" point, see speed/routing.py):
`latency` ("40ms", "0.04s", or "50%" of the way from the easy route's latency to the hard
one's; needs `calibrate` to have timed this run's regime: device, batch size, input size,
threads, dtype), `point` (a stored operating point, or "easy" / "hard"), `hard_ratio` (the
share of validation images routed hard) or `threshold` (tau). `hold=True` holds the latency
target over the images sent (speed/hold.py) instead of routing at one fixed threshold.

Loading a model for inference or training applies the package's malloc setting
(core/allocator.py; DYNAMICDET_MALLOC=default opts out); importing the package does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from dynamicdet_cli.checkpoint.store import held_for_update, load_checkpoint, model_from_checkpoint, save_checkpoint
from dynamicdet_cli.checkpoint.types import Checkpoint
from dynamicdet_cli.config.recipe import Recipe
from dynamicdet_cli.core import allocator
from dynamicdet_cli.core.atomic import write_json
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.data.coco import BadImage, CocoDataset, class_mismatch, load_rgb, pil_to_rgb
from dynamicdet_cli.data.open import open_dataset, resolve_data
from dynamicdet_cli.evaluation import evaluate as evaluation
from dynamicdet_cli.model.build import needs_masks
from dynamicdet_cli.predict import check_options, check_route, keep_confident, to_model_inputs
from dynamicdet_cli.speed.batcher import RouteBatcher, route_stream
from dynamicdet_cli.speed.hold import HoldReport, LatencyHold
from dynamicdet_cli.speed.latency import Calibration, calibrate_checkpoint
from dynamicdet_cli.speed.regime import Regime, find_latency
from dynamicdet_cli.speed.routing import hold_target, resolve_route
from dynamicdet_cli.train.distributed import resolve_device
from dynamicdet_cli.train.loop import TrainResult

ImageInput = Any  # a path (str or Path), a PIL image, or a 3,H,W tensor (uint8, or float in [0, 1])


@dataclass(frozen=True)
class Route:
    """How the images of a run are routed: `route` is "easy", "hard" or the threshold tau;
    `text` says how it was chosen; `hold` is the controller when a latency target is held."""

    route: str | float
    text: str
    hold: LatencyHold | None = None


@dataclass(frozen=True)
class EvaluationReport:
    """One operating point evaluated (`evaluation`) or the accuracy-latency sweep (`sweep_rows`,
    `written`, `measured`); `out` holds the files written."""

    out: Path
    route_text: str = ""
    evaluation: evaluation.Evaluation | None = None
    sweep_rows: list[dict] | None = None
    written: dict | None = None
    measured: Any = None
    missing_latency: str | None = None


def build(recipe: str | Path | Recipe, *, classes: str | Sequence[str] | None = None,
          backbone_weights: str | None = None, overrides: Sequence[str] = ()) -> tuple[Checkpoint, str]:
    """A checkpoint of the model a recipe describes (`dynamicdet build`): backbones from
    `backbone_weights` (default: the recipe's model.backbone.weights; "" = fresh), the rest
    fresh. `classes`: names, or one comma-separated string (default: class1..classN of the
    recipe's num_classes). Returns (checkpoint, what was loaded into the backbones or "")."""
    from dynamicdet_cli.checkpoint.store import new_checkpoint
    from dynamicdet_cli.config.recipe import load_recipe, with_overrides
    from dynamicdet_cli.model.build import build_model
    from dynamicdet_cli.train.starting_weights import load_backbone_weights

    overrides = _override_list(overrides)
    cfg = with_overrides(recipe, overrides) if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    names = _class_names(classes) if classes is not None else None
    num_classes = len(names) if names else cfg.model.num_classes
    names = names or [f"class{i}" for i in range(1, num_classes + 1)]
    model = build_model(cfg.model, num_classes)
    spec = backbone_weights if backbone_weights is not None else cfg.model.backbone.weights
    note = load_backbone_weights(model, spec, cfg.model.backbone) if spec else ""
    return new_checkpoint(cfg, names, list(range(1, num_classes + 1)), model), note


def train_detectors(recipe: str | Path | Recipe | None = None, data: str | Path | None = None,
                    out: str | Path = "runs/train", *, overrides: Sequence[str] = (), epochs: int | None = None,
                    batch_size: int | None = None, lr: float | None = None, image_size: int | None = None,
                    router_holdout: float | None = None, resume: bool = False, force: bool = False,
                    init: str | None = None, device: str = "auto", amp: bool = False,
                    skip_bad_images: bool = False, max_steps: int | None = None, progress: bool = True,
                    train_ann: Path | None = None, train_images: Path | None = None,
                    val_ann: Path | None = None, val_images: Path | None = None,
                    on_epoch=None, on_note=None, on_start=None) -> TrainResult:
    """Step 1, as `dynamicdet train-detectors`: both detectors jointly into the run folder `out`
    (best.pt, last.pt, metrics.jsonl, state.pt); returns what happened (`TrainResult`: the run
    folder, epochs done, whether it completed, the best mean AP, the last validation).

    `recipe`: a YAML path, a shipped recipe's name or a Recipe; `data`: a data YAML (COCO or YOLO
    format), or the four split paths. `overrides` are `--set KEY=VALUE` strings; `epochs`,
    `batch_size`, `lr`, `image_size`, `router_holdout` are shortcuts for theirs. `resume=True`
    continues the run in `out` with its own recipe. The callbacks are called on rank 0:
    `on_start(line)`, `on_note(line)`, `on_epoch(record)` (metrics.jsonl's record)."""
    from dynamicdet_cli.config.recipe import load_recipe, option_overrides, recipe_from_dict, with_overrides
    from dynamicdet_cli.core.errors import warn
    from dynamicdet_cli.data.open import open_splits
    from dynamicdet_cli.train.loop import held_run_folder, load_run_state, train_detectors as train

    allocator.keep_freed_memory()
    out = Path(out)
    sets = [*_override_list(overrides), *option_overrides(epochs=epochs, batch_size=batch_size, lr=lr,
                                          router_holdout=router_holdout, image_size=image_size)]
    state = load_run_state(out) if resume else None  # read once: the recipe here, the rest by training
    if state is not None:
        cfg = recipe_from_dict(state["recipe"])
        if recipe is not None or sets:
            warn("--resume continues with the run's own recipe; the recipe and override options given are ignored")
    elif recipe is None:
        raise DynamicDetError("give a RECIPE, or --resume an existing run folder")
    else:
        cfg = with_overrides(recipe, sets) if isinstance(recipe, Recipe) else load_recipe(recipe, sets)
    dc = resolve_data(Path(data) if data is not None else None, train_ann, train_images, val_ann, val_images)
    splits = open_splits(dc, needs_masks(cfg.model.family), augment=cfg.train.augment, skip_bad=skip_bad_images)
    with held_run_folder(out):
        return train(cfg, splits.train, splits.val, out, device_name=device, amp=amp, resume=resume, init=init,
                     max_steps=max_steps, show_progress=progress, force=force, state=state,
                     on_epoch=on_epoch, on_note=on_note, on_start=on_start)


def train_router(checkpoint: str | Path, data: str | Path | None = None, output: str | Path | None = None, *,
                 overrides: Sequence[str] = (), epochs: int | None = None, lr: float | None = None,
                 device: str = "auto", skip_bad_images: bool = False, progress: bool = True,
                 train_ann: Path | None = None, train_images: Path | None = None,
                 val_ann: Path | None = None, val_images: Path | None = None) -> tuple[Path, dict]:
    """Step 2, as `dynamicdet train-router`: the router trained on `checkpoint`'s frozen
    detectors (e.g. a run's best.pt) and stored with its validation scores, in `output` (default:
    the checkpoint itself, rewritten atomically). Returns (the file written, the summary the
    command prints: router against random routing, the share of the gap recovered, ...).
    `overrides` take router keys only (router.*, model.router.*)."""
    from dynamicdet_cli.router.training import train_router_step

    allocator.keep_freed_memory()
    sets = [*_override_list(overrides), *([f"router.epochs={epochs}"] if epochs is not None else []),
            *([f"router.lr={lr}"] if lr is not None else [])]
    dc = resolve_data(Path(data) if data is not None else None, train_ann, train_images, val_ann, val_images)
    with held_for_update(checkpoint, output):
        new, summary = train_router_step(load_checkpoint(checkpoint), dc, resolve_device(device), overrides=sets,
                                         skip_bad=skip_bad_images, show_progress=progress)
        return save_checkpoint(new, output or checkpoint), summary


def _override_list(overrides: Sequence[str]) -> list[str]:
    """`overrides` as the list of "KEY=VALUE" strings the commands' --set takes; a mapping or a
    single string is a one-line error (a string would be read letter by letter)."""
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, Sequence):
        raise DynamicDetError(f"overrides: give a list of 'KEY=VALUE' strings, e.g. ['train.epochs=3'], "
                              f"not a {type(overrides).__name__}")
    return [str(item) for item in overrides]


def _class_names(classes: str | Sequence[str]) -> list[str]:
    text = classes if isinstance(classes, str) else ",".join(classes)
    names = [c.strip() for c in text.split(",")] if isinstance(classes, str) else [str(c).strip() for c in classes]
    if not all(names):
        raise DynamicDetError(f"--classes {text!r}: a class name is empty; write e.g. --classes cat,dog")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DynamicDetError(f"--classes {text!r}: {', '.join(twice)} given more than once; class names must differ")
    return names


def load(path: str | Path, device: str | torch.device = "auto") -> DynamicDet:
    """Load a dynamicdet checkpoint for inference on `device` ("auto": a GPU where there is one,
    else the CPU, as the CLI's --device; or "cpu", "cuda", "cuda:N"): the
    checkpoint is checked and parsed (a bad file is one DynamicDetError naming what is wrong),
    the model built in eval mode."""
    allocator.keep_freed_memory()
    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    ckpt = load_checkpoint(path)
    return DynamicDet(ckpt, model_from_checkpoint(ckpt, dev).eval(), dev, Path(path))


class DynamicDet:
    """A loaded model: its checkpoint (`checkpoint`, typed, frozen), the network (`network`, a
    DynamicDetector) on `device`, and the file it came from (`path`, None if built in memory)."""

    def __init__(self, checkpoint: Checkpoint, network: torch.nn.Module, device: torch.device,
                 path: Path | None = None):
        self.checkpoint, self.network, self.device, self.path = checkpoint, network, device, path
        self.last_hold: HoldReport | None = None  # what the latest predict(hold=True) achieved

    @property
    def classes(self) -> tuple[str, ...]:
        """Label l (1-based) is classes[l - 1]."""
        return self.checkpoint.classes

    def regime(self, batch_size: int) -> Regime:
        """The regime a run at `batch_size` is in here (what a latency holds for)."""
        return Regime.of_run(self.network, self.device, batch_size)

    def route(self, *, latency: str | None = None, point: str | None = None, hard_ratio: float | None = None,
              threshold: float | None = None, hold: bool = False, batch_size: int = 8) -> Route:
        """The route the options ask for (module docstring); with `hold`, its controller."""
        check_options(batch_size)
        for option, value in (("hard_ratio", hard_ratio), ("threshold", threshold)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DynamicDetError(f"{option} must be a number in [0, 1], got {value!r}")
        for option, value in (("latency", latency), ("point", point)):
            if value is not None and not isinstance(value, str):
                raise DynamicDetError(f"{option} must be a string (latency: '40ms', '0.04s' or '50%'), got {value!r}")
        regime = self.regime(batch_size)
        name = str(self.path) if self.path else "MODEL"
        route, text = resolve_route(self.checkpoint, latency=latency, hard_ratio=hard_ratio, threshold=threshold,
                                    point=point, regime=regime, checkpoint=name)
        if not hold:
            return Route(route, text)
        controller = hold_target(self.checkpoint, route, latency=latency, hard_ratio=hard_ratio,
                                 threshold=threshold, point=point, regime=regime, checkpoint=name)
        return Route(route, text + f"; held at {controller.target_ms:.1f} ms/image, tau moving after each batch",
                     controller)

    @torch.inference_mode()
    def predict(self, images: ImageInput | Sequence[ImageInput], *, latency: str | None = None,
                point: str | None = None, hard_ratio: float | None = None, threshold: float | None = None,
                hold: bool = False, batch_size: int = 8, conf: float = 0.0) -> list[dict[str, Tensor]]:
        """Detect objects: one dict per image, in input order, in torchvision's format (boxes
        FloatTensor[N, 4] x1y1x2y2 in the image's pixels, labels Int64Tensor[N] (1-based:
        classes[l - 1]), scores FloatTensor[N], masks FloatTensor[N, 1, H, W] for segmenting
        families), plus route ("easy" / "hard") and difficulty (the router's score phi).
        `images`: file paths, PIL images or 3,H,W RGB tensors (uint8, uint16, or float in [0, 1]);
        one larger than the model's input is scaled down to it first (predict.to_model_inputs).
        Detections scoring below `conf` are left out. An unreadable file, or an image the
        network would misread, is a DynamicDetError."""
        check_options(batch_size, conf)
        batch = _as_list(images)
        chosen = self.route(latency=latency, point=point, hard_ratio=hard_ratio, threshold=threshold, hold=hold,
                            batch_size=batch_size)
        check_route(chosen.route)
        batcher = RouteBatcher(self.network, chosen.route, batch_size)

        def inputs():
            for start in range(0, len(batch), batch_size):
                decoded = [_decoded(image) for image in batch[start:start + batch_size]]
                tensors, sizes = to_model_inputs(decoded, self.network, self.device)
                yield tensors, list(range(start, start + len(decoded))), sizes

        out = {d.key: keep_confident(d.detection, conf)
               for done in route_stream(batcher, inputs(), chosen.hold) for d in done}
        self.last_hold = None if chosen.hold is None else chosen.hold.report()
        return [out[i] for i in range(len(batch))]

    def calibrate(self, *, latency: str | None = None, hard_ratio: float | None = None,
                  threshold: float | None = None, name: str = "default", clamp: bool = False,
                  batch_size: int = 8, repeats: int = 5, reuse: bool = False, images: Path | None = None,
                  random_images: bool = False, image_size: int | None = None, max_images: int = 128,
                  save: bool | str | Path = True) -> Calibration:
        """Time both routes in this regime and store an operating point (speed/latency.py
        calibrate_checkpoint); with none of latency / hard_ratio / threshold, only time them.
        The model's checkpoint is updated, and written to `save` (True: the file it came from;
        False: not written)."""
        check_options(batch_size)
        if not name.strip() or name in ("easy", "hard"):
            raise DynamicDetError(f"--name {name!r}: give a non-empty name other than easy / hard "
                                  "(those select a whole route in --point)")
        result = calibrate_checkpoint(self.checkpoint, self.network, self.device, name, target=latency,
                                      hard_ratio=hard_ratio, threshold=threshold, clamp=clamp,
                                      batch_size=batch_size, repeats=repeats, reuse=reuse, images=images,
                                      random_images=random_images, image_size=image_size, max_images=max_images)
        self.checkpoint = result.checkpoint
        if save is not False:
            self.save(self.path if save is True else save)
        return result

    def save(self, path: str | Path | None) -> Path:
        """Write the checkpoint (atomically)."""
        if path is None:
            raise DynamicDetError("this model came from no file: give the path to save it to")
        return save_checkpoint(self.checkpoint, path)

    def open_validation(self, data: str | Path | None = None, val_ann: Path | None = None,
                        val_images: Path | None = None, skip_bad_images: bool = False) -> CocoDataset:
        """The validation split named by a data YAML or by its two paths, checked against the
        model's classes."""
        dc = resolve_data(Path(data) if data is not None else None, None, None,
                          Path(val_ann) if val_ann else None, Path(val_images) if val_images else None,
                          need_train=False)
        if not dc.has_val:
            raise DynamicDetError(f"{data}: no val_ann / val_images to evaluate on")
        dataset = open_dataset(dc.val_ann, dc.val_images, False, None, skip_bad_images,
                               masks=needs_masks(self.checkpoint.family))
        problem = class_mismatch(dataset.classes, self.classes, "data", "checkpoint")
        if problem:
            raise DynamicDetError(problem)
        return dataset

    def evaluate(self, data: str | Path | None = None, *, val_ann: Path | None = None, val_images: Path | None = None,
                 latency: str | None = None, point: str | None = None, hard_ratio: float | None = None,
                 threshold: float | None = None, sweep: Sequence[float] | None = None, draws: int = 5,
                 out: str | Path | None = None, batch_size: int = 8, skip_bad_images: bool = False,
                 progress: bool = False) -> EvaluationReport:
        """COCO AP on the validation data at one operating point (writes metrics.json and
        detections.json into `out`), or with `sweep` (hard ratios) the accuracy-latency curve."""
        check_options(batch_size)
        if sweep is not None and self.checkpoint.router is None:
            raise DynamicDetError(f"{self.path or 'the model'} has no trained router, so --sweep would route by "
                                  "meaningless scores: run train-router on it first, or evaluate one route "
                                  "(--point easy / hard)")
        dataset = self.open_validation(data, val_ann, val_images, skip_bad_images)
        if out is None:
            out = self.path.with_name(f"{self.path.stem}-eval") if self.path else Path("eval")
        out = Path(out)
        if sweep is not None:
            rows, written, measured = evaluation.sweep(self.network, self.checkpoint, dataset, self.device, out,
                                                       list(sweep), draws, batch_size, progress)
            missing = None
            if measured is None:
                from dynamicdet_cli.speed.regime import missing_latency
                missing = missing_latency(self.checkpoint, self.regime(batch_size), str(self.path or "MODEL"))
            return EvaluationReport(out, sweep_rows=rows, written=written, measured=measured, missing_latency=missing)
        chosen = self.route(latency=latency, point=point, hard_ratio=hard_ratio, threshold=threshold,
                            batch_size=batch_size)
        result = evaluation.evaluate_route(self.network, dataset, chosen.route, self.device, out, batch_size, progress)
        write_json(out / "metrics.json", {"route": chosen.route, "route_text": chosen.text, "metrics": result.metrics,
                                          "hard_share": result.hard_share, "latency_ms": result.latency_ms,
                                          "images": result.n_images})
        return EvaluationReport(out, chosen.text, result)

    def calibration(self, batch_size: int = 8):
        """The latency stored for this run's regime at `batch_size`, or None."""
        return find_latency(self.checkpoint, self.regime(batch_size))


def _as_list(images) -> list:
    if isinstance(images, (str, Path)) and Path(images).expanduser().is_dir():
        raise DynamicDetError(f"{images} is a folder: pass its image files, e.g. sorted(Path({str(images)!r}).glob('*.jpg'))")
    if isinstance(images, Tensor) and images.ndim == 4:
        return list(images)  # B,3,H,W
    if isinstance(images, (list, tuple)):
        if not images:
            raise DynamicDetError("no images given")
        return list(images)
    return [images]


def _decoded(image: ImageInput) -> Tensor:
    """A path, PIL image or 3,H,W tensor as a 3,H,W tensor (a file or PIL image: uint8), for
    predict.to_model_inputs."""
    if isinstance(image, (str, Path)):
        try:
            image = load_rgb(Path(image))
        except BadImage as err:
            raise DynamicDetError(f"{image}: {err}") from None
    elif not isinstance(image, Tensor):
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - pillow is a dependency
            Image = None
        if Image is None or not isinstance(image, Image.Image):
            raise DynamicDetError(f"an image must be a path, a PIL image or a 3,H,W tensor, got {type(image).__name__}")
        image = pil_to_rgb(image)  # as files are read: 16-bit images scaled, not clipped at 255
    if image.ndim != 3 or image.shape[0] != 3:
        raise DynamicDetError(f"an image tensor must be 3,H,W (RGB), got shape {list(image.shape)}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise DynamicDetError(f"an image has no pixels: shape {list(image.shape)}")
    if image.dtype not in (torch.uint8, torch.uint16) and not image.is_floating_point():
        raise DynamicDetError(f"an image tensor must be uint8 (0-255), uint16 or float in [0, 1], got {image.dtype}")
    top = float(image.max()) if image.is_floating_point() else 0.0
    if top > 1.0:
        raise DynamicDetError(f"a float image tensor must hold values in [0, 1], this one reaches "
                              f"{top:g} (divide by 255, or pass it as uint8)")
    return image
