"""Latency of each route exported (onnxruntime, TorchScript) against the PyTorch model, on the CPU, in one run.

The demo-size tiny model (recipes/shapes-tiny.yaml, 128 px) is exported to ONNX and TorchScript
in a temporary folder; then each route runs the same images under the three backends, the
backends taking turns image by image (A B C, C B A, ...) so that drift and other load on the
machine hit them alike. Reported: the median ms per image of each backend and route, and the
exported backends' ratios to PyTorch (below 1 = faster). onnxruntime runs the example's
runtime (examples/onnx_predict.py: graph 1, then the route's graph), TorchScript its
forward(images, tau); tau = 1 routes every image easy, tau = -1 every image hard.

    .venv/bin/python bench/bench_export.py [--checkpoint runs/demo/model.pt --images-dir runs/demo/data/val]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image, read_file

from dynamicdet_cli.checkpoint.store import load_checkpoint, model_from_checkpoint, new_checkpoint
from dynamicdet_cli.export.exporter import export_checkpoint
from dynamicdet_cli.model.build import build_model
from dynamicdet_cli.config.recipe import load_recipe
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it

REPO = Path(__file__).resolve().parent.parent
TAU = {"easy": 1.0, "hard": -1.0}


def _onnx_runtime(folder: Path, threads: int):
    spec = importlib.util.spec_from_file_location("onnx_predict", REPO / "examples" / "onnx_predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DynamicDetONNX(folder, threads=threads)


def _model(checkpoint: str | None, seed: int):
    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        return ckpt, model_from_checkpoint(ckpt).eval()
    recipe = load_recipe(REPO / "recipes" / "shapes-tiny.yaml")
    torch.manual_seed(seed)
    model = build_model(recipe.model).eval()
    return new_checkpoint(recipe, [f"class{i}" for i in range(1, 6)], list(range(1, 6)), model), model


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


@torch.inference_mode()
def time_routes(backends: dict, images: list[torch.Tensor], warmup: int, repeats: int) -> dict:
    """route -> backend -> list of ms per image (every image, `repeats` passes)."""
    times = {route: {name: [] for name in backends} for route in TAU}
    names = list(backends)
    for route, tau in TAU.items():
        for name in names:
            for image in images[:warmup]:
                backends[name](image, tau)
        for rep in range(repeats):
            for k, image in enumerate(images):
                order = names if (rep + k) % 2 == 0 else names[::-1]
                for name in order:
                    times[route][name].append(_ms(lambda: backends[name](image, tau)))
    return times


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a trained checkpoint (default: the tiny recipe with fresh weights)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of torch and onnxruntime alike")
    ap.add_argument("--images", type=int, default=16, help="distinct images per pass")
    ap.add_argument("--images-dir", help="time these images (the first --images files) instead of random ones")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes over the images")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    ckpt, model = _model(args.checkpoint, args.seed)
    side = int(model.transform.min_size[-1])
    if args.images_dir:
        files = sorted(p for p in Path(args.images_dir).iterdir() if p.is_file())[:args.images]
        images = [decode_image(read_file(str(p)), ImageReadMode.RGB).float() / 255 for p in files]  # each 3,H,W
    else:
        g = torch.Generator().manual_seed(args.seed)
        images = [torch.rand(3, side, side, generator=g) for _ in range(args.images)]  # each 3,S,S
    with tempfile.TemporaryDirectory() as tmp:
        export_checkpoint(ckpt, model, "onnx", Path(tmp) / "onnx")
        export_checkpoint(ckpt, model, "torchscript", Path(tmp) / "ts")
        runtime = _onnx_runtime(Path(tmp) / "onnx", args.threads)
        scripted = torch.jit.load(str(Path(tmp) / "ts" / "dynamicdet.torchscript.pt"))
        backends = {
            "pytorch": lambda im, tau: model.detect([im], "easy" if tau >= 1 else "hard"),
            "onnxruntime": lambda im, tau: runtime.detect([im.numpy()], tau),
            "torchscript": lambda im, tau: scripted([im], tau),
        }
        times = time_routes(backends, images, args.warmup, args.repeats)

    source = args.images_dir or "random"
    print(f"{side} px, batch 1, {args.threads} thread(s), {len(images)} {source} images x {args.repeats} passes "
          f"(median ms per image; ratio to PyTorch)")
    print(f"{'route':<6} {'pytorch':>9} {'onnxruntime':>12} {'ratio':>6} {'torchscript':>12} {'ratio':>6}")
    for route, by_backend in times.items():
        med = {name: statistics.median(t) for name, t in by_backend.items()}
        print(f"{route:<6} {med['pytorch']:9.2f} {med['onnxruntime']:12.2f} {med['onnxruntime'] / med['pytorch']:6.2f} "
              f"{med['torchscript']:12.2f} {med['torchscript'] / med['pytorch']:6.2f}")


if __name__ == "__main__":
    main()
