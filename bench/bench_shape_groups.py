"""What running backbone 1 once per padded shape costs, against padding a mixed batch together.

A batch of images of different shapes used to go through backbone 1 padded to its largest
member; deep features read that padding, so an image's difficulty phi (and detections) moved
with its batch-mates. The detector now splits such a batch by the padded shape each image has
alone (DynamicDetector.shape_groups) and runs backbone 1 once per shape. This times both ways
on the same batch in the same process, calls alternated, and reports how far each way's phi
lands from every image's phi alone:

- padded: the old path, backbone 1 + router + the hard route on the batch padded together;
- grouped: model.detect(images, route="hard"), one backbone-1 call per shape.

    .venv/bin/python bench/bench_shape_groups.py --recipe recipes/dy-yolo-s.yaml
    .venv/bin/python bench/bench_shape_groups.py --checkpoint runs/demo/model.pt --images runs/demo/data/val \
        --sizes 128x96 96x128
    python bench/bench_shape_groups.py --recipe recipes/dy-faster-rcnn-r50-fpn.yaml --device cuda

Sizes are WIDTHxHEIGHT of the images handed to the model (before its resize), cycled over the
batch. Random weights unless --checkpoint: the timings do not depend on them, phi's shift does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from dynamicdet_cli.config.recipe import load_recipe  # noqa: E402
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402
from dynamicdet_cli.model.build import build_model  # noqa: E402
from bench_easy_route import alternate_many, sync_for  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do


def padded_hard(model, images):
    """The pre-grouping path: the whole batch through backbone 1 at its padded shape. (dets, phi)"""
    image_list, _, original_sizes = model.prepare(images)
    feats1 = model.backbone1(image_list.tensors)
    phi = model.difficulty(feats1, image_list)
    dets = model.run_route("hard", image_list, feats1)
    return model.transform.postprocess(dets, image_list.image_sizes, original_sizes), phi


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/dy-yolo-s.yaml")
    ap.add_argument("--checkpoint", default=None, help="a trained checkpoint instead of random weights")
    ap.add_argument("--sizes", nargs="+", default=["640x480", "480x640", "640x427"],
                    help="WIDTHxHEIGHT, cycled over the batch (COCO's commonest shapes by default)")
    ap.add_argument("--images", default=None,
                    help="a folder of images to resize to --sizes (real content; random pixels without)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.checkpoint:
        import dynamicdet_cli as dd
        model, source = dd.load(args.checkpoint, device).network, args.checkpoint
    else:
        torch.manual_seed(args.seed)
        model, source = build_model(load_recipe(args.recipe).model).eval().to(device), f"{args.recipe} (random weights)"
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    g = torch.Generator().manual_seed(args.seed)
    wanted = [shapes[i % len(shapes)] for i in range(args.batch_size)]
    if args.images:
        from torchvision.transforms.v2.functional import resize
        from dynamicdet_cli.data.coco import load_rgb
        files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        images = [resize(load_rgb(path), [h, w], antialias=True).to(device).float() / 255
                  for path, (w, h) in zip(files, wanted)]
    else:
        images = [torch.rand(3, h, w, generator=g).to(device) for w, h in wanted]
    result = compare(model, images, args.warmup, args.repeats, sync_for(device))
    print(f"model: {source}; device {device}, {args.threads} threads; batch {len(images)} of "
          f"{' '.join(args.sizes)} -> padded {tuple(result['padded_shape'])}, {result['groups']} shape groups")
    print(f"padded together: {result['padded_ms_per_image']:8.1f} ms/image   max |phi - phi alone| "
          f"{result['padded_phi_shift']:.4f}")
    print(f"grouped:         {result['grouped_ms_per_image']:8.1f} ms/image   max |phi - phi alone| "
          f"{result['grouped_phi_shift']:.4f}")
    print(f"grouped / padded: {result['grouped_over_padded']:.2f}x (medians of {args.repeats} alternated calls)")


def compare(model, images: list[torch.Tensor], warmup: int, repeats: int, sync=lambda: None) -> dict:
    """Both ways on `images` (one batch), calls alternated: ms per image (medians), the largest
    shift of phi from each image's phi alone, and the ratio grouped / padded. Call it under
    whatever autocast the caller measures."""
    with torch.inference_mode():
        alone = torch.stack([model.detect([im], route="easy")[0]["difficulty"] for im in images]).float()
        grouped_phi = torch.stack([d["difficulty"] for d in model.detect(images, route="hard")]).float()
        padded_phi = padded_hard(model, images)[1].float()
        batch, _, _ = model.prepare(images)
        t_padded, t_grouped = alternate_many([lambda: padded_hard(model, images),
                                              lambda: model.detect(images, route="hard")], warmup, repeats, sync)
    padded, grouped = statistics.median(t_padded), statistics.median(t_grouped)
    return {"batch": len(images), "padded_shape": list(batch.tensors.shape[-2:]),
            "groups": len(model.shape_groups(batch)), "repeats": repeats,
            "padded_ms_per_image": round(padded / len(images), 3), "grouped_ms_per_image": round(grouped / len(images), 3),
            "padded_phi_shift": round(float((padded_phi - alone).abs().max()), 4),
            "grouped_phi_shift": round(float((grouped_phi - alone).abs().max()), 4),
            "grouped_over_padded": round(grouped / padded, 3)}

if __name__ == "__main__":
    main()
