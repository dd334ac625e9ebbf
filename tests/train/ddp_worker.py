"""One training process of tests/test_train.py's DDP test (run under torchrun, not by pytest).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py DATA_YAML RUN OUT

Trains the tiny recipe for 2 epochs (4 images, train.batch_size 2 in all: one image per
process per step, two steps per epoch) and writes this rank's final parameters to
OUT/rank{RANK}.pt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import dynamicdet_cli.train.loop as train_module
from dynamicdet_cli.data.coco import CocoDataset
from dynamicdet_cli.data.config import load_data_config
from dynamicdet_cli.data.transforms import build_transforms
from dynamicdet_cli.config.recipe import load_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "shapes-tiny.yaml"
OVERRIDES = ["model.transform.min_size=[64]", "model.transform.max_size=64", "train.batch_size=2",
             "train.workers=0", "train.warmup_iters=1", "train.epochs=2"]


def main(data_yaml: str, run: str, out: str) -> None:
    torch.set_num_threads(1)
    # train_detectors keeps its model to itself; catch it as it is built to read it afterwards.
    built = []
    build_model = train_module.build_model
    train_module.build_model = lambda *a, **k: built.append(build_model(*a, **k)) or built[-1]

    dc = load_data_config(data_yaml)
    train_set = CocoDataset(dc.train_ann, dc.train_images, transforms=build_transforms(True))
    result = train_module.train_detectors(load_recipe(RECIPE, OVERRIDES), train_set, None, Path(run),
                                          show_progress=False)
    assert result.complete and result.epochs == 2, result
    rank = int(os.environ["RANK"])
    params = {k: p.detach().clone() for k, p in built[0].named_parameters()}
    torch.save({"params": params, "steps": result.history[-1]["step"]}, Path(out) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:4])
