"""AP of each detector overall and on the easier / harder halves of a synthetic shapes split
(box AP; and mask AP for a segmenting family).

    python bench/bench_shapes_ap.py runs/demo/run/best.pt runs/demo/data/data.yaml [--parts 5]

The halves split the validation images at the median of the `difficulty` make-shapes stores
for each image; `--parts N` splits them into N equal parts by difficulty instead, and gives
each part's objects per image (COCO AP pools objects, so busy images weigh more in it). The shapes data is useful to a router only if detector 2 beats detector 1
clearly on the harder half and hardly at all on the easier one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dynamicdet_cli.checkpoint.store import load_checkpoint, model_from_checkpoint
from dynamicdet_cli.evaluation.coco import coco_evaluate
from dynamicdet_cli.data.coco import CocoDataset
from dynamicdet_cli.data.config import load_data_config
from dynamicdet_cli.data.transforms import build_transforms
from dynamicdet_cli.evaluation.inference import run_both_routes
from dynamicdet_cli.model.build import needs_masks
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", type=int, default=2, help="equal parts of the images by difficulty")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dc = load_data_config(args.data)
    ckpt = load_checkpoint(args.checkpoint)
    masks = needs_masks(ckpt.family)
    ds = CocoDataset(dc.val_ann, dc.val_images, build_transforms(False), masks=masks)
    model = model_from_checkpoint(ckpt)
    start = time.perf_counter()
    routes = run_both_routes(model, ds, torch.device("cpu"), batch_size=8, show_progress=False)
    seconds = time.perf_counter() - start

    difficulty = {i: ds.coco.imgs[i].get("difficulty") for i in routes.image_ids}
    if any(d is None for d in difficulty.values()):
        raise SystemExit("the images carry no 'difficulty' field: is this a make-shapes dataset?")
    parts = {"all": routes.image_ids}
    if args.parts == 2:
        cut = statistics.median(difficulty.values())
        parts["easier half"] = [i for i in routes.image_ids if difficulty[i] <= cut]
        parts["harder half"] = [i for i in routes.image_ids if difficulty[i] > cut]
    else:
        ranked = sorted(routes.image_ids, key=difficulty.get)
        for k in range(args.parts):
            ids = ranked[k * len(ranked) // args.parts:(k + 1) * len(ranked) // args.parts]
            parts[f"d {difficulty[ids[0]]:.2f}-{difficulty[ids[-1]]:.2f}"] = ids
    print(f"{len(routes.image_ids)} val images, both detectors run once in {seconds:.1f} s")
    for iou_type in ("bbox", "segm") if masks else ("bbox",):
        print(f"{'box' if iou_type == 'bbox' else 'mask'} AP")
        print(f"{'images':<12} {'d1 AP':>7} {'d2 AP':>7} {'gain':>7} {'d1 AP50':>8} {'d2 AP50':>8} {'objects/image':>14}")
        for name, ids in parts.items():
            m = {d: coco_evaluate(ds.coco, [r for i in ids for r in res[i]], ids, iou_type)
                 for d, res in (("d1", routes.easy), ("d2", routes.hard))}
            objects = sum(len(ds.coco.getAnnIds(imgIds=[i], iscrowd=False)) for i in ids) / len(ids)
            print(f"{name:<12} {m['d1']['AP']:7.3f} {m['d2']['AP']:7.3f} {m['d2']['AP'] - m['d1']['AP']:+7.3f} "
                  f"{m['d1']['AP50']:8.3f} {m['d2']['AP50']:8.3f} {objects:14.1f}")


if __name__ == "__main__":
    main()
