"""The router R: one difficulty score phi in (0, 1) per image, high = hard.

    v   = concat over stages of GlobalAvgPool(F1_l)       # B,d
    phi = sigmoid(W2 relu(W1 v + b1) + b2)                # B
with W1: d -> floor(d / reduction), W2: -> 1.

`pool` and `forward` are separate so the router can be trained on cached pooled vectors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def pool_features(feats: dict[int, Tensor], stages: list[int],
                  image_sizes: list[tuple[int, int]] | None = None,
                  padded_size: tuple[int, int] | None = None) -> Tensor:
    """The router's input vector: global-average-pooled stage outputs, concatenated. B,d

    With `image_sizes` (each image's size inside the padded batch of `padded_size`), each
    image is pooled over its own region only, padding excluded. That alone does not make the score
    independent of batch-mates: deep features inside an image also read the padding beside
    it, so the detector feeds this one padded shape at a time (DynamicDetector.shape_groups).
    """
    pooled = []
    for s in stages:
        f = feats[s]  # B,C,H,W
        if image_sizes is None or all(tuple(sz) == tuple(padded_size) for sz in image_sizes):
            pooled.append(f.mean(dim=(-2, -1)))
            continue
        sy, sx = padded_size[0] / f.shape[-2], padded_size[1] / f.shape[-1]  # the stage's stride
        pooled.append(torch.stack([
            f[i, :, :math.ceil(h / sy), :math.ceil(w / sx)].mean(dim=(-2, -1))
            for i, (h, w) in enumerate(image_sizes)]))
    return torch.cat(pooled, dim=1)


class Router(nn.Module):
    def __init__(self, in_features: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, in_features // reduction)
        self.in_features = in_features
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def logits(self, v: Tensor) -> Tensor:
        """Pre-sigmoid scores, B (what the router loss differentiates through)."""
        return self.mlp(v).squeeze(-1)

    def forward(self, v: Tensor) -> Tensor:
        """v: B,d pooled features -> phi: B in (0, 1)."""
        return torch.sigmoid(self.logits(v))
