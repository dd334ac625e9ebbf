"""The dynamic detector: two cascaded detectors and a router that picks the route per image.

    F1 = B1(x); phi = R(pool(F1))
    easy (phi <= tau): y = D1(F1)
    hard (phi >  tau): y = D2(B2(x, G(F1)))     # D1 is not run

Every part is passed in already built (see model/build.py); this module only wires them.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from dynamicdet_cli.model.backbone import StageBackbone
from dynamicdet_cli.model.composite import DenseHigherLevelComposition
from dynamicdet_cli.model.router import Router, pool_features
from dynamicdet_cli.model.seeding import draw_seed

Route = Union[str, float]  # "easy", "hard", or a threshold tau in [0, 1]


def _take(feats: dict[int, Tensor], index: list[int], batch: int) -> dict[int, Tensor]:
    if len(index) == batch:
        return feats
    return {k: v[index] for k, v in feats.items()}


def _take_images(images: ImageList, index: list[int]) -> ImageList:
    if len(index) == images.tensors.shape[0]:
        return images
    return ImageList(images.tensors[index], [images.image_sizes[i] for i in index])


def own_shape_groups(images: ImageList, size_divisible: int) -> list[tuple[list[int], ImageList]]:
    """The batch split by the padded shape each image would have alone, its size rounded up to
    `size_divisible`: [(indices into the batch, the sub-batch cropped to that shape)], groups
    in the order of their first image. One group, the batch itself, when every image already
    fills the batch's shape.

    A convolution near an image's border reads the padding beside it, and in a batch padded to
    a larger batch-mate that padding is wider than the image's own: deep features inside the
    image, and so the router's phi, would depend on which images share the batch (how much:
    docs/benchmarks.md, Batches of mixed shapes). Each group's crop holds its images exactly as
    a batch of that image alone would (the transform pads with zeros).
    """
    batch_shape = tuple(images.tensors.shape[-2:])
    d = size_divisible
    own = [(-(-h // d) * d, -(-w // d) * d) for h, w in images.image_sizes]
    if all(shape == batch_shape for shape in own):
        return [(list(range(len(own))), images)]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(own):
        groups.setdefault(shape, []).append(i)
    return [(index, ImageList(images.tensors[index, :, :h, :w], [images.image_sizes[i] for i in index]))
            for (h, w), index in groups.items()]


def in_input_order(groups: list[tuple[list[int], Tensor]], n: int) -> Tensor:
    """Per-image values (phi) of a batch's shape groups, [(indices, values)], back in input order. n"""
    if len(groups) == 1:
        return groups[0][1]
    out = groups[0][1].new_zeros(n)
    for index, values in groups:
        out[index] = values
    return out


class DynamicDetector(nn.Module):
    """Two cascaded detectors sharing one input transform, and a router.

    Args (all built elsewhere):
        transform: torchvision's GeneralizedRCNNTransform (resize, normalise, batch).
        backbone1, backbone2: StageBackbone (ResNet or RegNet); backbone2 may start at stage 2 (shared stem).
        composite: the connection G from backbone 1's stages to backbone 2's stage inputs.
        router: Router over `pool_features(F1, router_stages)`.
        head1, head2: detector heads of one family (model/heads.py, model/one_stage_heads.py).
        router_stages: backbone-1 stages pooled for the router.
        loss_weights: (w1, w2) of the joint training loss.

    Training forward(images, targets) -> dict of losses:
        images: list of FloatTensor[3,H,W] in [0, 1]; targets: list of dict(boxes FloatTensor[N,4]
        x1y1x2y2 in pixels, labels Int64Tensor[N] in 1..num_classes).
        Keys: "d1/<part>" and "d2/<part>" for each torchvision loss part of the family (Faster
        R-CNN: loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg; Mask R-CNN: those
        and loss_mask, its targets also holding masks UInt8Tensor[N,H,W]; FCOS: classification,
        bbox_regression, bbox_ctrness; RetinaNet: classification, bbox_regression), "d1/total",
        "d2/total", and "loss" = w1 * d1/total + w2 * d2/total.

    Eval forward(images, route="easy"|"hard"|tau) -> list of dict per image, input order:
        boxes FloatTensor[N,4] x1y1x2y2 in the input image's pixels, labels Int64Tensor[N],
        scores FloatTensor[N], difficulty (float tensor, phi), route ("easy" or "hard"); Mask
        R-CNN heads add masks FloatTensor[N,1,H,W], each box's mask probabilities in the input
        image's pixels.
        Under a threshold, images with phi > tau take the hard route; one batch may mix routes
        and backbone 2 / detector 2 run only on the hard images. Over a stream of batches,
        speed/batcher.py's RouteBatcher can run each route on full batches instead.
    """

    def __init__(self, transform: GeneralizedRCNNTransform, backbone1: StageBackbone,
                 backbone2: StageBackbone, composite: DenseHigherLevelComposition, router: Router,
                 head1: nn.Module, head2: nn.Module, router_stages: list[int],
                 loss_weights: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        self.transform = transform
        self.backbone1 = backbone1
        self.backbone2 = backbone2
        self.composite = composite
        self.router = router
        self.head1 = head1
        self.head2 = head2
        self.router_stages = list(router_stages)
        self.loss_weights = tuple(loss_weights)

    # ------------------------------------------------------------------ the parts, one by one
    def prepare(self, images: list[Tensor], targets=None, original_sizes=None):
        """Resize, normalise and batch. Returns (ImageList, targets in the resized frame, original
        sizes). `original_sizes` (height, width per image): the frame the output is given in, where
        an image was scaled down before it came here (data/transforms.py fit_image); default,
        each image's own size."""
        if original_sizes is None:
            original_sizes = [tuple(img.shape[-2:]) for img in images]
        elif len(original_sizes) != len(images):
            raise ValueError(f"{len(images)} images but {len(original_sizes)} original sizes")
        image_list, targets = self.transform(images, targets)
        return image_list, targets, [tuple(int(v) for v in size) for size in original_sizes]

    def difficulty(self, feats1: dict[int, Tensor], images: ImageList) -> Tensor:
        """phi for each image, B."""
        return self.router(self.router_input(feats1, images))

    def router_input(self, feats1: dict[int, Tensor], images: ImageList) -> Tensor:
        """The pooled backbone-1 vector the router reads, B,d (each image over its own region)."""
        return pool_features(feats1, self.router_stages, images.image_sizes, tuple(images.tensors.shape[-2:]))

    def second_backbone(self, x: Tensor, feats1: dict[int, Tensor]) -> dict[int, Tensor]:
        """F2 = B2(x, G(F1)). With a shared stem, stage 1 of B2 *is* stage 1 of B1."""
        composite = self.composite(feats1)
        if self.backbone2.first_stage == 1:
            return self.backbone2(x, composite)
        feats2 = self.backbone2(feats1[1], composite)
        return {1: feats1[1], **feats2}

    # ------------------------------------------------------------------ training
    def forward(self, images: list[Tensor], targets=None, route: Route = "hard"):
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets; call model.eval() for inference")
            return self.joint_losses(images, targets)
        return self.detect(images, route)

    def joint_losses(self, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        """Both detectors' losses on one batch (backbone 1 runs once for both)."""
        image_list, targets, _ = self.prepare(images, targets)
        feats1 = self.backbone1(image_list.tensors)
        _, losses1 = self.head1(image_list, feats1, targets)
        feats2 = self.second_backbone(image_list.tensors, feats1)
        _, losses2 = self.head2(image_list, feats2, targets)
        out = {f"d1/{k}": v for k, v in losses1.items()}
        out.update({f"d2/{k}": v for k, v in losses2.items()})
        out["d1/total"] = sum(losses1.values())
        out["d2/total"] = sum(losses2.values())
        w1, w2 = self.loss_weights
        out["loss"] = w1 * out["d1/total"] + w2 * out["d2/total"]
        return out

    def per_image_losses(self, images: list[Tensor], targets: list[dict], seeds: list[int] | None = None,
                         draws: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """Each detector's full loss per image, and the router's input, in one pass.

        Returns (L1: B, L2: B, v: B,d). The backbones run once for the batch; each head's loss
        is taken image by image (torchvision's heads average over the batch). Their losses
        depend on random anchor/proposal sampling: with `seeds`, image i's sampling is seeded
        by seeds[i] (so an image's losses do not depend on its batch or on the epoch), and
        `draws` seeded draws are averaged; each head computes everything before the sampling
        once for the batch (see `FasterRCNNHead.per_image_losses`). Use batches of one image
        size. The caller sets the mode: heads in training mode
        (losses are computed only then), BatchNorm in eval mode (see `freeze_detectors`).
        """
        image_list, targets, _ = self.prepare(images, targets)
        x = image_list.tensors
        feats1 = self.backbone1(x)
        v = self.router_input(feats1, image_list)
        feats2 = self.second_backbone(x, feats1)
        batch = x.shape[0]
        draw_seeds = [[None if seeds is None else draw_seed(seeds[i], d) for d in range(draws)] for i in range(batch)]
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            l1 = self.head1.per_image_losses(image_list, feats1, targets, draw_seeds)
            l2 = self.head2.per_image_losses(image_list, feats2, targets, draw_seeds)
        return l1, l2, v

    def freeze_detectors(self) -> None:
        """Router training: every parameter but the router's frozen, BatchNorm in eval mode,
        heads in training mode (so they compute losses)."""
        self.train()
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("router."))
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        self.transform.eval()  # the inference size, not a random multi-scale pick

    # ------------------------------------------------------------------ inference
    def detect(self, images: list[Tensor], route: Route = "hard", original_sizes=None) -> list[dict]:
        """Detections on the given route(s); see the class docstring for the contract
        (`original_sizes`: see prepare)."""
        image_list, _, original_sizes = self.prepare(images, original_sizes=original_sizes)
        results: list[dict] = [{} for _ in images]
        for group_index, group in self.shape_groups(image_list):
            feats1 = self.backbone1(group.tensors)
            phi = self.difficulty(feats1, group)  # one per image of the group
            for name, index in zip(("easy", "hard"), self.split_by_route(phi, route)):
                if index:
                    sub = _take_images(group, index)
                    dets = self.run_route(name, sub, _take(feats1, index, len(group_index)))
                    self._place(results, [group_index[i] for i in index], dets, sub, original_sizes, name)
            for i, score in zip(group_index, phi):
                results[i]["difficulty"] = score
        return results

    def shape_groups(self, images: ImageList) -> list[tuple[list[int], ImageList]]:
        """The batch in groups of one padded shape each image would have alone, so that no
        image's phi or detections depend on its batch-mates (see own_shape_groups). Every
        inference path (detect, detect_both, speed/batcher.py) runs backbone 1 per group;
        a batch of one image shape is one group, the batch itself."""
        return own_shape_groups(images, self.transform.size_divisible)

    def run_route(self, route: str, images: ImageList, feats1: dict[int, Tensor]) -> list[dict]:
        """One route's detections for a batch whose backbone-1 features are known, in the
        resized frame (before transform.postprocess). easy: D1(F1); hard: D2(B2(x, G(F1)))."""
        if route == "easy":
            dets, _ = self.head1(images, feats1)
        elif route == "hard":
            dets, _ = self.head2(images, self.second_backbone(images.tensors, feats1))
        else:
            raise ValueError(f"run_route takes 'easy' or 'hard', got {route!r}")
        return dets

    def detect_both(self, images: list[Tensor], original_sizes=None) -> tuple[list[dict], list[dict], Tensor]:
        """Both detectors' detections for every image, backbone 1 run once: (easy, hard, phi).

        What evaluation and the accuracy-latency sweep need: each route's result per image.
        `original_sizes`: see prepare.
        """
        image_list, _, original_sizes = self.prepare(images, original_sizes=original_sizes)
        easy: list[dict] = [{} for _ in images]
        hard: list[dict] = [{} for _ in images]
        phis = []
        for group_index, group in self.shape_groups(image_list):
            feats1 = self.backbone1(group.tensors)
            phis.append((group_index, self.difficulty(feats1, group)))
            sizes = [original_sizes[i] for i in group_index]
            dets1, _ = self.head1(group, feats1)
            dets2, _ = self.head2(group, self.second_backbone(group.tensors, feats1))
            dets1 = self.transform.postprocess(dets1, group.image_sizes, sizes)
            dets2 = self.transform.postprocess(dets2, group.image_sizes, sizes)
            for i, d1, d2 in zip(group_index, dets1, dets2):
                easy[i], hard[i] = d1, d2
        return easy, hard, in_input_order(phis, len(images))

    @staticmethod
    def split_by_route(phi: Tensor, route: Route) -> tuple[list[int], list[int]]:
        """(indices of the images on the easy route, on the hard route); phi: B.

        A whole route ("easy", "hard") needs no per-image comparison, and builds none: at
        batch 1 those few tensor ops were a measurable share of the easy route's overhead
        over a plain detector (bench/bench_easy_route.py)."""
        if route in ("easy", "hard"):
            everyone = list(range(phi.shape[0]))
            return (everyone, []) if route == "easy" else ([], everyone)
        if isinstance(route, str):
            raise ValueError(f"route must be 'easy', 'hard' or a threshold, got {route!r}")
        hard = phi > float(route)
        return (~hard).nonzero().flatten().tolist(), hard.nonzero().flatten().tolist()

    def _place(self, results, index, dets, sub: ImageList, original_sizes, route: str) -> None:
        dets = self.transform.postprocess(dets, sub.image_sizes, [original_sizes[i] for i in index])
        for i, det in zip(index, dets):
            det["route"] = route
            results[i] = det
