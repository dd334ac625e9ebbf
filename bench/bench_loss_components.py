"""Where does L1 - L2 come from? Each loss term's gain by the images' known difficulty.

The router learns E[L1 - L2 | image] (the paper's loss, router_fit.py), where L1 and L2 are each
detector's full loss: a sum of terms (Faster R-CNN: RPN objectness, RPN box, RoI classifier,
RoI box; FCOS, RetinaNet and Mask R-CNN their own). If one term's gain falls with difficulty
while the AP gain rises with it, a faithful router does not rank by difficulty. This bench
shows it, term by term, on the images of a make-shapes data set (they carry `difficulty`):

    python bench/bench_loss_components.py --checkpoint RUN/best.pt --data DATA/data.yaml \
        [--split train] [--images 800] [--draws 2] [--threads 1]

Each image runs alone through both detectors, in the state router training caches them in
(heads computing losses, BatchNorm frozen); each draw's sampling is seeded as the router cache
seeds it, and the draws are averaged. Prints, per difficulty fifth, the mean gain (term of
detector 1 minus that of detector 2) of every term and of their sum, and each term's Spearman
correlation with difficulty over all images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynamicdet_cli.checkpoint.store import load_checkpoint, model_from_checkpoint  # noqa: E402
from dynamicdet_cli.data.coco import CocoDataset  # noqa: E402
from dynamicdet_cli.data.config import load_data_config  # noqa: E402
from dynamicdet_cli.data.transforms import build_transforms  # noqa: E402
from dynamicdet_cli.model.seeding import draw_seed, seed_sampling  # noqa: E402
from dynamicdet_cli.router.cache import sample_seed  # noqa: E402
from dynamicdet_cli.core.stats import spearman  # noqa: E402
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it


@torch.no_grad()
def loss_terms(model, image, target, seed: int, draws: int) -> tuple[dict, dict]:
    """Each detector's loss terms on one image, averaged over `draws` seeded draws."""
    image_list, targets, _ = model.prepare([image], [target])
    feats1 = model.backbone1(image_list.tensors)
    feats2 = model.second_backbone(image_list.tensors, feats1)
    terms = ({}, {})
    for d in range(draws):
        for head, feats, out in ((model.head1, feats1, terms[0]), (model.head2, feats2, terms[1])):
            seed_sampling(draw_seed(seed, d), image_list.tensors.device)  # as per_image_losses seeds draw d
            for name, value in head(image_list, feats, targets)[1].items():
                out[name] = out.get(name, 0.0) + float(value) / draws
    return terms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help="a make-shapes data.yaml (images carry difficulty)")
    parser.add_argument("--split", choices=["train", "val"], default="train",
                        help="train: the images router targets come from by default")
    parser.add_argument("--images", type=int, default=800, help="the first N images of the split")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt)
    model.freeze_detectors()
    dc = load_data_config(args.data)
    ann, folder = (dc.train_ann, dc.train_images) if args.split == "train" else (dc.val_ann, dc.val_images)
    dataset = CocoDataset(ann, folder, build_transforms(False))
    n = min(args.images, len(dataset))
    difficulty, rows1, rows2 = [], [], []
    for j in range(n):
        image, target = dataset[j]
        image_id = int(target["image_id"])
        t1, t2 = loss_terms(model, image, target, sample_seed(0, image_id, 0), args.draws)
        difficulty.append(dataset.coco.imgs[image_id]["difficulty"])
        rows1.append(t1), rows2.append(t2)
        if (j + 1) % 100 == 0:
            print(f"  {j + 1}/{n} images", file=sys.stderr, flush=True)
    names = list(rows1[0])
    d = torch.tensor(difficulty)
    l1 = torch.tensor([[r[k] for k in names] for r in rows1])  # N,terms
    l2 = torch.tensor([[r[k] for k in names] for r in rows2])
    gain = torch.cat([l1 - l2, (l1 - l2).sum(1, keepdim=True)], 1)
    columns = [k.removeprefix("loss_") for k in names] + ["L1 - L2"]
    print(f"{args.checkpoint}: {n} {args.split} images of {args.data}, {args.draws} draws; "
          "mean gain (detector 1 term - detector 2 term) by difficulty fifth")
    width = max(12, *(len(c) + 2 for c in columns))
    print(f"{'difficulty':>10} " + "".join(f"{c:>{width}}" for c in columns))
    for fifth in d.argsort().chunk(5):
        print(f"{float(d[fifth].mean()):>10.2f} " + "".join(f"{float(g):>+{width}.4f}" for g in gain[fifth].mean(0)))
    print(f"{'Spearman':>10} " + "".join(f"{spearman(gain[:, c], d):>+{width}.3f}" for c in range(gain.shape[1])))


if __name__ == "__main__":
    main()
