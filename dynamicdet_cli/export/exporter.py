"""`dynamicdet export`: a checkpoint as files a deployment runs without dynamicdet.

    onnx         three graphs (export/onnx.py) + dynamicdet.json
    torchscript  dynamicdet.torchscript.pt (export_torchscript.py) + dynamicdet.json
    pt2          three torch.export programs (export_pt2.py, yolo family) + dynamicdet.json

dynamicdet.json says what a runtime needs besides the graphs:

    format, version          "dynamicdet-export", 1
    family                   the detector family ("faster_rcnn")
    classes, category_ids    label l (1-based) is classes[l - 1], COCO category category_ids[l - 1]
    input                    what the graphs take: RGB float32 in [0, 1], channels first
    transform                the resize and normalisation applied inside the graphs: min_size
                             (shorter side), max_size (longer side cap), image_mean, image_std,
                             size_divisible (zero padding)
    operating_points         the checkpoint's stored points, name -> {tau, hard_ratio, target_ms,
                             expected_ms, ...}: phi > tau takes the hard route; with none stored
                             and a trained router, "default": predict's fallback, 50% hard on the
                             validation images (with a "note" saying so)
    default_point            the point `predict` would use with no route option ("default", or the
                             only stored point), else "hard" without a trained router, else null
    router_trained           false: phi is the untrained router's, and only the easy/hard routes mean anything
    onnx / torchscript / pt2 the files and, for ONNX and pt2, each graph's inputs, outputs and batch size
    postprocess              yolo only: the NMS settings the runtime applies to the route graphs' outputs
    provenance               dynamicdet, torch, torchvision and opset versions, source checkpoint

ONNX exports the Faster R-CNN and YOLO families, TorchScript the Faster R-CNN family; others
stop with one line saying so. For YOLO the route graphs end before NMS, and dynamicdet.json's
`postprocess` gives the runtime its settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from rich.markup import escape
from rich.table import Table

from dynamicdet_cli import __version__
from dynamicdet_cli.checkpoint.types import Checkpoint
from dynamicdet_cli.core.atomic import write_json
from dynamicdet_cli.core.errors import DynamicDetError, warn

FORMATS = ("onnx", "torchscript", "pt2")
# format -> the families it exports: TorchScript scripts torchvision's two-stage detector;
# torch.export needs graphs without per-image Python loops (the YOLO head's)
EXPORTABLE_FAMILIES = {"onnx": ("faster_rcnn", "yolo"), "torchscript": ("faster_rcnn",), "pt2": ("yolo",)}
META_FILE = "dynamicdet.json"
TORCHSCRIPT_FILE = "dynamicdet.torchscript.pt"


@dataclass
class ExportResult:
    """What `export_checkpoint` wrote: the folder, its files (graphs or module, then the JSON)."""

    out_dir: Path
    files: list[Path]
    meta: dict


def check_exportable(ckpt: Checkpoint, fmt: str, out_dir: Path | None = None) -> None:
    """DynamicDetError unless `fmt` is a known format, the checkpoint's family exports, `out_dir`
    (if given) can take this export, and (for ONNX) the onnx package is installed."""
    if fmt not in FORMATS:
        raise DynamicDetError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    family = ckpt.family
    families = EXPORTABLE_FAMILIES[fmt]
    if family not in families:
        raise DynamicDetError(f"export --format {fmt} supports {', '.join(families)} only; "
                              f"this checkpoint's detectors are {family}")
    if out_dir is not None:
        _check_folder(Path(out_dir), fmt)
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (torch's exporter needs it to write the graphs)
        except ImportError:
            raise DynamicDetError("ONNX export needs the onnx package: pip install 'dynamicdet[export]'") from None


def export_checkpoint(ckpt: Checkpoint, model: torch.nn.Module, fmt: str, out_dir: Path,
                      source: str = "") -> ExportResult:
    """Export `model` (built from `ckpt`, on the CPU) as `fmt` into `out_dir`; files are written atomically.

    source: the checkpoint's path, recorded in the JSON.
    """
    out_dir = Path(out_dir)
    check_exportable(ckpt, fmt, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if ckpt.router is None:
        warn("this checkpoint has no trained router: its difficulty scores mean nothing, so only the "
             "all-easy / all-hard routes are meaningful (run train-router before exporting)")
    model = model.cpu().eval()
    example = _example_image(model)
    meta = export_meta(ckpt, source)
    if fmt == "onnx":
        from dynamicdet_cli.export.onnx import OPSET, export_onnx
        graphs = export_onnx(model, out_dir, example)
        meta["onnx"] = {"opset": OPSET, "graphs": graphs}
        meta["provenance"]["onnx_opset"] = OPSET
        files = [out_dir / g["file"] for g in graphs.values()]
    elif fmt == "pt2":
        from dynamicdet_cli.export.pt2 import export_pt2
        programs = export_pt2(model, out_dir, example)
        meta["pt2"] = {"programs": programs, "load": "torch.export.load(path).module()"}
        meta["transform"]["applied"] = ("by the runtime, before the programs: normalise, resize, zero-pad to "
                                        "multiples of 32; boxes come back in that resized frame")
        files = [out_dir / g["file"] for g in programs.values()]
    else:
        from dynamicdet_cli.export.torchscript import export_torchscript
        meta["torchscript"] = {"file": TORCHSCRIPT_FILE,
                               "forward": "module(images: list of 3,H,W float in [0, 1], tau: float) -> "
                                          "(detections: list of dict(boxes, labels, scores, difficulty), "
                                          "routes: list of 'easy' / 'hard')"}
        text = json.dumps(meta, indent=2, allow_nan=False)
        files = [export_torchscript(model, out_dir / TORCHSCRIPT_FILE, example, text)]
    if meta["family"] == "yolo":
        y = ckpt.recipe.model.yolo
        meta["postprocess"] = {
            "where": "outside the graphs: the route graphs give every point's boxes and class scores",
            "steps": "per image: clip boxes to the image, keep (point, class) pairs with score > score_thresh, "
                     "the topk_candidates best, NMS per class at nms_thresh, the detections_per_img best",
            "score_thresh": y.score_thresh, "topk_candidates": y.topk_candidates,
            "nms_thresh": y.nms_thresh, "detections_per_img": y.detections_per_img,
            "labels": "column c of scores is label c + 1"}
    files.append(write_json(out_dir / META_FILE, meta, indent=2))
    return ExportResult(out_dir, files, meta)


def _check_folder(out_dir: Path, fmt: str) -> None:
    """A folder (or none yet), and one export per folder: the JSON describes one format, so
    another format's export there is refused (exporting the same format again replaces it)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DynamicDetError(f"output folder {out_dir} is a file: give a folder")
    try:
        existing = json.loads((out_dir / META_FILE).read_text())
    except (OSError, ValueError):
        return
    other = next((f for f in FORMATS if f != fmt and isinstance(existing, dict) and f in existing), None)
    if other:
        raise DynamicDetError(f"{out_dir} holds a {other} export; export --format {fmt} into another folder")


def export_meta(ckpt: Checkpoint, source: str = "") -> dict:
    """Everything in dynamicdet.json but the format-specific part (see the module docstring)."""
    t = ckpt.recipe.model.transform
    points = {name: p.to_dict() for name, p in ckpt.operating_points.items()}
    default = ckpt.default_point
    if default is None and ckpt.router is None:
        default = "hard"  # what predict does without a router
    elif default is None and ckpt.validation is not None:  # predict's fallback, written down
        from dynamicdet_cli.speed.latency import operating_point
        points["default"] = {**operating_point(ckpt, hard_ratio=0.5).to_dict(),
                             "note": "no point stored: what predict uses then, 50% of the validation images hard"}
        default = "default"
    return {
        "format": "dynamicdet-export",
        "version": 1,
        "family": ckpt.family,
        "classes": list(ckpt.classes),
        "category_ids": list(ckpt.category_ids),
        "input": {"color": "RGB", "dtype": "float32", "range": [0.0, 1.0], "layout": "channels first (3,H,W)"},
        "transform": {"min_size": int(t.min_size[-1]), "max_size": int(t.max_size),
                      "image_mean": list(t.image_mean), "image_std": list(t.image_std),
                      "resize": "bilinear, scale = min(min_size / shorter side, max_size / longer side)",
                      "size_divisible": 32, "applied": "inside the exported graphs / module"},
        "operating_points": points,
        "default_point": default,
        "router_trained": ckpt.router is not None,
        "provenance": {"dynamicdet": __version__, "torch": str(torch.__version__),
                       "torchvision": str(torchvision.__version__), "checkpoint": source},
    }


def export_table(result: ExportResult) -> Table:
    """The files written, their sizes, and what each one is."""
    table = Table(title=f"dynamicdet export ({escape(str(result.out_dir))})")
    for column in ("file", "size", "what"):
        table.add_column(column)
    graphs = {g["file"]: (name, g) for name, g in result.meta.get("onnx", {}).get("graphs", {}).items()}
    graphs.update({g["file"]: (name, g) for name, g in result.meta.get("pt2", {}).get("programs", {}).items()})
    for path in result.files:
        if path.name in graphs:
            name, g = graphs[path.name]
            sizes = "sides multiples of 32, at least 64" if path.suffix == ".pt2" else "any image size"
            what = f"{_GRAPH_ROLES[name]}; batch {g['batch']}, {sizes}"
        elif path.name == META_FILE:
            points = ", ".join(result.meta["operating_points"]) or "none"
            what = f"{len(result.meta['classes'])} classes, input transform, operating points: {points}"
        else:
            what = "module(images, tau) -> (detections, routes); any batch, any image size"
        size = path.stat().st_size
        table.add_row(escape(path.name), f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB", escape(what))
    return table


_GRAPH_ROLES = {"backbone1_router": "backbone 1 + router: phi and the features both routes need",
                "easy": "easy route: detector 1", "hard": "hard route: composite + backbone 2 + detector 2"}


def _example_image(model) -> torch.Tensor:
    """A square image of the model's inference size to trace with, 3,S,S in [0, 1] (seeded)."""
    side = int(model.transform.min_size[-1])
    return torch.rand(3, side, side, generator=torch.Generator().manual_seed(0))


def export_checkpoint_file(checkpoint: str | Path, fmt: str, out_dir: Path) -> ExportResult:
    """`export`: load the checkpoint, refuse what cannot be exported before building the model,
    then export it (on the CPU)."""
    from dynamicdet_cli.checkpoint.store import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    check_exportable(ckpt, fmt, out_dir)
    return export_checkpoint(ckpt, model_from_checkpoint(ckpt, "cpu"), fmt, out_dir, source=str(checkpoint))
