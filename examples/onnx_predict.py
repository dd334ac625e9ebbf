"""Run an exported dynamic detector with onnxruntime: each image takes the route its difficulty asks for.

    dynamicdet export runs/demo/best.pt --format onnx -o exported
    python examples/onnx_predict.py exported images/*.png [--point NAME | --tau 0.4] [--batch-size 8]

Needs only numpy, Pillow and onnxruntime (no torch). Prints one JSON line per image:
{"file", "route", "difficulty", "detections": [{"box" [x1, y1, x2, y2] pixels, "score", "label"}]}.
Like `dynamicdet`, a mistake (a file that does not read, a bad option) is one `error:` line and
exit status 2. Images of any shape run: one too thin for the graphs' resize (10000x10, whose
short side would scale to 0 pixels) is zero-padded below or to the right first, and its boxes
clipped back to it.

How the three graphs chain (see dynamicdet_cli/export/onnx.py for their inputs and outputs):
graph 1 (backbone 1 + router) runs on a batch of same-size images; then each image whose
difficulty phi is at most tau runs the easy graph (detector 1), every other image the hard
graph (composite connection + backbone 2 + detector 2). Easy images never run backbone 2.
A yolo-family export's route graphs end before NMS (every point's boxes and class scores);
this script then keeps, per image, what dynamicdet.json's `postprocess` says (score threshold,
top-k, NMS per class, at most detections_per_img), as the model does in PyTorch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

META_FILE = "dynamicdet.json"


class DynamicDetONNX:
    """The three graphs of an export folder, chained per image.

    detect(images, tau) -> one dict per image, input order: boxes float32 N,4 (x1y1x2y2 in
    the image's pixels), labels int64 N (1-based: class names[label - 1]), scores float32 N,
    difficulty (phi, float), route ("easy" or "hard"). images: float32 arrays 3,H,W, RGB in
    [0, 1]; images of one size share one run of graph 1.
    """

    def __init__(self, folder: str | Path, threads: int | None = None):
        import onnxruntime as ort

        folder = Path(folder)
        if not (folder / META_FILE).is_file():
            raise SystemExit(f"error: {folder} has no {META_FILE}: give a folder written by `dynamicdet export --format onnx`")
        self.meta = json.loads((folder / META_FILE).read_text())
        if "onnx" not in self.meta:
            raise SystemExit(f"error: {folder} holds no ONNX export; write one with `dynamicdet export --format onnx`")
        options = ort.SessionOptions()
        # errors only: onnxruntime 1.17 logs a warning line per initializer its optimiser drops
        # (graphs exported by torch 2.10 carry some), which says nothing a user can act on
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        graphs = self.meta["onnx"]["graphs"]
        self.sessions = {name: ort.InferenceSession(str(folder / g["file"]), options, providers=["CPUExecutionProvider"])
                         for name, g in graphs.items()}
        self.inputs = {name: g["inputs"] for name, g in graphs.items()}
        self.classes = self.meta["classes"]
        self.postprocess = self.meta.get("postprocess")  # yolo: NMS is ours to run

    def tau_for(self, point: str | None = None, tau: float | None = None) -> float:
        """The threshold of a stored operating point, or `tau` itself; "easy" / "hard" route every image."""
        if tau is not None:
            return float(tau)
        points = self.meta["operating_points"]
        name = point or self.meta["default_point"]
        if name == "easy":
            return 1.0   # phi <= 1 always
        if name == "hard":
            return -1.0  # phi > -1 always
        if name is None:
            raise SystemExit("error: the export names no default operating point; give --tau, or --point "
                             f"{' / '.join([*points, 'easy', 'hard'])}")
        if name not in points:
            raise SystemExit(f"error: no operating point {name!r} in the export ({', '.join(points) or 'none stored'}); "
                             "give --tau or --point easy / hard")
        return float(points[name]["tau"])

    def backbone1_router(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Graph 1 on B,3,H,W -> its outputs by name."""
        session = self.sessions["backbone1_router"]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, {"images": batch})))

    def yolo_route(self, name: str, shared: dict[str, np.ndarray], index: list[int], original_size) -> list:
        """A yolo route graph on images `index` of graph 1's batch at once, then NMS per image."""
        session = self.sessions[name]
        wanted = {i.name for i in session.get_inputs()}  # the easy graph reads no pixels
        feed = {key: np.asarray(original_size, dtype=np.int64) if key == "original_size"
                else shared[key] if key == "image_size" else shared[key][index]
                for key in self.inputs[name] if key in wanted}
        boxes, scores = session.run(None, feed)
        return [nms_per_class(b, s, self.postprocess) for b, s in zip(boxes, scores)]

    def route(self, name: str, shared: dict[str, np.ndarray], i: int, original_size) -> list[np.ndarray]:
        """The easy or hard graph on image i of graph 1's batch -> boxes, labels, scores."""
        feed = {}
        for key in self.inputs[name]:
            if key == "original_size":
                feed[key] = np.asarray(original_size, dtype=np.int64)
            elif key == "image_size":
                feed[key] = shared[key]
            else:
                feed[key] = shared[key][i:i + 1]  # one image: the detector graphs' batch is 1
        return self.sessions[name].run(None, feed)

    def detect(self, images: list[np.ndarray], tau: float, batch_size: int = 8) -> list[dict]:
        results: list[dict | None] = [None] * len(images)
        sizes = [image.shape[-2:] for image in images]
        images = [self._fit(image) for image in images]
        by_size: dict[tuple, list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(index)
        for shape, indices in by_size.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                shared = self.backbone1_router(np.stack([images[k] for k in chunk]).astype(np.float32))
                if self.postprocess is not None:  # yolo: each route runs once for its images of the batch
                    for route in ("easy", "hard"):
                        mine = [i for i in range(len(chunk)) if (float(shared["phi"][i]) > tau) == (route == "hard")]
                        if mine:
                            for i, (boxes, labels, scores) in zip(mine, self.yolo_route(route, shared, mine, shape[-2:])):
                                k = chunk[i]
                                if shape[-2:] != sizes[k]:  # padded by _fit: the boxes back inside the image
                                    boxes = np.minimum(boxes, np.asarray([sizes[k][1], sizes[k][0]] * 2, dtype=boxes.dtype))
                                results[k] = {"boxes": boxes, "labels": labels, "scores": scores,
                                                     "difficulty": float(shared["phi"][i]), "route": route}
                    continue
                for i, k in enumerate(chunk):
                    phi = float(shared["phi"][i])
                    route = "hard" if phi > tau else "easy"
                    boxes, labels, scores = self.route(route, shared, i, shape[-2:])
                    if shape[-2:] != sizes[k]:  # padded by _fit: the boxes back inside the image
                        boxes = np.minimum(boxes, np.asarray([sizes[k][1], sizes[k][0]] * 2, dtype=boxes.dtype))
                    results[k] = {"boxes": boxes, "labels": labels, "scores": scores, "difficulty": phi, "route": route}
        return results

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """The image, zero-padded below or to the right where the graphs' resize (scale =
        min(min_size / short side, max_size / long side), floored) would give a side of 0 px."""
        t = self.meta["transform"]
        h, w = image.shape[-2:]
        scale = min(t["min_size"] / min(h, w), t["max_size"] / max(h, w))
        need = math.ceil(1.0 / scale) + 1  # a side of `need` pixels resizes to one pixel at least
        if min(h, w) * scale >= 1.0:
            return image
        return np.pad(image, ((0, 0), (0, max(need - h, 0)), (0, max(need - w, 0))))


def nms_per_class(boxes: np.ndarray, scores: np.ndarray, post: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's detections from every point's boxes A,4 and class scores A,C: the pairs above
    score_thresh, the topk_candidates best, greedy NMS per class at nms_thresh, at most
    detections_per_img. Returns boxes N,4, labels N (1-based), scores N, best first."""
    flat = scores.reshape(-1)
    keep = np.nonzero(flat > post["score_thresh"])[0]
    keep = keep[np.argsort(-flat[keep], kind="stable")][: post["topk_candidates"]]
    point, label = keep // scores.shape[1], keep % scores.shape[1]
    box, score = boxes[point], flat[keep]
    shifted = box + (label * (box.max(initial=0) + 1))[:, None]  # boxes of different classes never overlap
    area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    order, kept = np.arange(len(keep)), []
    while order.size and len(kept) < post["detections_per_img"]:
        first, rest = order[0], order[1:]
        kept.append(first)
        lt = np.maximum(shifted[first, :2], shifted[rest, :2])
        rb = np.minimum(shifted[first, 2:], shifted[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        iou = inter / (area[first] + area[rest] - inter + 1e-12)
        order = rest[iou <= post["nms_thresh"]]
    kept = np.asarray(kept, dtype=np.int64)
    return box[kept], (label[kept] + 1).astype(np.int64), score[kept]


def read_image(path: str | Path) -> np.ndarray:
    """An image file as float32 3,H,W RGB in [0, 1]."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I"):  # 16-bit gray: convert("RGB") would clip it at 255
                gray = np.asarray(im, dtype=np.float32) / 65535.0
                return np.repeat(gray[None], 3, axis=0)
            return np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # missing, truncated, not an image
        reason = " ".join(str(err).split()) or type(err).__name__
        raise SystemExit(f"error: {path}: cannot read the image ({reason})") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise SystemExit(f"error: {message} (see {self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="folder written by `dynamicdet export --format onnx`")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--point", help="stored operating point (default: the export's default), or easy / hard")
    parser.add_argument("--tau", type=float, help="difficulty threshold: phi > tau takes the hard route")
    parser.add_argument("--batch-size", type=int, default=8, help="images per run of graph 1")
    parser.add_argument("--conf", type=float, default=0.3, help="score threshold of printed detections")
    parser.add_argument("--threads", type=int, help="onnxruntime threads")
    args = parser.parse_args(argv)
    if args.tau is not None and not math.isfinite(args.tau):
        parser.error(f"--tau {args.tau}: give a finite threshold (phi > tau goes hard; below 0 every image "
                     "goes hard, 1 or more every image easy)")
    if args.batch_size < 1 or not 0.0 <= args.conf <= 1.0 or (args.threads is not None and args.threads < 1):
        parser.error("--batch-size and --threads take 1 or more, --conf a score in [0, 1]")
    model = DynamicDetONNX(args.export, args.threads)
    tau = model.tau_for(args.point, args.tau)
    images = [read_image(p) for p in args.images]
    for path, det in zip(args.images, model.detect(images, tau, args.batch_size)):
        keep = det["scores"] >= args.conf
        detections = [{"box": [round(float(v), 2) for v in box], "score": round(float(s), 4),
                       "label": model.classes[int(lab) - 1]}
                      for box, lab, s in zip(det["boxes"][keep], det["labels"][keep], det["scores"][keep])]
        print(json.dumps({"file": str(path), "route": det["route"], "difficulty": round(det["difficulty"], 6),
                          "detections": detections}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit as stop:
        if isinstance(stop.code, str):  # a user error: its one line, status 2 (as dynamicdet's)
            print(stop.code, file=sys.stderr)
            sys.exit(2)
        raise
