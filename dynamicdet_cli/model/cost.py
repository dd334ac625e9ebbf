"""What a model costs per route: parameters and FLOPs (for `dynamicdet info`)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

# Which top-level parts of a DynamicDetector each route runs.
ROUTE_PARTS = {
    "easy": ("backbone1", "router", "head1"),
    "hard": ("backbone1", "router", "composite", "backbone2", "head2"),
}


def route_params(model: torch.nn.Module) -> dict[str, int]:
    """Parameters each route uses, and the whole model's ('total')."""
    counts = {"total": sum(p.numel() for p in model.parameters())}
    for route, parts in ROUTE_PARTS.items():
        counts[route] = sum(p.numel() for part in parts for p in getattr(model, part).parameters())
    return counts


@torch.no_grad()
def route_flops(model: torch.nn.Module, height: int, width: int) -> dict[str, float]:
    """FLOPs (multiply and add counted apart, i.e. 2 x MACs) of one image per route.

    Counted by torch's FlopCounterMode on a real forward pass of one random height x width
    image, resized by the model's transform as any input is (so a square image of the recipe's
    test size runs at that size). Routes: easy = backbone 1 + router + head 1; hard = backbone 1
    + router + composite + backbone 2 + head 2 (ROUTE_PARTS). What is counted: convolutions and
    matrix products (linear layers), as torchvision's and the papers' figures count them.
    What counts zero: element-wise work (normalisation, activations, additions, resizing,
    sigmoid), RoIAlign, NMS and top-k, all cheap next to convolutions. A Faster R-CNN box head
    costs in proportion to the proposals that survive the RPN's NMS (at most
    post_nms_top_n_test); a one-stage head's cost does not depend on the image's content.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    image = torch.rand(3, height, width, device=device)
    flops = {}
    for route in ROUTE_PARTS:
        counter = FlopCounterMode(display=False)
        with counter:
            model([image], route=route)
        flops[route] = float(counter.get_total_flops())
    model.train(was_training)
    return flops
