"""Bench: Dy-YOLO's cost against the detectors users would otherwise run, and its training memory.

    python bench/bench_yolo.py [--recipe recipes/dy-yolo-s.yaml] [--image-size 640] [--threads 2]
        [--repeats 10] [--train-boxes 500] [--train-batch 8] [--skip-train] [--json out.json]
    python bench/bench_yolo.py --easy MODEL --against MODEL [--image-size 128] [--batch-sizes 1 8]
    python bench/bench_yolo.py --family recipes/dy-yolo-{n,s,m,l,x}.yaml [--image-size 640] [--batch-sizes 1]

1. Latency at batch 1 on this device: the recipe's easy route, its hard route, and torchvision's
   fcos_resnet50_fpn and retinanet_resnet50_fpn_v2 set to the same input size (fresh weights,
   80 classes; min_size = max_size = the image size). Calls alternate model by model, after
   warm-up, so drift hits all alike; medians and the ratio easy / FCOS and easy / RetinaNet
   (the issue's goal: at most 1/3). FLOPs of each (torch's FlopCounterMode, 2 x MACs).
2. Memory of one training step (forward and backward of both detectors, joint loss) at
   --train-batch images of --image-size with --train-boxes boxes each: on CUDA the peak
   allocated by torch; on the CPU (Linux) the process's resident memory before the step and its
   peak during it (the peak reset just before, through /proc/self/clear_refs), in a fresh process.
3. With --easy and --against (each a checkpoint or a recipe, fresh weights): the easy route
   (detector 1 and the router) of one against the other's, on the same images, calls
   alternated, at each --batch-sizes; ms per image and the ratio. This is how the tiny YOLO's
   detector 1 is timed against the Faster R-CNN demo's.
4. With --family (recipes, fresh weights, timed as YOLO_TIMING_SETS says): every route of every
   recipe, calls alternated over all of them at each --batch-sizes; ms per image, FPS, the hard
   route's time over the easy route's beside its FLOP ratio, and the ms per image at 10% and 50%
   hard on the straight line between the routes. gpu_check.py runs the same on the GPU under
   float16 autocast.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from dynamicdet_cli.model.build import build_model  # noqa: E402
from dynamicdet_cli.config.recipe import load_recipe, with_overrides  # noqa: E402
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402
from dynamicdet_cli.model.cost import route_flops, route_params  # noqa: E402
from bench_easy_route import alternate_many, autocast_for  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it


def flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return float(counter.get_total_flops())


@torch.no_grad()
def alternate_ms(calls: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times = {name: [] for name in calls}
    for i in range(repeats):
        order = list(calls) if i % 2 == 0 else list(calls)[::-1]
        for name in order:
            start = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def latency(recipe_path: str, side: int, repeats: int, warmup: int) -> dict:
    from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn_v2

    cfg = with_overrides(load_recipe(recipe_path), [f"model.transform.min_size={side}",
                                                    f"model.transform.max_size={side}"]).model
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    common = dict(weights=None, weights_backbone=None, num_classes=80, min_size=side, max_size=side)
    fcos = fcos_resnet50_fpn(**common).eval()
    retina = retinanet_resnet50_fpn_v2(**common).eval()
    image = [torch.rand(3, side, side, generator=torch.Generator().manual_seed(0))]
    calls = {"easy": lambda: model(image, route="easy"), "hard": lambda: model(image, route="hard"),
             "fcos_resnet50_fpn": lambda: fcos(image), "retinanet_resnet50_fpn_v2": lambda: retina(image)}
    times = alternate_ms(calls, warmup, repeats)
    out = {name: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t),
                  "gflops": flops(calls[name]) / 1e9} for name, t in times.items()}
    for ref in ("fcos_resnet50_fpn", "retinanet_resnet50_fpn_v2"):
        out[f"easy/{ref}"] = out["easy"]["median_ms"] / out[ref]["median_ms"]
    out["hard/easy"] = out["hard"]["median_ms"] / out["easy"]["median_ms"]
    return out


_STEP = r"""
import json, resource, sys, torch
sys.path.insert(0, {root!r})
from dynamicdet_cli.model.build import build_model
from dynamicdet_cli.config.recipe import load_recipe, with_overrides
torch.set_num_threads({threads})
side, batch, boxes = {side}, {batch}, {boxes}
cfg = with_overrides(load_recipe({recipe!r}), [f"model.transform.min_size={{side}}", f"model.transform.max_size={{side}}"]).model
device = torch.device({device!r})
torch.manual_seed(0)
model = build_model(cfg).to(device).train()
g = torch.Generator().manual_seed(0)
images = [torch.rand(3, side, side, generator=g).to(device) for _ in range(batch)]
targets = []
for _ in range(batch):
    xy = torch.rand(boxes, 2, generator=g) * (side - 40)
    targets.append({{"boxes": torch.cat([xy, xy + 4 + torch.rand(boxes, 2, generator=g) * 36], 1).to(device),
                    "labels": torch.randint(1, cfg.num_classes + 1, (boxes,), generator=g).to(device)}})
def status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
before = status_mb("VmRSS")
try:  # Linux: reset the peak (VmHWM) to the current size, so the peak below is the step's
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
if device.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
t = __import__("time").perf_counter()
loss = model(images, targets)["loss"]
loss.backward()
if device.type == "cuda":
    torch.cuda.synchronize()
seconds = __import__("time").perf_counter() - t
out = {{"seconds": seconds, "loss_finite": bool(torch.isfinite(loss)), "peak_rss_mb_before": before,
        "peak_rss_mb_after": status_mb("VmHWM")}}
if device.type == "cuda":
    out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(out))
"""


def train_step_memory(recipe: str, side: int, batch: int, boxes: int, threads: int, device: str) -> dict:
    code = _STEP.format(root=str(Path(__file__).resolve().parent.parent), threads=threads, side=side, batch=batch,
                        boxes=boxes, recipe=recipe, device=device)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["step_rss_mb"] = out["peak_rss_mb_after"] - out["peak_rss_mb_before"]
    return out


def _load(spec: str, side: int):
    if spec.endswith(".pt"):
        from dynamicdet_cli.checkpoint.store import load_checkpoint, model_from_checkpoint
        model = model_from_checkpoint(load_checkpoint(spec), "cpu")
    else:
        cfg = with_overrides(load_recipe(spec), [f"model.transform.min_size={side}",
                                                 f"model.transform.max_size={side}"]).model
        torch.manual_seed(0)
        model = build_model(cfg)
    return model.eval()


def easy_against(ours: str, theirs: str, side: int, batch_sizes: list[int], repeats: int, warmup: int) -> dict:
    a, b = _load(ours, side), _load(theirs, side)
    g = torch.Generator().manual_seed(0)
    out = {}
    for batch in batch_sizes:
        images = [torch.rand(3, side, side, generator=g) for _ in range(batch)]
        times = alternate_ms({"ours": lambda: a(images, route="easy"), "theirs": lambda: b(images, route="easy")},
                             warmup, repeats)
        ours_ms, theirs_ms = (statistics.median(times[k]) / batch for k in ("ours", "theirs"))
        out[str(batch)] = {"ours_ms_per_image": ours_ms, "theirs_ms_per_image": theirs_ms, "ratio": ours_ms / theirs_ms}
        print(f"batch {batch}: easy route {ours_ms:.2f} ms/image ({ours}) against {theirs_ms:.2f} ({theirs}): "
              f"{ours_ms / theirs_ms:.3f}x")
    return out


# Fresh weights score every class near its prior (1e-5 to 1e-4), under the recipes' 0.001: no
# candidate would reach top-k and NMS, which a trained model's do. At 0 the topk_candidates best
# of every image go through NMS, as a trained model's would at worst.
YOLO_TIMING_SETS = ["model.yolo.score_thresh=0.0"]


def family_latency(recipes: list[str], side: int, batch_sizes: list[int], warmup: int, repeats: int,
                   device: torch.device = torch.device("cpu"), amp: bool = False, sync=lambda: None,
                   partial: dict | None = None) -> dict:
    """Per-image latency of each recipe's easy and hard route, every call alternated with the others.

    Returns {"rows": [...]} with, per recipe and batch: median ms per image of each route, FPS,
    hard / easy in time and in FLOPs, and the ms per image at 10% and 50% hard (lat1 + h (lat2 - lat1)).
    `partial` (a dict) receives the rows as they are measured, so a caller cut short keeps them."""
    models, cost = {}, {}
    for path in recipes:
        cfg = with_overrides(load_recipe(path), YOLO_TIMING_SETS + [f"model.transform.min_size={side}",
                                                                      f"model.transform.max_size={side}"]).model
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        flops_, params = route_flops(model, side, side), route_params(model)
        cost[path] = {"easy_gflops": flops_["easy"] / 1e9, "hard_gflops": flops_["hard"] / 1e9,
                      "easy_mparams": params["easy"] / 1e6, "hard_mparams": params["hard"] / 1e6}
        models[path] = model.to(device)
    out = partial if partial is not None else {}
    out.update(side=side, amp=amp, device=str(device), overrides=YOLO_TIMING_SETS, rows=[])
    for batch in batch_sizes:
        g = torch.Generator().manual_seed(batch)
        images = [torch.rand(3, side, side, generator=g).to(device) for _ in range(batch)]
        names = [(path, route) for path in recipes for route in ("easy", "hard")]
        calls = [lambda m=models[path], r=route: m.detect(images, route=r) for path, route in names]
        with torch.inference_mode(), autocast_for(device, amp):
            times = alternate_many(calls, warmup, repeats, sync)
        ms = {name: statistics.median(t) / batch for name, t in zip(names, times)}
        for path in recipes:
            easy, hard = ms[(path, "easy")], ms[(path, "hard")]
            c = cost[path]
            row = {"recipe": Path(path).name, "batch": batch, "easy_ms": round(easy, 3), "hard_ms": round(hard, 3),
                   "fps_easy": round(1000 / easy, 1), "fps_hard": round(1000 / hard, 1),
                   "hard_over_easy_time": round(hard / easy, 3),
                   "hard_over_easy_flops": round(c["hard_gflops"] / c["easy_gflops"], 3),
                   "ms_at_10pct_hard": round(easy + 0.1 * (hard - easy), 3),
                   "ms_at_50pct_hard": round(easy + 0.5 * (hard - easy), 3),
                   **{k: round(v, 2) for k, v in c.items()}}
            out["rows"].append(row)
    return out


def print_family(result: dict) -> None:
    print(f"{result['side']} px, {result['device']}, {'autocast' if result['amp'] else 'float32'}, "
          f"median ms per image over alternated calls ({', '.join(result['overrides'])}):")
    print(f"  {'recipe':22s} {'batch':>5s} {'easy GFLOPs':>11s} {'hard GFLOPs':>11s} {'easy ms':>9s} {'hard ms':>9s} "
          f"{'hard/easy time':>14s} {'flops':>6s} {'FPS easy':>9s} {'FPS hard':>9s}")
    for r in result["rows"]:
        print(f"  {r['recipe']:22s} {r['batch']:5d} {r['easy_gflops']:11.1f} {r['hard_gflops']:11.1f} {r['easy_ms']:9.1f} "
              f"{r['hard_ms']:9.1f} {r['hard_over_easy_time']:14.3f} {r['hard_over_easy_flops']:6.3f} "
              f"{r['fps_easy']:9.1f} {r['fps_hard']:9.1f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/dy-yolo-s.yaml")
    ap.add_argument("--image-size", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--train-boxes", type=int, default=500)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="for the training step: cpu or cuda")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--easy", help="checkpoint or recipe whose easy route is timed against --against's")
    ap.add_argument("--against", help="checkpoint or recipe")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="--easy/--against: default 1 8; --family: default 1")
    ap.add_argument("--family", nargs="+", help="recipes whose routes are timed side by side")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.family:
        result = {"threads": args.threads, "torch": torch.__version__,
                  **family_latency(args.family, args.image_size, args.batch_sizes or [1], args.warmup, args.repeats)}
        print_family(result)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))
        return
    if args.easy:
        result = {"easy": args.easy, "against": args.against, "image_size": args.image_size, "threads": args.threads,
                  "batches": easy_against(args.easy, args.against, args.image_size, args.batch_sizes or [1, 8], args.repeats,
                                          args.warmup)}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))
        return
    result = {"recipe": args.recipe, "image_size": args.image_size, "threads": args.threads,
              "torch": torch.__version__, "latency": latency(args.recipe, args.image_size, args.repeats, args.warmup)}
    lat = result["latency"]
    print(f"batch 1, {args.image_size} px, {args.threads} threads, median ms over {args.repeats} alternated calls:")
    for name in ("easy", "hard", "fcos_resnet50_fpn", "retinanet_resnet50_fpn_v2"):
        r = lat[name]
        print(f"  {name:28s} {r['median_ms']:9.1f} ms  (min {r['min_ms']:.1f}, max {r['max_ms']:.1f})  "
              f"{r['gflops']:7.1f} GFLOPs")
    print(f"  easy / fcos {lat['easy/fcos_resnet50_fpn']:.3f}, easy / retinanet {lat['easy/retinanet_resnet50_fpn_v2']:.3f}, "
          f"hard / easy {lat['hard/easy']:.3f}")
    if not args.skip_train:
        mem = train_step_memory(args.recipe, args.image_size, args.train_batch, args.train_boxes, args.threads,
                                args.device)
        result["train_step"] = {"batch": args.train_batch, "boxes_per_image": args.train_boxes, **mem}
        print(f"one training step, batch {args.train_batch}, {args.train_boxes} boxes per image: "
              f"{mem['seconds']:.1f} s, peak RSS +{mem['step_rss_mb']:.0f} MB "
              f"({mem['peak_rss_mb_before']:.0f} -> {mem['peak_rss_mb_after']:.0f} MB)"
              + (f", CUDA peak {mem['cuda_peak_allocated_mb']:.0f} MB" if "cuda_peak_allocated_mb" in mem else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
