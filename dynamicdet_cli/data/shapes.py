"""The built-in synthetic dataset: colored shapes whose difficulty varies per image.

Each image draws a difficulty d ~ U(0, 1) (stored as the extra COCO image field
`difficulty`). Everything that makes detection hard grows smoothly with d:

  d -> 0: 1-3 large shapes (30-60% of the side), strong contrast, plain background.
  d -> 1: up to 15 small shapes (down to 8 px at 128 px), low contrast, overlaps,
          faint clutter (lines, arcs, thin ellipses that belong to no class), Gaussian noise.

A split can be written unlike the others (`difficulty`, see parse_difficulty): every image's d
drawn from a narrower range (a stream of hard-ish images), or d rising from easy to hard along
the file order (a stream that drifts), to feed a detector a stream unlike its validation set.

So a small detector handles the easy images and a twice-as-deep one pays off on the hard
ones, which is the situation DynamicDet's router learns to tell apart.

Boxes are the tight pixel extent of each whole shape (an occluded shape keeps its full
box, as in COCO); shapes more than 70% hidden by later ones are not annotated. Each
annotation also carries its exact instance mask (COCO RLE in `segmentation`): the pixels
the shape was painted on and no later shape covers, so the demo data serves the segmenting
families too; `area` is that mask's pixel count.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util

from dynamicdet_cli.core.atomic import write_text
from dynamicdet_cli.core.cpus import usable_cores
from dynamicdet_cli.core.errors import DynamicDetError

CLASSES = ("circle", "square", "triangle", "cross", "ring")
MAX_HIDDEN = 0.7  # shapes hidden more than this are too ambiguous to annotate
PARALLEL_FROM = 256  # splits this large are drawn by one process per core (up to MAX_WORKERS)
MAX_WORKERS = 8


@dataclass(frozen=True)
class Difficulty:
    """How a split's difficulties are drawn: d in [low, high]; with `drift`, image i of n draws
    d in the i-th of n equal slices of that range, so d rises along the file order."""

    low: float = 0.0
    high: float = 1.0
    drift: bool = False

    def of(self, u: float, i: int, n: int) -> float:
        """Image i's difficulty from its uniform draw u in [0, 1)."""
        t = (i + u) / n if self.drift else u
        return self.low + (self.high - self.low) * t


def parse_difficulty(text: str) -> Difficulty:
    """'0.6-1' (every image's d in [0.6, 1]), 'drift' (d rising from 0 to 1 along the file
    order) or 'drift:0.2-0.9' (rising from 0.2 to 0.9)."""
    spec = str(text).strip().lower()
    drift = spec == "drift" or spec.startswith("drift:")
    bounds = spec.removeprefix("drift").removeprefix(":") if drift else spec
    if drift and not bounds:
        return Difficulty(drift=True)
    try:
        low, high = (float(v) for v in bounds.split("-"))
    except ValueError:
        low = high = math.nan
    if not 0.0 <= low <= high <= 1.0:
        raise DynamicDetError(f"difficulty {text!r}: write a range LOW-HIGH within 0-1 (e.g. 0.6-1), 'drift' "
                              "(easy to hard along the file order) or 'drift:LOW-HIGH'")
    return Difficulty(low, high, drift)


def make_shapes(out: Path, n_train: int = 2048, n_val: int = 512, size: int = 128, seed: int = 0,
                n_router: int = 0, force: bool = False, val_difficulty: Difficulty | None = None) -> Path:
    """Write the shapes dataset under `out` and return the path of its data YAML.

    Layout: out/train/NNNNNN.png, out/val/NNNNNN.png, out/train.json, out/val.json (COCO:
    images carry id, file_name, width, height, difficulty; categories ids start at 1) and
    out/data.yaml (train_ann, train_images, val_ann, val_images, relative to `out`). With
    n_router > 0 also out/router/ and out/router.json, a split for the router's targets
    (router_ann, router_images). The same arguments give byte-identical files, and the
    train and val splits do not depend on n_router.

    A folder that is not empty is refused (its images and annotations would disagree once
    some are replaced); with `force`, what an earlier make-shapes wrote there (train/, val/,
    router/, their JSON files, data.yaml) is removed first and other files are left alone.

    `val_difficulty`: how the val split's difficulties are drawn (Difficulty); None: uniform
    in [0, 1] like the other splits. Each image draws the same random numbers either way, so
    only its difficulty changes; train and router are not affected.
    """
    if n_train < 1 or n_val < 0 or n_router < 0:
        raise DynamicDetError(f"need n_train >= 1, n_val >= 0 and n_router >= 0, got {n_train}, {n_val}, {n_router}")
    if size < 32:
        raise DynamicDetError(f"image size {size} is too small; use at least 32")
    out = Path(out)
    _prepare(out, force)
    splits = {"train": (n_train, 0), "val": (n_val, 1), "router": (n_router, 2)}  # split -> (images, stream)
    config = {}
    for split, (n, stream) in splits.items():
        if n == 0:
            continue
        (out / split).mkdir(parents=True, exist_ok=True)
        coco = _make_split(out / split, n, size, seed, stream, val_difficulty if split == "val" else None)
        write_text(out / f"{split}.json", json.dumps(coco, indent=1))
        config.update({f"{split}_ann": f"{split}.json", f"{split}_images": split})
    path = out / "data.yaml"
    write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path


_OUTPUTS = ("train", "val", "router", "train.json", "val.json", "router.json", "data.yaml")


def _prepare(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DynamicDetError(f"{out} is a file: give a folder to write the dataset into")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise DynamicDetError(f"{out} is not empty: choose an empty or new folder, or replace the dataset "
                              "in it with --force")
    for name in _OUTPUTS:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def _make_split(folder: Path, n: int, size: int, seed: int, split_index: int,
                difficulty: Difficulty | None = None) -> dict:
    jobs = [(folder, size, seed, split_index, i, n, difficulty) for i in range(n)]
    workers = min(usable_cores(), MAX_WORKERS) if n >= PARALLEL_FROM else 1
    if workers > 1:
        # Each image depends only on (seed, split, index): drawing them in parallel processes
        # writes the same bytes. fork, where there is one, starts a worker in milliseconds.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            drawn = pool.map(_draw_and_save, jobs, chunksize=32)
    else:
        drawn = [_draw_and_save(job) for job in jobs]
    images, annotations = [], []
    for i, (d, objects) in enumerate(drawn):
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "width": size, "height": size,
                       "difficulty": round(d, 4)})
        for cls, box, area, rle in objects:
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "iscrowd": 0,
                                "segmentation": rle})
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _draw_and_save(job: tuple) -> tuple[float, list]:
    """Draw image `i` of a split, save it as NNNNNN.png in `folder`; return (d, objects), each
    object (class index, box, visible area, COCO RLE of its visible mask)."""
    folder, size, seed, split_index, i, n, difficulty = job
    rng = np.random.default_rng([seed, split_index, i])  # one generator per image
    d = float(rng.uniform())
    if difficulty is not None:
        d = difficulty.of(d, i, n)
    pixels, objects = render_image(rng, d, size)
    Image.fromarray(pixels).save(folder / f"{i:06d}.png", compress_level=1)
    return d, [(cls, box, area, encode_mask(mask)) for cls, box, area, mask in objects]


def render_image(rng: np.random.Generator, d: float, size: int) -> tuple[np.ndarray, list]:
    """Draw one image of difficulty d in [0, 1].

    Returns (uint8 [size, size, 3], [(class_index, (x1, y1, x2, y2) ints, visible_area,
    visible_mask bool [size, size])]): the box spans the whole shape, the mask only the pixels
    left showing the shape's colour (before noise), so visible_area == visible_mask.sum().
    """
    bg_level = rng.uniform(0.15, 0.85)
    bg_color = np.clip(bg_level + rng.uniform(-0.1, 0.1, 3), 0, 1)
    contrast = _lerp(0.7, 0.14, d) * rng.uniform(0.85, 1.15)
    # Push shapes away from the nearer bound so the contrast is reachable.
    sign = -1.0 if bg_level > 0.5 else 1.0

    canvas = _background(rng, d, size, bg_color)  # H,W,3 float
    _draw_clutter(rng, d, size, canvas, bg_color, contrast)
    _draw_distractors(rng, d, size, canvas, bg_color, sign * contrast)

    n_min, n_max = round(_lerp(1, 8, d)), round(_lerp(3, 15, d))
    shapes = _place_shapes(rng, d, size, int(rng.integers(n_min, n_max + 1)))
    owner = np.full((size, size), -1, dtype=np.int16)  # topmost shape index per pixel
    masks = []
    for k, (cls, cx, cy, r, angle) in enumerate(shapes):
        mask = _shape_mask(cls, cx, cy, r, angle, size)
        color = np.clip(bg_color + sign * contrast * rng.uniform(0.7, 1.3, 3), 0, 1)
        canvas[mask] = color
        owner[mask] = k
        masks.append(mask)

    noise = _lerp(0.0, 0.06, d)
    if noise > 0:
        canvas += rng.normal(0.0, noise, canvas.shape)
    pixels = np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8)

    objects = []
    for k, mask in enumerate(masks):
        full, visible = int(mask.sum()), int((owner == k).sum())
        if full == 0 or visible < (1 - MAX_HIDDEN) * full:
            continue
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append((shapes[k][0], box, visible, owner == k))
    return pixels, objects


def encode_mask(mask: np.ndarray) -> dict:
    """A bool [H, W] mask as COCO compressed RLE, JSON-ready ({"size": [H, W], "counts": str})."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _background(rng: np.random.Generator, d: float, size: int, color: np.ndarray) -> np.ndarray:
    """Plain color, plus a gentle random gradient as d grows (uneven lighting)."""
    canvas = np.empty((size, size, 3), dtype=np.float64)
    canvas[:] = color
    amp = _lerp(0.0, 0.1, d)
    if amp > 0:
        theta = rng.uniform(0, 2 * math.pi)
        ramp = np.linspace(-1, 1, size)
        grad = math.cos(theta) * ramp[None, :] + math.sin(theta) * ramp[:, None]  # H,W
        canvas += amp * grad[..., None]
    return canvas


def _draw_clutter(rng: np.random.Generator, d: float, size: int, canvas: np.ndarray,
                  bg_color: np.ndarray, contrast: float) -> None:
    """Faint lines, arcs and thin ellipses: edges that look like object parts but are not."""
    n = int(round(_lerp(0, 20, d ** 1.5)))
    if n == 0:
        return
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(n):
        layer.paste(0, (0, 0, size, size))
        kind = rng.integers(3)
        x0, y0 = rng.uniform(0, size, 2)
        length = rng.uniform(0.1, 0.5) * size
        width = int(rng.integers(1, 3))
        if kind == 0:
            a = rng.uniform(0, 2 * math.pi)
            end = (x0 + length * math.cos(a), y0 + length * math.sin(a))
            draw.line([(x0, y0), end], fill=255, width=width)
        elif kind == 1:
            start = rng.uniform(0, 360)
            sweep = rng.uniform(60, 200)
            draw.arc([x0, y0, x0 + length, y0 + length], start, start + sweep, fill=255, width=width)
        else:
            horizontal, thin = rng.uniform() < 0.5, length / rng.uniform(3, 6)  # aspect 3-6: no circle
            w, h = (length, thin) if horizontal else (thin, length)
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=255)
        strength = rng.uniform(0.3, 1.0) * contrast * rng.choice([-1.0, 1.0])
        canvas[np.asarray(layer) > 0] = np.clip(bg_color + strength * rng.uniform(0.7, 1.3, 3), 0, 1)


def _draw_distractors(rng: np.random.Generator, d: float, size: int, canvas: np.ndarray,
                      bg_color: np.ndarray, contrast: float) -> None:
    """Object-like shapes of no class, drawn like the objects: pentagons and hexagons (near a
    circle), oblong rectangles (near a square), open rings and half crosses. Only telling
    shapes apart rejects them, which takes more than contrast: this is the part of a hard
    image where a bigger detector pays off."""
    n = int(round(_lerp(0, 6, d ** 2) * rng.uniform(0.5, 1.5)))
    for cls, cx, cy, r, angle in _place_shapes(rng, d, size, n):
        layer = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(layer)
        kind = int(rng.integers(5))
        if kind in (0, 1):  # pentagon, hexagon
            draw.polygon(_regular(cx, cy, r, 5 + kind, angle), fill=255)
        elif kind == 2:  # rectangle of aspect 1.6-2.2
            w, h = r, r / rng.uniform(1.6, 2.2)
            c, s = math.cos(angle), math.sin(angle)
            pts = [(-w, -h), (w, -h), (w, h), (-w, h)]
            draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], fill=255)
        elif kind == 3:  # a ring with a gap
            start = math.degrees(angle)
            draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + 260, fill=255, width=max(2, int(0.45 * r)))
        else:  # half a cross: an L
            a, h = r * 0.9, r * 0.36
            pts = [(-h, -a), (h, -a), (h, h), (a, h), (a, h + 2 * h), (-h, h + 2 * h)]
            c, s = math.cos(angle), math.sin(angle)
            draw.polygon([(cx + x * c - y * s, cy - a / 2 + x * s + y * c) for x, y in pts], fill=255)
        canvas[np.asarray(layer) > 0] = np.clip(bg_color + contrast * rng.uniform(0.7, 1.3, 3), 0, 1)


def _place_shapes(rng: np.random.Generator, d: float, size: int, n: int) -> list[tuple]:
    """(class, cx, cy, radius, angle) per shape; the overlap allowed grows with d."""
    lo = max(_lerp(0.30, 0.0625, d), 8 / 128) * size  # diameter bounds in pixels
    hi = _lerp(0.60, 0.22, d) * size
    max_overlap = _lerp(0.0, 0.5, d)
    placed: list[tuple] = []
    for _ in range(n):
        for _attempt in range(20):
            diam = math.exp(rng.uniform(math.log(lo), math.log(max(hi, lo))))
            r = diam / 2
            cx, cy = rng.uniform(r, size - r, 2)
            if all(_overlap(cx, cy, r, p[1], p[2], p[3]) <= max_overlap for p in placed):
                placed.append((int(rng.integers(len(CLASSES))), cx, cy, r, rng.uniform(0, 2 * math.pi)))
                break
    return placed


def _overlap(cx: float, cy: float, r: float, ox: float, oy: float, orad: float) -> float:
    """Intersection of the two bounding squares over the smaller one's area."""
    ix = max(0.0, min(cx + r, ox + orad) - max(cx - r, ox - orad))
    iy = max(0.0, min(cy + r, oy + orad) - max(cy - r, oy - orad))
    return ix * iy / (4 * min(r, orad) ** 2)


def _shape_mask(cls: int, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """Boolean [size, size] mask of one shape of circumradius r."""
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    name = CLASSES[cls]
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = 0.55 * r
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif name == "square":
        draw.polygon(_regular(cx, cy, r, 4, angle), fill=255)
    elif name == "triangle":
        draw.polygon(_regular(cx, cy, r, 3, angle), fill=255)
    else:  # cross: a plus sign whose arms are 40% of its span wide
        a = r / math.sqrt(1.16)  # arm tips touch the circumcircle: a^2 + (0.4 a)^2 = r^2
        h = 0.4 * a
        pts = [(h, a), (h, h), (a, h), (a, -h), (h, -h), (h, -a),
               (-h, -a), (-h, -h), (-a, -h), (-a, h), (-h, h), (-h, a)]
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], fill=255)
    return np.asarray(layer) > 0


def _regular(cx: float, cy: float, r: float, k: int, angle: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(angle + 2 * math.pi * j / k), cy + r * math.sin(angle + 2 * math.pi * j / k))
            for j in range(k)]
