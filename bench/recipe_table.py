"""The table of recipes in docs/benchmarks.md#recipe-costs: parameters and GMACs per route, beside torchvision's figures.

For every recipe (default: recipes/*.yaml) the model is built with fresh weights and costed as
`dynamicdet info RECIPE` costs it (route_cost.py: FlopCounterMode on one random square image of the
recipe's test size; convolutions and matrix products counted; GMACs = FLOPs / 2, the unit of
torchvision's "GFLOPS"). The plain torchvision detector of the family, built from detector 1's
modules (model/reference.py), is counted the same way, so its column can be checked against
torchvision's published figure. A new family shows up once its recipe is in recipes/ and its
published figures are in TORCHVISION below.

    PYTHONPATH=. .venv/bin/python bench/recipe_table.py > table.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dynamicdet_cli.model.build import build_model
from dynamicdet_cli.model.reference import REFERENCES, torchvision_reference
from dynamicdet_cli.config.recipe import load_recipe
from dynamicdet_cli.model.cost import route_flops, route_params
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it

# family -> torchvision's single R50-FPN model on COCO val2017: (name, its "GFLOPS" (GMACs), AP).
TORCHVISION = {
    "faster_rcnn": ("Faster R-CNN R50-FPN", 134, "37.0 box"),
    "mask_rcnn": ("Mask R-CNN R50-FPN", 134, "37.9 box, 34.6 mask"),
    "retinanet": ("RetinaNet R50-FPN", 152, "36.4 box"),
    "fcos": ("FCOS R50-FPN", 128, "39.2 box"),
}


@torch.no_grad()
def plain_gmacs(model, cfg, side: int) -> float | None:
    """GMACs of the family's plain torchvision detector on one random side x side image."""
    if cfg.family not in REFERENCES:
        return None
    reference = torchvision_reference(model, cfg)
    counter = FlopCounterMode(display=False)
    with counter:
        reference([torch.rand(3, side, side)])
    return counter.get_total_flops() / 2e9


def row(path: Path) -> str:
    cfg = load_recipe(path).model
    side = cfg.transform.min_size[-1]
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    params, flops = route_params(model), route_flops(model, side, side)
    plain = plain_gmacs(model, cfg, side)
    b = cfg.backbone
    backbone = {"resnet": f"ResNet-{b.depth}", "regnet": "RegNet " + "-".join(map(str, b.widths)),
                "csp": f"CSP x{b.width_multiple}/{b.depth_multiple}"}[b.kind]
    published = "-"
    if b.kind == "resnet" and b.depth == 50 and side == 800 and cfg.family in TORCHVISION:
        name, gmacs, ap = TORCHVISION[cfg.family]
        published = f"{name}: {gmacs} / {ap}"
    cells = [f"`{path.name}`", cfg.family, f"2 x {backbone}", f"{side}",
             f"{params['easy'] / 1e6:.2f} M / {flops['easy'] / 2e9:.2f}",
             f"{params['hard'] / 1e6:.2f} M / {flops['hard'] / 2e9:.2f}",
             f"{flops['hard'] / flops['easy']:.2f}x",
             "-" if plain is None else f"{plain:.2f}", published]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="*", type=Path, help="recipe files (default: recipes/*.yaml)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = args.recipes or sorted(Path(__file__).resolve().parent.parent.glob("recipes/*.yaml"))
    print("| recipe | family | backbones | input px | easy route: params / GMACs | hard route: params / GMACs "
          "| hard / easy | plain torchvision detector, counted here: GMACs | torchvision's published (COCO): GFLOPS / AP |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        print(row(path), flush=True)


if __name__ == "__main__":
    main()
