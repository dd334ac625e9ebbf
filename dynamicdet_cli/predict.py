"""Detections on image files: each image takes the easy or the hard route, as the router says.

What `predict` writes into `out_dir` (JSON files are written atomically, at the end):

    predictions.jsonl      one line per readable image, in input order:
                           {"file", "image_id", "width", "height", "difficulty" (phi), "route",
                            "detections": [{"box": [x1, y1, x2, y2] pixels, "score",
                                            "label" (class name), "category_id",
                                            "segmentation" (segmenting families only: the mask
                                            at probability > 0.5 as COCO RLE {size, counts})}]}
    predictions_coco.json  the same detections in COCO results format
                           [{image_id, category_id, bbox [x, y, w, h], score, segmentation (masks only)}]
    images.json            what the COCO image ids stand for, COCO-style:
                           {"images": [{id, file_name, width, height}], "categories": [{id, name}]}
    render/<stem>.png      each image with its boxes and "name score" labels (and its masks when
                           the model segments) under a caption with its route and phi, scaled up
                           to 512 px on its longer side if smaller (unless render=False);
                           a second file with the same stem becomes <stem>-1.png, and so on

image_id is the image's position in the `paths` list given to `predict` (skipped files keep
their number, so ids are stable whatever fails to read). Only detections scoring >= conf are
written or drawn.

Latency: the model's time per image. Images are routed batch by batch, and where it pays
(speed/batcher.py: on CUDA, and on the CPU unless one thread runs under glibc's default
malloc) each route runs on full batches of
images gathered across input batches, as calibrate and evaluate run them. An image's time is
its share of its input batch's shared part (resize/normalise, backbone 1, router) plus its
share of its route's call. Decoding,
rendering and writing are not included. The first input batch and each route's first call
carry one-time warm-up, so a route's figure leaves their images out whenever others took
that route (a run made only of warm-up says so). A fresh process also pays a one-time set-up
for each new batch shape a route meets (see WARN_AFTER_BATCHES).

Speed: with a fixed threshold (the default) every image is routed at the tau given, so the
same images take the same routes on every run. With a held target (`hold`, a LatencyHold,
hold.py) each input batch is routed at the controller's current tau, and after each batch the
controller reads the model time it took and moves tau so that the mean time per image over
the stream converges to the target; the routes then depend on the timings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from torch import Tensor, nn
from torchvision.io import write_png
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from dynamicdet_cli.checkpoint.types import LatencyRecord
from dynamicdet_cli.core.atomic import atomic_path, write_text
from dynamicdet_cli.speed.calibrate import expected_latency
from dynamicdet_cli.evaluation.coco import NON_FINITE, encode_masks, to_coco_results
from dynamicdet_cli.data.coco import BadImage, load_rgb
from dynamicdet_cli.data.transforms import fit_image
from dynamicdet_cli.model.transform import inference_sides
from dynamicdet_cli.core.errors import DynamicDetError, warn
from dynamicdet_cli.speed.hold import HoldReport, LatencyHold
from dynamicdet_cli.model.detector import Route
from dynamicdet_cli.speed.batcher import Done, RouteBatcher, route_stream
from dynamicdet_cli.core.progress import progress_bar

# Distinct colours, one per class (cycled when there are more classes).
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3",
           "#808000", "#000075")
RENDER_MIN_SIDE = 512  # px: smaller images are scaled up to this longer side before drawing
CAPTION_HEIGHT = 28  # px: the strip above each render saying its route and difficulty
# A run whose model time per image is further than this from what its regime's calibration
# expects (at the run's share of hard images) is told so, when it ran WARN_AFTER_BATCHES batches
# or more: a fresh process pays a one-time set-up for each batch shape a route meets (CPU
# kernels are prepared per shape), which makes a short run read well slower than calibrated
# while a long one comes close (docs/benchmarks.md#predict-against-calibration).
CALIBRATION_TOLERANCE = 0.10
WARN_AFTER_BATCHES = 16


@dataclass
class PredictSummary:
    """What one `predict` run did.

    latency_ms: route -> mean model time per image on that route in ms (see the module
    docstring for what is measured); None for a route no image took.
    written: the JSON files; renders: the PNG files.
    calibration: calibrate's latency measurement for this run's regime, if the checkpoint
    stores one: what `calibration_gap` holds this run's latency against.
    image_ms: the model time of each image whose time carries no warm-up, in the order their
    routes finished (close to the input order: at most a batch per route waits).
    hold: what the held target achieved (None with a fixed threshold).
    """

    n_images: int
    skipped: list[tuple[Path, str]]
    n_hard: int
    n_detections: int
    latency_ms: dict[str, float | None]
    batch_size: int
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    renders: list[Path] = field(default_factory=list)
    calibration: LatencyRecord | None = None
    warm_routes: tuple[str, ...] = ()  # routes whose figure includes warm-up: none of their images ran without
    image_ms: list[float] = field(default_factory=list)
    hold: HoldReport | None = None

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    @property
    def share_hard(self) -> float:
        return self.n_hard / self.n_images if self.n_images else 0.0

    @property
    def mean_ms(self) -> float:
        """Mean model time per image over both routes, ms."""
        counts = {"easy": self.n_images - self.n_hard, "hard": self.n_hard}
        return sum((ms or 0.0) * counts[r] for r, ms in self.latency_ms.items()) / max(self.n_images, 1)

    def calibration_gap(self) -> tuple[float, float] | None:
        """(ms per image the calibration expects at this run's share of hard images, this run's
        mean_ms relative to it, e.g. +0.12 for 12% slower); None without a calibration."""
        m = self.calibration
        if m is None or not self.n_images:
            return None
        expected = expected_latency(self.share_hard, m.easy_ms, m.hard_ms, m.curve_ms)
        return expected, self.mean_ms / expected - 1.0


def predict(model: nn.Module, paths: list[Path], route: Route, out_dir: Path, class_names: list[str],
            category_ids: list[int], batch_size: int = 8, conf: float = 0.3, render: bool = True,
            device: str | torch.device = "cpu", progress: bool = True,
            calibration: LatencyRecord | None = None, regroup: bool | None = None,
            hold: LatencyHold | None = None) -> PredictSummary:
    """Run `model` (a DynamicDetector) on the image files `paths` and write the outputs.

    `calibration`: the stored latency measurement of this run's regime (see PredictSummary).
    `regroup`: RouteBatcher's (None: what pays on this device and thread count).
    `hold`: hold its latency target (module docstring): each input batch is routed at
    hold.tau, and `route` only says where the run starts (pass hold.tau). None: every image
    is routed at `route`.

    Files that are not images or cannot be decoded are skipped with a one-line warning and
    counted; DynamicDetError if none of them can be read. Label l is class_names[l - 1] and
    COCO category category_ids[l - 1].
    """
    assert len(class_names) == len(category_ids), "one category id per class name"
    check_route(route)
    check_options(batch_size, conf)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DynamicDetError(f"output folder {out_dir} is a file: give a folder")
    render_dir = out_dir / "render"
    _never_over_inputs(paths, out_dir, render_dir if render else None)
    _clear_earlier_renders(render_dir, paths)
    (render_dir if render else out_dir).mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    model.to(device).eval()

    lines, coco, images_meta, renders = [], [], [], []
    skipped: list[tuple[Path, str]] = []
    stems: dict[str, int] = {}
    totals = {"easy": [0.0, 0], "hard": [0.0, 0]}  # route -> [sum of ms, images], warm-up left out
    warm = {"easy": [0.0, 0], "hard": [0.0, 0]}  # the same, images whose time includes warm-up
    n_det = 0
    image_ms: list[float] = []
    read: dict[int, tuple[Path, Tensor, str]] = {}  # index -> (path, image, render stem): awaiting their route
    batcher = RouteBatcher(model, route, batch_size, regroup)
    with progress_bar(progress) as bar, torch.inference_mode():
        task = bar.add_task("predicting", total=len(paths))

        def skip(path: Path, reason: str) -> None:
            skipped.append((path, reason))
            if read or lines:  # until an image has read, the error that none did may be all to say
                say_skipped(path, reason)
            bar.advance(task)

        def say_skipped(path: Path, reason: str) -> None:
            bar.console.print(Text.assemble(("skipped", "yellow"), f" {path}: {reason}"), soft_wrap=True)

        def write(done: list[Done]) -> None:
            nonlocal n_det
            for d in done:
                path, img, stem = read.pop(d.key)
                det = keep_confident(d.detection, conf)
                sums = warm if d.warmup else totals
                if not d.warmup:
                    image_ms.append(d.ms)
                sums[det["route"]][0] += d.ms
                sums[det["route"]][1] += 1
                n_det += len(det["scores"])
                height, width = img.shape[-2:]
                lines.append(_json_line(path, d.key, width, height, det, class_names, category_ids))
                coco.extend(to_coco_results(det, d.key, category_ids))
                images_meta.append({"id": d.key, "file_name": str(path), "width": width, "height": height})
                if render:
                    renders.append((d.key, _render(img, det, class_names, render_dir / f"{stem}.png")))
                bar.advance(task)

        def inputs() -> Iterator[tuple[list[Tensor], list[int], list[tuple[int, int]]]]:
            for batch in _read_batches(paths, batch_size, skip):
                if not (read or lines):
                    for path, reason in skipped:  # files skipped before the first readable one
                        say_skipped(path, reason)
                # render names in input order, whichever route finishes first
                read.update({index: (path, img, _unique_stem(path.stem, stems)) for index, path, img in batch})
                tensors, sizes = to_model_inputs([img for _, _, img in batch], model, device)
                yield tensors, [index for index, _, _ in batch], sizes

        for done in route_stream(batcher, inputs(), hold):
            write(done)

    if not lines:
        raise DynamicDetError(f"no readable images among {len(paths)} files "
                              f"(e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else "no images given")
    # routes finish out of input order: back to it (image ids are positions in `paths`)
    lines.sort(key=lambda line: line["image_id"])
    coco.sort(key=lambda r: r["image_id"])  # stable: an image's detections keep their order
    images_meta.sort(key=lambda m: m["id"])
    renders = [path for _, path in sorted(renders)]
    categories = [{"id": c, "name": n} for c, n in zip(category_ids, class_names)]
    written = [
        write_text(out_dir / "predictions.jsonl", "".join(json.dumps(line, allow_nan=False) + "\n" for line in lines)),
        write_text(out_dir / "predictions_coco.json", json.dumps(coco, allow_nan=False)),
        write_text(out_dir / "images.json", json.dumps({"images": images_meta, "categories": categories}, indent=1)),
    ]
    kept = {r: totals[r] if totals[r][1] else warm[r] for r in totals}  # warm-up only for a route nothing else took
    latency = {r: (s / n if n else None) for r, (s, n) in kept.items()}
    return PredictSummary(n_images=len(lines), skipped=skipped, n_hard=totals["hard"][1] + warm["hard"][1],
                          n_detections=n_det,
                          latency_ms=latency, batch_size=batch_size, out_dir=out_dir, written=written,
                          renders=renders, calibration=calibration,
                          warm_routes=tuple(r for r in totals if warm[r][1] and not totals[r][1]),
                          image_ms=image_ms, hold=None if hold is None else hold.report())


def summary_table(summary: PredictSummary) -> Table:
    """Images, skipped files, share of hard images, mean latency per route, outputs."""
    table = Table(title="dynamicdet predict", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("images", str(summary.n_images))
    table.add_row("skipped", str(summary.n_skipped) + (f" (e.g. {escape(str(summary.skipped[0][0]))}: "
                                                       f"{escape(summary.skipped[0][1])})" if summary.skipped else ""))
    table.add_row("hard route", f"{summary.n_hard} image{'s' * (summary.n_hard != 1)} ({100 * summary.share_hard:.1f}%)")
    for route, ms in summary.latency_ms.items():
        table.add_row(f"{route} latency", "-" if ms is None else
                      f"{ms:.1f} ms/image (model only, batch {summary.batch_size})"
                      + (", warm-up included: too few images to leave it out" if route in summary.warm_routes else ""))
    gap = summary.calibration_gap()
    if gap is not None:
        table.add_row("vs calibration", f"{summary.mean_ms:.1f} ms/image here; {gap[0]:.1f} expected at "
                      f"{100 * summary.share_hard:.0f}% hard by calibrate ({summary.calibration.time or '?'}): "
                      f"{100 * gap[1]:+.0f}%" + (f" ({' and '.join(summary.warm_routes)} route: warm-up included)" if summary.warm_routes else ""))
    if summary.hold is not None:
        for what, value in hold_rows(summary.hold):
            table.add_row(what, value)
    table.add_row("detections", str(summary.n_detections))
    table.add_row("written", escape(str(summary.out_dir))
                  + (f" ({len(summary.renders)} renders in render/)" if summary.renders else ""))
    return table


def hold_rows(report: HoldReport) -> list[tuple[str, str]]:
    """The summary's lines on a held target: what it achieved, and how far tau moved."""
    if report.achieved_ms is None:
        achieved = "no timed batch without warm-up: too few images to say"
    else:
        achieved = (f"{report.achieved_ms:.1f} ms/image over the stream ({100 * report.gap:+.1f}%), "
                    f"{report.window_ms:.1f} over its last {report.window_images} images")
    reach = {"below": f"out of reach here: the easy route alone cost {report.easy_ms:.2f} ms/image, above the "
                      "target, so every image went easy (the stream is harder or the device slower than calibrated)",
             "above": f"out of reach here: the hard route alone cost {report.hard_ms:.2f} ms/image, under the "
                      "target, so every image went hard"}.get(report.out_of_reach)
    return [
        ("held target", f"{report.target_ms:.1f} ms/image: {achieved}"),
        *((("reach", reach),) if reach else ()),
        ("held share", f"{100 * report.hard_share:.1f}% hard; tau {report.tau_start:.4f} -> {report.tau_end:.4f} "
                       f"(moved within {report.tau_min:.4f}-{report.tau_max:.4f})"),
        ("route costs", f"easy {report.easy_ms:.2f}, hard {report.hard_ms:.2f} ms/image as last measured "
                        f"(calibrated {report.calibrated_easy_ms:.2f}, {report.calibrated_hard_ms:.2f})"),
    ]


# -- reading ------------------------------------------------------------------------------


def _never_over_inputs(paths: list[Path], out_dir: Path, render_dir: Path | None) -> None:
    """Refuse an --out whose files could replace an input image: renders are named after the
    images, so an image already in the render folder would be overwritten by its own render."""
    outputs = {(out_dir / name).resolve() for name in ("predictions.jsonl", "predictions_coco.json", "images.json")}
    render_at = render_dir.resolve() if render_dir is not None else None
    for path in paths:
        full = path.resolve()
        if full in outputs or (render_at is not None and full.parent == render_at):
            where = render_dir if full.parent == render_at else out_dir
            raise DynamicDetError(f"--out {out_dir} would write into {where}, which holds the input image {path}; "
                                  "choose another --out so that no input is written over")


def to_model_inputs(images: list[Tensor], model, device: torch.device) -> tuple[list[Tensor], list[tuple[int, int]]]:
    """Decoded images (3,H,W) as `model` takes them, and each one's own size: an image the
    model's resize would shrink is scaled down first, as decoded (data/transforms.py
    fit_image), so a 12-megapixel photo is never converted to float, copied to the device nor
    normalised at full size; the sizes go to the model as original_sizes, so its boxes and
    masks come back in the image's own pixels."""
    short, long = inference_sides(model.transform)
    return ([to_model_input(fit_image(image, short, long), device) for image in images],
            [tuple(image.shape[-2:]) for image in images])


def to_model_input(image: Tensor, device: torch.device) -> Tensor:
    """A 3,H,W image as the model takes it: float32 in [0, 1] on `device` (predict and the Python
    API). An 8-bit image is copied there first and converted there (a quarter of the bytes cross
    to a GPU); other integer ones are converted on the host, where every torch supports their
    dtype; a float one is taken as in [0, 1]."""
    if image.dtype == torch.uint8:
        image = image.to(device)
    return F.to_dtype(image, torch.float32, scale=True).to(device)


def _read_batches(paths: list[Path], batch_size: int,
                  skip: Callable[[Path, str], None]) -> Iterator[list[tuple[int, Path, Tensor]]]:
    """Batches of (index in paths, path, uint8 or uint16 image 3,H,W) of the readable files."""
    batch = []
    for index, path in enumerate(paths):
        try:
            batch.append((index, path, load_rgb(Path(path))))
        except BadImage as err:
            skip(path, str(err))
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _clear_earlier_renders(render_dir: Path, inputs: list[Path]) -> None:
    """An earlier run's pictures in `render_dir` go, as its JSON files are replaced: left there,
    they would pass for this run's (warned). Never where this run reads its inputs."""
    if not render_dir.is_dir() or any(Path(p).resolve().parent == render_dir.resolve() for p in inputs):
        return
    earlier = sorted(render_dir.glob("*.png"))
    for path in earlier:
        path.unlink()
    if earlier:
        warn(f"{render_dir}: removed {len(earlier)} picture(s) of an earlier predict run")


def check_options(batch_size: int, conf: float = 0.0) -> None:
    """A one-line DynamicDetError for a batch size or confidence threshold out of range, or not
    a number (from Python, nothing has checked the types before)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DynamicDetError(f"batch size must be a whole number, at least 1, got {batch_size!r}")
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 <= conf <= 1.0:
        raise DynamicDetError(f"confidence threshold must be a number in [0, 1], got {conf!r}")


def check_route(route: Route) -> None:
    if isinstance(route, str):
        if route not in ("easy", "hard"):
            raise DynamicDetError(f"route must be 'easy', 'hard' or a threshold in [0, 1], got {route!r}")
    elif not 0.0 <= float(route) <= 1.0:
        raise DynamicDetError(f"route threshold must lie in [0, 1] (phi is a sigmoid), got {route}")


# -- writing ------------------------------------------------------------------------------


def keep_confident(det: dict, conf: float) -> dict:
    """The detections scoring >= conf, on the CPU."""
    if not math.isfinite(float(det["difficulty"])):
        raise DynamicDetError(NON_FINITE)
    keep = det["scores"] >= conf
    kept = {"boxes": det["boxes"][keep].float().cpu(), "labels": det["labels"][keep].cpu(),
            "scores": det["scores"][keep].float().cpu(), "difficulty": float(det["difficulty"]),
            "route": det["route"]}
    if "masks" in det:
        kept["masks"] = det["masks"][keep].float().cpu()  # N,1,H,W probabilities
    return kept


def _json_line(path: Path, index: int, width: int, height: int, det: dict,
               class_names: list[str], category_ids: list[int]) -> dict:
    detections = [
        {"box": [round(v, 2) for v in box], "score": round(score, 4),
         "label": class_names[label - 1], "category_id": category_ids[label - 1]}
        for box, label, score in zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist())
    ]
    if "masks" in det:
        for detection, rle in zip(detections, encode_masks(det["masks"])):
            detection["segmentation"] = rle
    return {"file": str(path), "image_id": index, "width": int(width), "height": int(height),
            "difficulty": round(det["difficulty"], 6), "route": det["route"], "detections": detections}


def _unique_stem(stem: str, seen: dict[str, int]) -> str:
    n = seen.get(stem, 0)
    seen[stem] = n + 1
    return stem if n == 0 else f"{stem}-{n}"


def _render(image: Tensor, det: dict, class_names: list[str], path: Path) -> Path:
    """Write a PNG a person can read: the image scaled up so that its longer side is at least
    RENDER_MIN_SIDE pixels (a 128 px image's full-size labels would cover it), its boxes (and
    masks, if any) scaled with it and drawn with "name score" labels, one colour per class,
    under a caption strip saying the image's route and difficulty phi. Larger images keep
    their size."""
    canvas = F.to_dtype(image, torch.uint8, scale=True)  # 3,H,W; 16-bit PNGs come in as uint16
    height, width = canvas.shape[-2:]
    scale = max(1.0, RENDER_MIN_SIDE / max(height, width))
    if scale > 1.0:
        canvas = F.resize(canvas, [round(height * scale), round(width * scale)], antialias=True)  # 3,H',W'
    if len(det["scores"]):
        sx, sy = canvas.shape[-1] / width, canvas.shape[-2] / height
        boxes = det["boxes"] * torch.tensor([sx, sy, sx, sy])  # N,4 XYXY in the scaled image's pixels
        labels = det["labels"].tolist()
        text = [f"{class_names[lab - 1]} {s:.2f}" for lab, s in zip(labels, det["scores"].tolist())]
        colors = [PALETTE[(lab - 1) % len(PALETTE)] for lab in labels]
        if "masks" in det:  # N,1,H,W probabilities, resized with the image before thresholding
            masks = F.resize(det["masks"], list(canvas.shape[-2:])) > 0.5  # N,1,H',W'
            canvas = draw_segmentation_masks(canvas, masks[:, 0], alpha=0.45, colors=colors)
        canvas = draw_bounding_boxes(canvas, boxes, labels=text, colors=colors, width=2, label_colors="white",
                                     label_background_colors=colors, fill_labels=True)  # white on the class colour: legible on any image
    text = f"{det['route']} route   phi {det['difficulty']:.3f}"
    size = CAPTION_HEIGHT * 2 // 3
    font = ImageFont.load_default(size=size)
    while size > 6 and font.getlength(text) > canvas.shape[-1] - 12:  # a narrow image: a smaller font, not a cut caption
        size -= 1
        font = ImageFont.load_default(size=size)
    strip = Image.new("RGB", (canvas.shape[-1], CAPTION_HEIGHT), "#202020")
    ImageDraw.Draw(strip).text((6, CAPTION_HEIGHT // 2), text, fill="white", font=font, anchor="lm")
    caption = F.pil_to_tensor(strip)  # 3,CAPTION_HEIGHT,W' uint8
    with atomic_path(path) as tmp:
        write_png(torch.cat([caption, canvas], dim=1), str(tmp))
    return path


def calibration_warning(summary: PredictSummary) -> str | None:
    """The warning a run with a fixed threshold earns when its model time per image is further
    than CALIBRATION_TOLERANCE from what calibrate measured for its regime, once it has run
    WARN_AFTER_BATCHES batches (before, one-time set-up costs dominate); None otherwise."""
    gap = summary.calibration_gap()
    if gap is None or abs(gap[1]) <= CALIBRATION_TOLERANCE or summary.n_images < WARN_AFTER_BATCHES * summary.batch_size:
        return None
    return (f"this run's model time per image differs from its calibration by {100 * gap[1]:+.0f}%: the "
            "device's speed has changed (load, power state, other images)")
