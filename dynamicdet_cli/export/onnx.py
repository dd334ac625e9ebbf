"""The dynamic detector as three ONNX graphs that a runtime chains per image.

    backbone1_router.onnx          images B,3,H,W -> phi, the resized image, its size, F1
    easy_detector1.onnx            detector 1 (FPN, RPN, RoI heads, boxes back to input pixels)
    hard_backbone2_detector2.onnx  composite G, backbone 2, detector 2 (same outputs)

A runtime runs graph 1 on a batch of same-size images, then, image by image, the easy graph
where phi <= tau and the hard graph where phi > tau: the easy image never runs backbone 2,
the hard image never runs detector 1 (examples/onnx_predict.py does this with onnxruntime).

Graph inputs and outputs (float32 unless said; H, W any size; batch B any size in graph 1):

    backbone1_router   in:  images   B,3,H,W RGB in [0, 1], one size for the batch
                       out: phi      B          difficulty, high = hard
                            image    B,3,Hp,Wp  normalised, resized as the recipe says and
                                                zero-padded to multiples of 32
                            image_size  int64 2 the resized size (h, w) before padding
                            f1_1..f1_4  B,C_l,Hp/s_l,Wp/s_l  backbone 1's stage outputs
    easy / hard        in:  image 1,3,Hp,Wp; image_size int64 2; original_size int64 2 (H, W);
                            easy: f1_<l> 1,C_l,.. for the stages detector 1 reads;
                            hard: f1_1..f1_4 1,C_l,..
                       out: boxes N,4 x1y1x2y2 in the input image's pixels, labels int64 N
                            (1-based), scores N

The yolo family's route graphs differ (YOLORoute below): they take any batch and end before
NMS, with every point's box and class probabilities.

Graph 1 takes any batch. The other families' detector graphs take one image: torchvision's RPN and RoI heads
filter proposals and detections image by image in Python loops, which ONNX export by tracing
unrolls to the batch it traced (torchvision's own ONNX tests export its detectors on a list
of one image and vary only the image size). Image sizes are free in all three graphs.

Exported with torch's TorchScript-based exporter (`dynamo=False`), the one torchvision
registers its NMS and RoIAlign translations for (torchvision/ops/_register_onnx_ops.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.onnx import operators
from torchvision.models.detection.image_list import ImageList

from dynamicdet_cli.core.atomic import atomic_path
from dynamicdet_cli.model.detector import DynamicDetector
from dynamicdet_cli.model.yolo_head import YOLOHead

OPSET = 17
STAGES = (1, 2, 3, 4)
GRAPH_FILES = {"backbone1_router": "backbone1_router.onnx", "easy": "easy_detector1.onnx",
               "hard": "hard_backbone2_detector2.onnx"}
DETECTION_OUTPUTS = ["boxes", "labels", "scores"]


def _shape_hw(x: Tensor) -> Tensor:
    """(H, W) of x as an int64 tensor: traced as a shape lookup, so it stays dynamic in ONNX."""
    return operators.shape_as_tensor(x)[-2:]


class Backbone1Router(nn.Module):
    """Graph 1: resize + normalise + pad (the model's transform, for a batch of one size),
    backbone 1 and the router. See the module docstring for the inputs and outputs.

    torchvision's GeneralizedRCNNTransform works on a list of images, which tracing unrolls
    to a fixed count; this applies the same steps (normalise, bilinear resize by
    min(min_size / short side, max_size / long side), zero-pad to multiples of 32) to the
    whole batch tensor instead, following the transform's own tracing branch.
    """

    def __init__(self, model: DynamicDetector):
        super().__init__()
        t = model.transform
        self.min_size, self.max_size = float(t.min_size[-1]), float(t.max_size)
        self.size_divisible = t.size_divisible
        self.register_buffer("mean", torch.tensor(t.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(t.image_std).view(1, 3, 1, 1), persistent=False)
        self.backbone1 = model.backbone1
        self.router = model.router
        self.router_stages = list(model.router_stages)

    def forward(self, images: Tensor):
        x = (images - self.mean) / self.std  # B,3,H,W
        hw = _shape_hw(x).to(torch.float32)
        scale = torch.min(self.min_size / hw.min(), self.max_size / hw.max())
        scale_factor = scale if torchvision._is_tracing() else float(scale)  # a traced scale stays dynamic
        x = F.interpolate(x, scale_factor=scale_factor, mode="bilinear", recompute_scale_factor=True,
                          align_corners=False)
        size = _shape_hw(x)  # the resized h, w
        d = self.size_divisible
        pad = (size + d - 1) // d * d - size
        if not torchvision._is_tracing():
            pad = pad.tolist()
        x = F.pad(x, (0, pad[1], 0, pad[0]))  # B,3,Hp,Wp
        feats = self.backbone1(x)
        phi = self.router(self._pooled(feats, size, _shape_hw(x)))
        return (phi, x, size, *[feats[s] for s in STAGES])

    def _pooled(self, feats: dict[int, Tensor], size: Tensor, padded: Tensor) -> Tensor:
        """pool_features over each image's unpadded region, for a batch of one size. B,d"""
        pooled = []
        for s in self.router_stages:
            f = feats[s]  # B,C,h,w
            fhw = _shape_hw(f)
            region = (size * fhw + padded - 1) // padded  # ceil(size / stride), as pool_features
            pooled.append(f[:, :, :region[0], :region[1]].mean(dim=(-2, -1)))
        return torch.cat(pooled, dim=1)


class _RouteGraph(nn.Module):
    """A detector graph: one image's features -> its detections in input pixels."""

    def __init__(self, model: DynamicDetector):
        super().__init__()
        self.model = model

    def detections(self, head: nn.Module, image: Tensor, image_size: Tensor, original_size: Tensor,
                   feats: dict[int, Tensor]):
        images = ImageList(image, [(image_size[0], image_size[1])])
        dets, _ = head(images, feats)
        det = self.model.transform.postprocess(dets, images.image_sizes, [(original_size[0], original_size[1])])[0]
        return det["boxes"], det["labels"], det["scores"]


class EasyRoute(_RouteGraph):
    """Graph 2: detector 1 on backbone 1's features (the stages its head reads)."""

    def forward(self, image: Tensor, image_size: Tensor, original_size: Tensor, *f1: Tensor):
        feats = dict(zip(self.model.head1.stages, f1))
        return self.detections(self.model.head1, image, image_size, original_size, feats)


class HardRoute(_RouteGraph):
    """Graph 3: composite connection + backbone 2 + detector 2, from backbone 1's four stages."""

    def forward(self, image: Tensor, image_size: Tensor, original_size: Tensor, *f1: Tensor):
        feats2 = self.model.second_backbone(image, dict(zip(STAGES, f1)))
        return self.detections(self.model.head2, image, image_size, original_size, feats2)


class YOLORoute(nn.Module):
    """A YOLO detector graph (easy or hard) for a batch of one image size: every point's box and
    class probabilities, NMS left to the runtime. The YOLO head has no per-image step before
    NMS, so the batch stays free in the graph.

    in:  image B,3,Hp,Wp; image_size int64 2; original_size int64 2 (H, W); f1_<l> B,C_l,..
    out: boxes B,A,4 x1y1x2y2 in the input image's pixels (clipped to it); scores B,A,C class
         probabilities (label l is column l - 1). A = the points of all levels.
    The runtime keeps, per image, the (point, class) pairs with score > score_thresh, at most
    topk_candidates of them, runs NMS per class at nms_thresh and keeps detections_per_img
    (dynamicdet.json's `postprocess`; YOLOHead.postprocess does the same in PyTorch).
    """

    def __init__(self, model: DynamicDetector, route: str):
        super().__init__()
        self.model, self.route = model, route

    def forward(self, image: Tensor, image_size: Tensor, original_size: Tensor, *f1: Tensor):
        if self.route == "easy":
            head, feats = self.model.head1, dict(zip(self.model.head1.stages, f1))
        else:
            head, feats = self.model.head2, self.model.second_backbone(image, dict(zip(STAGES, f1)))
        out = head.dense(feats)
        size = image_size.to(out.boxes.dtype)  # h, w
        scale = original_size.to(out.boxes.dtype) / size
        limit = torch.stack([size[1], size[0], size[1], size[0]])
        boxes = torch.minimum(out.boxes.clamp(min=0), limit)
        boxes = boxes * torch.stack([scale[1], scale[0], scale[1], scale[0]])
        return boxes, out.cls.sigmoid()


def _dynamic_hw(names: list[str], batch: bool) -> dict:
    axes = {n: {2: f"{n}_height", 3: f"{n}_width"} for n in names}
    if batch:
        for n in names:
            axes[n][0] = "batch"
    return axes


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> Path:
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # Tracing warns about every Python-side shape decision it freezes; the ones that matter
        # (the batch of the detector graphs) are documented above and checked by the tests.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
    return path


@torch.no_grad()
def export_onnx(model: DynamicDetector, out_dir: Path, example: Tensor) -> dict[str, dict]:
    """Write the three graphs of `model` (CPU) into `out_dir`.

    example: one image 3,H,W in [0, 1] to trace with (its size does not constrain the graphs).
    Returns graph name -> dict(file, inputs, outputs, batch: "any" or 1), for the export's JSON.
    """
    model = model.eval()
    graph1 = Backbone1Router(model).eval()
    phi, x, size, *f1 = graph1(example[None])
    original = torch.tensor(example.shape[-2:])
    feats = dict(zip(STAGES, f1))
    easy_feats = [f"f1_{s}" for s in model.head1.stages]
    all_feats = [f"f1_{s}" for s in STAGES]
    sizes = ["image_size", "original_size"]
    per_detection = {n: {0: "detections"} for n in DETECTION_OUTPUTS}
    yolo = isinstance(model.head1, YOLOHead)  # batch-free route graphs, NMS outside
    if yolo:
        dense_axes = {"boxes": {0: "batch", 1: "points"}, "scores": {0: "batch", 1: "points"}}
        per_detection = dense_axes
    route_outputs = ["boxes", "scores"] if yolo else DETECTION_OUTPUTS
    easy_module = YOLORoute(model, "easy") if yolo else EasyRoute(model)
    hard_module = YOLORoute(model, "hard") if yolo else HardRoute(model)
    specs = {
        "backbone1_router": (graph1, (example[None],), ["images"], ["phi", "image", "image_size", *all_feats],
                             {**_dynamic_hw(["images", "image", *all_feats], batch=True), "phi": {0: "batch"}}),
        "easy": (easy_module.eval(), (x, size, original, *[feats[s] for s in model.head1.stages]),
                 ["image", *sizes, *easy_feats], route_outputs,
                 {**_dynamic_hw(["image", *easy_feats], batch=yolo), **per_detection}),
        "hard": (hard_module.eval(), (x, size, original, *f1), ["image", *sizes, *all_feats], route_outputs,
                 {**_dynamic_hw(["image", *all_feats], batch=yolo), **per_detection}),
    }
    graphs = {}
    for name, (module, args, inputs, outputs, axes) in specs.items():
        _export(module, args, out_dir / GRAPH_FILES[name], inputs, outputs, axes)
        graphs[name] = {"file": GRAPH_FILES[name], "inputs": inputs, "outputs": outputs,
                        "batch": "any" if name == "backbone1_router" or yolo else 1}
    return graphs
