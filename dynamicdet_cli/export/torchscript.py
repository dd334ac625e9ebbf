"""The dynamic detector as one TorchScript module: forward(images, tau) routes each image.

    module = torch.jit.load("dynamicdet.torchscript.pt")
    detections, routes = module([img1, img2], 0.42)    # images: 3,H,W float in [0, 1], any sizes

    detections: one dict per image, input order: boxes FloatTensor[N,4] x1y1x2y2 in the image's
                pixels, labels Int64Tensor[N] (1-based), scores FloatTensor[N], difficulty
                (0-d tensor, phi)
    routes:     "easy" (phi <= tau) or "hard" per image; tau < 0 routes every image hard,
                tau >= 1 every image easy

What is scripted and what is traced: the module, its routing, the resize/normalise transform,
the router, both FPNs, RPNs and RoI heads (torchvision's, written for TorchScript) are
scripted, so batch size, image sizes and tau stay free. The two backbones and the composite
connection are traced: their code keys stages by number in Python dicts and names the
composite's projections with f-strings, which TorchScript cannot compile. Tracing is exact
for them (convolutions, and resizes whose target size is read from a feature map at run
time, so it follows the input); the tests run sizes other than the traced one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from dynamicdet_cli.core.atomic import atomic_path
from dynamicdet_cli.model.detector import DynamicDetector

STAGES = (1, 2, 3, 4)


class _Stages(nn.Module):
    """Backbone 1 with its stage outputs as a tuple (stage 1..4), for tracing."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor):
        feats = self.backbone(x)
        return tuple(feats[s] for s in STAGES)


class _SecondBackbone(nn.Module):
    """F2 = B2(x, G(F1)) with tuples in and out, for tracing; the wiring is the detector's own
    `second_backbone`, which reads only `composite` and `backbone2`."""

    def __init__(self, composite: nn.Module, backbone2: nn.Module):
        super().__init__()
        self.composite = composite
        self.backbone2 = backbone2

    def forward(self, x: Tensor, f1: Tensor, f2: Tensor, f3: Tensor, f4: Tensor):
        feats2 = DynamicDetector.second_backbone(self, x, dict(zip(STAGES, (f1, f2, f3, f4))))
        return tuple(feats2[s] for s in STAGES)


class ScriptableHead(nn.Module):
    """A Faster R-CNN head (FPN, RPN, RoI heads) over stage features given as a list (stage 1..4):
    FasterRCNNHead.forward in eval mode, in TorchScript's types."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.neck = head.neck
        self.rpn = head.rpn
        self.roi_heads = head.roi_heads
        self.stages = list(head.stages)

    def forward(self, images: ImageList, feats: list[Tensor]) -> list[dict[str, Tensor]]:
        x: dict[str, Tensor] = {}
        for i, s in enumerate(self.stages):
            x[str(i)] = feats[s - 1]
        fpn = self.neck(x)
        proposals, _ = self.rpn(images, fpn, None)
        detections, _ = self.roi_heads(fpn, proposals, images.image_sizes, None)
        return detections


class ScriptableDynamicDetector(nn.Module):
    """DynamicDetector.detect under a threshold tau, in TorchScript's types (see the module docstring).

    Built from a DynamicDetector in eval mode and an example batch tensor `x` (B,3,H,W, already
    resized, normalised and padded) to trace the backbones with.
    """

    def __init__(self, model: DynamicDetector, x: Tensor):
        super().__init__()
        self.transform = model.transform
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warns about each shape check it freezes
            self.backbone1 = torch.jit.trace(_Stages(model.backbone1).eval(), x)
            f1 = self.backbone1(x)
            self.backbone2 = torch.jit.trace(_SecondBackbone(model.composite, model.backbone2).eval(), (x, *f1))
        self.router = model.router
        self.router_stages = list(model.router_stages)
        self.head1 = ScriptableHead(model.head1)
        self.head2 = ScriptableHead(model.head2)

    def forward(self, images: list[Tensor], tau: float) -> tuple[list[dict[str, Tensor]], list[str]]:
        original_sizes: list[tuple[int, int]] = [(img.shape[-2], img.shape[-1]) for img in images]
        image_list, _ = self.transform(images, None)
        x = image_list.tensors  # B,3,H,W
        t1 = self.backbone1(x)
        f1 = [t1[0], t1[1], t1[2], t1[3]]
        phi = self.router(self.pooled(f1, image_list.image_sizes, x.shape[-2], x.shape[-1]))  # B
        hard = phi > tau
        results: list[dict[str, Tensor]] = [{"difficulty": phi[i]} for i in range(len(images))]
        is_hard: list[bool] = hard.tolist()
        routes: list[str] = ["hard" if h else "easy" for h in is_hard]
        easy_idx = (~hard).nonzero().flatten()
        hard_idx = hard.nonzero().flatten()
        if easy_idx.numel() > 0:
            sub = self.take(image_list, easy_idx)
            dets = self.head1(sub, [f.index_select(0, easy_idx) for f in f1])
            self.place(results, easy_idx, dets, sub, original_sizes)
        if hard_idx.numel() > 0:
            sub = self.take(image_list, hard_idx)
            f = [t.index_select(0, hard_idx) for t in f1]
            t2 = self.backbone2(sub.tensors, f[0], f[1], f[2], f[3])
            dets = self.head2(sub, [t2[0], t2[1], t2[2], t2[3]])
            self.place(results, hard_idx, dets, sub, original_sizes)
        return results, routes

    def pooled(self, feats: list[Tensor], sizes: list[tuple[int, int]], padded_h: int, padded_w: int) -> Tensor:
        """model.router.pool_features: each image pooled over its own (unpadded) region. B,d"""
        pooled: list[Tensor] = []
        for s in self.router_stages:
            f = feats[s - 1]  # B,C,h,w
            rows: list[Tensor] = []
            for i, size in enumerate(sizes):
                rh = (size[0] * f.shape[-2] + padded_h - 1) // padded_h  # ceil(h / stride)
                rw = (size[1] * f.shape[-1] + padded_w - 1) // padded_w
                rows.append(f[i, :, :rh, :rw].mean(dim=[-2, -1]))
            pooled.append(torch.stack(rows))
        return torch.cat(pooled, dim=1)

    def take(self, images: ImageList, index: Tensor) -> ImageList:
        ids: list[int] = index.tolist()
        return ImageList(images.tensors.index_select(0, index), [images.image_sizes[i] for i in ids])

    def place(self, results: list[dict[str, Tensor]], index: Tensor, dets: list[dict[str, Tensor]],
              sub: ImageList, original_sizes: list[tuple[int, int]]) -> None:
        ids: list[int] = index.tolist()
        dets = self.transform.postprocess(dets, sub.image_sizes, [original_sizes[i] for i in ids])
        for k, i in enumerate(ids):
            for key, value in dets[k].items():
                results[i][key] = value


@torch.no_grad()
def script_model(model: DynamicDetector, example: Tensor) -> torch.jit.ScriptModule:
    """The scripted module of `model` (eval mode, CPU); `example`: one image 3,H,W in [0, 1]."""
    model = model.eval()
    image_list, _, _ = model.prepare([example])
    with warnings.catch_warnings():
        # torch 2.9+ marks torch.jit deprecated (FutureWarning) in favour of torch.export; it still works
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(ScriptableDynamicDetector(model, image_list.tensors).eval())


def export_torchscript(model: DynamicDetector, path: Path, example: Tensor, meta_json: str) -> Path:
    """Write the scripted module to `path`, with the export's JSON inside as extra file dynamicdet.json."""
    scripted = script_model(model, example)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(scripted, str(tmp), _extra_files={"dynamicdet.json": meta_json})
    return path
