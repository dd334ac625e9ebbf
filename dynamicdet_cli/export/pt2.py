"""The dynamic detector as three torch.export programs (.pt2), for the yolo family.

torch 2.14 marks TorchScript deprecated; `torch.export` is its successor. It captures whole
graphs with symbolic shapes, which the YOLO graphs allow (no per-image Python loop before
NMS); torchvision's two-stage and FCOS/RetinaNet heads filter proposals image by image and do
not export this way.

    backbone1_router.pt2   images B,3,H,W, image_size int64 2 (the resized size before padding)
                           -> phi B, f1_1..f1_4 (backbone 1's stage outputs)
    easy.pt2               f1_<l> for detector 1's stages -> boxes B,A,4, scores B,A,C
    hard.pt2               images, f1_1..f1_4 -> boxes B,A,4, scores B,A,C (composite,
                           backbone 2, detector 2)

Batch, height and width are free (H and W multiples of 32, from 64 up to MAX_SIDE). Unlike the ONNX
graphs, the programs take the image as the model's transform leaves it: normalised, resized
and zero-padded to multiples of 32 (dynamicdet.json's `transform`), and their boxes are in
that resized frame, unclipped; the runtime clips them to the resized image, scales them back
to the input's pixels, and runs NMS (dynamicdet.json's `postprocess`), as YOLOHead.postprocess
does. Load with `torch.export.load(path).module()`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim

from dynamicdet_cli.core.atomic import atomic_path
from dynamicdet_cli.model.detector import DynamicDetector

STAGES = (1, 2, 3, 4)
MAX_SIDE = 4096
PT2_FILES = {"backbone1_router": "backbone1_router.pt2", "easy": "easy.pt2", "hard": "hard.pt2"}


class Backbone1RouterProgram(nn.Module):
    """Backbone 1 and the router, which pools each stage over the images' region without the
    padding (as pool_features does for a batch of one size), through a mask: slicing to a size
    read from a tensor would make the program's shapes depend on data."""

    def __init__(self, model: DynamicDetector):
        super().__init__()
        self.backbone1, self.router, self.router_stages = model.backbone1, model.router, list(model.router_stages)

    def forward(self, images: Tensor, image_size: Tensor):
        feats = self.backbone1(images)
        pooled = []
        for s in self.router_stages:
            f = feats[s]  # B,C,h,w
            stride = 2 ** (s + 1)
            rows = (torch.arange(f.shape[-2], device=f.device) * stride < image_size[0]).to(f.dtype)  # ceil(h / stride) rows
            cols = (torch.arange(f.shape[-1], device=f.device) * stride < image_size[1]).to(f.dtype)
            mask = rows[:, None] * cols[None, :]
            pooled.append((f * mask).sum(dim=(-2, -1)) / mask.sum())
        return (self.router(torch.cat(pooled, dim=1)), *[feats[s] for s in STAGES])


class EasyProgram(nn.Module):
    """Detector 1 on the backbone-1 stages its head reads (it reads no pixels)."""

    def __init__(self, model: DynamicDetector):
        super().__init__()
        self.head = model.head1

    def forward(self, *f1: Tensor):
        out = self.head.dense(dict(zip(self.head.stages, f1)))
        return out.boxes, out.cls.sigmoid()


class HardProgram(nn.Module):
    """Composite connection, backbone 2 (which re-reads the image) and detector 2."""

    def __init__(self, model: DynamicDetector):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, f1_1: Tensor, f1_2: Tensor, f1_3: Tensor, f1_4: Tensor):
        feats = self.model.second_backbone(images, dict(zip(STAGES, (f1_1, f1_2, f1_3, f1_4))))
        out = self.model.head2.dense(feats)
        return out.boxes, out.cls.sigmoid()


def _shapes():
    """Symbolic batch and size (in units of 32 px) for the image and each stage's output
    (stage l has stride 2**(l+1): 8, 4, 2, 1 times the image's size in units of 32)."""
    batch = Dim("batch", min=1, max=1024)
    # at least 2 x 32 px: torch.export specialises sizes of 1, and stage 4 is 1 x 1 at 32 px
    h, w = Dim("h32", min=2, max=MAX_SIDE // 32), Dim("w32", min=2, max=MAX_SIDE // 32)
    image = {0: batch, 2: 32 * h, 3: 32 * w}
    stage = [{0: batch, 2: (32 // 2 ** (s + 1)) * h, 3: (32 // 2 ** (s + 1)) * w} for s in STAGES]
    return image, stage


@torch.no_grad()
def export_pt2(model: DynamicDetector, out_dir: Path, example: Tensor) -> dict[str, dict]:
    """Write the three programs of `model` (CPU, yolo family) into `out_dir`.

    example: one image 3,H,W in [0, 1] (its size does not constrain the programs).
    Returns program name -> dict(file, inputs, outputs, batch), for the export's JSON.
    """
    model = model.eval()
    prepared = model.prepare([example, example])[0]  # B = 2: a batch of 1 would be specialised
    images = prepared.tensors
    if min(images.shape[-2:]) < 64:
        images = torch.nn.functional.pad(images, (0, max(0, 64 - images.shape[-1]), 0, max(0, 64 - images.shape[-2])))
    image_size = torch.tensor(prepared.image_sizes[0])
    image_dims, stage_dims = _shapes()
    graph1 = Backbone1RouterProgram(model).eval()
    phi, *f1 = graph1(images, image_size)
    f1_names = [f"f1_{s}" for s in STAGES]
    head_stages = [STAGES.index(s) for s in model.head1.stages]
    specs = {
        "backbone1_router": (graph1, (images, image_size), (image_dims, None), ["images", "image_size"],
                             ["phi", *f1_names]),
        "easy": (EasyProgram(model).eval(), tuple(f1[i] for i in head_stages),
                 (tuple(stage_dims[i] for i in head_stages),),  # one entry: forward's *f1
                 [f1_names[i] for i in head_stages], ["boxes", "scores"]),
        "hard": (HardProgram(model).eval(), (images, *f1), (image_dims, *stage_dims), ["images", *f1_names],
                 ["boxes", "scores"]),
    }
    programs = {}
    for name, (module, args, dims, inputs, outputs) in specs.items():
        program = torch.export.export(module, args, dynamic_shapes=dims)
        with atomic_path(out_dir / PT2_FILES[name], suffix=".tmp.pt2") as tmp:  # torch warns at another suffix
            torch.export.save(program, str(tmp))
        programs[name] = {"file": PT2_FILES[name], "inputs": inputs, "outputs": outputs, "batch": "any"}
    return programs
