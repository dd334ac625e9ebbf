"""What one training-loader worker delivers: samples per second and the bytes each sample ships,
for a recipe's augmentation on JPEG photos of a given size, now against the order used before
(every image converted to float32 at its file's size and augmented there; a mosaic's four then
scaled to their quarters).

A DataLoader worker runs one torch thread, so this runs in-process on one thread: multiply by
`train.workers` (at most the machine's cores) for what the loader can feed a device. Both
pipelines read the same files in the same process, alternated round by round (A B B A ...) to
cancel drift; the ratio is the figure to read.

    python bench/bench_loader.py                                   # dy-faster-rcnn-r50-fpn, dy-yolo-s
    python bench/bench_loader.py --sizes 640x480 4032x3024 --samples 48 --rounds 4

The images are generated (smooth colour fields, boxes and noise, saved as JPEG quality 90) so
that decoding costs what a photo's does; the figures go to docs/benchmarks.md with the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torchvision.io import encode_jpeg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynamicdet_cli.config.recipe import find_recipe, load_recipe  # noqa: E402
from dynamicdet_cli.data.mosaic import Mosaic, mosaic  # noqa: E402
from dynamicdet_cli.data.open import open_dataset  # noqa: E402


def write_photos(folder: Path, count: int, width: int, height: int, seed: int = 0) -> Path:
    """`count` JPEGs of width x height with 3-8 boxed rectangles each, and their COCO JSON."""
    g = torch.Generator().manual_seed(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(count):
        low = torch.rand(3, 1, height // 64 + 2, width // 64 + 2, generator=g)
        field = torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear")[:, 0]
        pixels = field + 0.08 * torch.randn(3, height, width, generator=g)
        for _ in range(int(torch.randint(3, 9, (1,), generator=g))):
            w = int(torch.randint(width // 20, width // 3, (1,), generator=g))
            h = int(torch.randint(height // 20, height // 3, (1,), generator=g))
            x = int(torch.randint(0, width - w, (1,), generator=g))
            y = int(torch.randint(0, height - h, (1,), generator=g))
            pixels[:, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=g)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
        name = f"{i:04d}.jpg"
        data = encode_jpeg((pixels.clamp(0, 1) * 255).to(torch.uint8), quality=90)
        (folder / "images" / name).write_bytes(data.numpy().tobytes())
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
    ann = folder / "train.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 1, "name": "box"}]}))
    return ann


class BeforeMosaic(torch.utils.data.Dataset):
    """The order used before: each of the four read and augmented at its file's size, then
    scaled to its quarter by data.mosaic.mosaic."""

    def __init__(self, dataset, prob: float):
        self.dataset, self.prob = dataset, prob

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        first = self.dataset[index]
        if float(torch.rand(())) >= self.prob:
            return first
        others = [self.dataset[int(i)] for i in torch.randint(len(self.dataset), (3,))]
        return mosaic([first, *others], (torch.rand(2) * 0.5 + 0.25).tolist())


def pipelines(recipe_path: str, ann: Path) -> dict:
    """{'before': dataset, 'now': dataset} as train-detectors reads the recipe's first epochs."""
    recipe = load_recipe(find_recipe(recipe_path))
    augment, size = recipe.train.augment, recipe.model.transform
    plain = open_dataset(ann, ann.parent / "images", True, augment)
    fitted = plain.fit_to(*size.largest_training_input())
    if augment.mosaic > 0:
        return {"before": BeforeMosaic(plain, augment.mosaic), "now": Mosaic(fitted, augment.mosaic)}
    return {"before": plain, "now": fitted}


def time_pipelines(datasets: dict, samples: int, rounds: int) -> dict:
    """Median ms per sample of each pipeline over `rounds` alternated rounds, and the mean
    float32 bytes of the images it delivered."""
    names = list(datasets)
    ms = {n: [] for n in names}
    shipped = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            torch.manual_seed(r)
            data = datasets[name]
            data[0]  # warm-up: first-touch allocations
            start = time.perf_counter()
            for i in range(samples):
                image, _ = data[i % len(data)]
                shipped[name].append(image.numel() * image.element_size())
            ms[name].append((time.perf_counter() - start) * 1000 / samples)
    out = {n: {"ms_per_sample": round(statistics.median(ms[n]), 2),
               "rounds_ms": [round(v, 2) for v in ms[n]],
               "samples_per_s": round(1000 / statistics.median(ms[n]), 1),
               "mb_per_sample": round(statistics.mean(shipped[n]) / 2**20, 2)} for n in names}
    out["speedup"] = round(out["before"]["ms_per_sample"] / out["now"]["ms_per_sample"], 2)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=["dy-faster-rcnn-r50-fpn", "dy-yolo-s"])
    ap.add_argument("--sizes", nargs="+", default=["640x480", "4032x3024"], help="WIDTHxHEIGHT of the photos")
    ap.add_argument("--images", type=int, default=12, help="photos written per size")
    ap.add_argument("--samples", type=int, default=24, help="samples timed per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a loader worker has one)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/loader.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "cpu": _cpu_name(), "torch": torch.__version__, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            width, height = (int(v) for v in size.lower().split("x"))
            ann = write_photos(Path(tmp) / size, args.images, width, height)
            for recipe in args.recipes:
                row = {"recipe": recipe, "photo": size, **time_pipelines(pipelines(recipe, ann), args.samples,
                                                                          args.rounds)}
                results["runs"].append(row)
                print(f"{recipe:26s} {size:>10s}  before {row['before']['ms_per_sample']:8.1f} ms "
                      f"({row['before']['mb_per_sample']:7.1f} MB)   now {row['now']['ms_per_sample']:7.1f} ms "
                      f"({row['now']['mb_per_sample']:5.1f} MB)   {row['speedup']:.2f}x", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
