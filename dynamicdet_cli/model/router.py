"""The router R: one difficulty score phi in (0, 1) per image, high = hard.

    v   = concat over stages of GlobalAvgPool(F1_l)       # B,d
    phi = sigmoid(W2 relu(W1 v + b1) + b2)                # B
with W1: d -> floor(d / reduction), W2: -> 1.

`pool` and `forward` are separate so the router can be trained on cached pooled vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def pool_features(feats: dict[int, Tensor], stages: list[int]) -> Tensor:
    """The router's input vector: global-average-pooled stage outputs, concatenated. B,d"""
    return torch.cat([feats[s].mean(dim=(-2, -1)) for s in stages], dim=1)


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
