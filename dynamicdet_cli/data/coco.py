"""COCO-format detection data: the dataset and its collate function (the annotation file's
checks are in coco_json.py, the data YAML in config.py).

Contracts (torchvision's detection format):
  image   tv_tensors.Image, float32 in [0, 1], shape [3, H, W] (always RGB)
  target  dict(boxes=tv_tensors.BoundingBoxes float32 [N, 4] XYXY in pixels, canvas (H, W),
               labels=int64 [N] in 1..num_classes (0 is background), image_id=int,
               and with masks=True: masks=tv_tensors.Mask uint8 [N, H, W], 1 inside instance n)

Contiguous label = index in `cat_ids` + 1, so any COCO category ids (say 3 and 7) map to
labels 1..K; `label_to_cat_id` maps back when writing COCO results.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from pycocotools.coco import COCO
from torch import Tensor
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as F

from dynamicdet_cli.data.coco_json import check_coco, is_segmentation, read_coco_json
from dynamicdet_cli.data.transforms import fitted_size, resize_sample
from dynamicdet_cli.core.errors import DynamicDetError, warn
from dynamicdet_cli.core.stats import held_out

SKIP_HINT = "fix or remove it, or skip bad images with --skip-bad-images"
_REPORTED_SKIPS: set[Path] = set()  # images skipped on reading, already reported by this process


def class_mismatch(data: Sequence[str], reference: Sequence[str], what: str, against: str) -> str | None:
    """None when two class lists are equal, else one line saying how `what`'s classes differ from
    `against`'s. Classes are the categories' names in category-id order, so two annotation files
    agree only with the same names under ids in the same order."""
    data, reference = [str(c) for c in data], [str(c) for c in reference]
    if data == reference:
        return None
    extra = [c for c in data if c not in reference]
    missing = [c for c in reference if c not in data]
    if extra or missing:
        detail = (f"{len(data)} against {len(reference)}"
                  + (f"; only in the {what}: {', '.join(extra[:5])}" if extra else "")
                  + (f"; only in the {against}: {', '.join(missing[:5])}" if missing else ""))
    else:
        i = next(k for k, (a, b) in enumerate(zip(data, reference)) if a != b)
        detail = f"the same names in another category-id order ({data[i]!r} where the {against} has {reference[i]!r})"
    return (f"the {what}'s classes differ from the {against}'s: {detail}; give it the categories the "
            "detectors were trained on, with the same names in the same id order")


class BadImage(Exception):
    """An image file that cannot be used; the message says why."""


class CocoDataset(torch.utils.data.Dataset):
    """Images and boxes of a COCO annotation file.

    Every image of the JSON is kept, including images without annotations (negatives).
    Boxes are converted from COCO xywh to XYXY and clipped to the image. Boxes of negative
    or zero width or height, and boxes wholly outside the image, are dropped; the counts
    per reason are in `dropped` (their total in `n_degenerate`) and `n_clipped` counts
    the kept boxes that reached beyond the image; `box_report()` says it in one line (the CLI
    prints it as a warning). `iscrowd=1` annotations are left out, as torchvision's references do.

    With `skip_bad_images=True`, files that are missing, do not open, or whose size differs
    from the JSON are dropped from `image_ids` at construction and listed in `skipped` as
    (path, reason); an image that still fails to decode later makes `__getitem__` return
    None, which `collate` drops. Without it, any such file raises DynamicDetError.

    `ann_file` is a COCO JSON path, or an in-memory source of the same index: an object with
    `to_coco(skip_bad_images) -> (COCO dict, skipped)` and a `name`, such as a YOLO-format
    split (data/yolo.py's YoloLabels), whose images left out are listed in `skipped` too.

    With `masks=True` (families that segment, such as Mask R-CNN) every target also holds
    each kept box's instance mask, decoded from its COCO `segmentation` (polygons, RLE or
    uncompressed RLE) by pycocotools; an annotation without one is refused at construction,
    before any training starts.

    `load(i)` gives item i as its file holds it (uint8, untransformed); `dataset[i]` is that,
    scaled down to the model's input size after `fit_to` (training), converted to float32 and
    transformed. data/mosaic.py builds on `load`.
    """

    def __init__(
        self,
        ann_file: str | Path | Any,
        image_dir: str | Path,
        transforms: Callable | None = None,
        skip_bad_images: bool = False,
        masks: bool = False,
    ) -> None:
        self.ann_file = Path(ann_file.name) if hasattr(ann_file, "to_coco") else Path(ann_file)
        self.masks = masks
        self.fit: tuple[int, int] | None = None  # (short, long): see fit_to
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.skip_bad_images = skip_bad_images
        if not self.image_dir.is_dir():
            raise DynamicDetError(f"image folder {self.image_dir} does not exist")

        self.skipped: list[tuple[str, str]] = []
        if hasattr(ann_file, "to_coco"):
            data, self.skipped = ann_file.to_coco(skip_bad_images)
        else:
            data = read_coco_json(self.ann_file)
        check_coco(data, self.ann_file.name)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()

        self.cat_ids: list[int] = sorted(self.coco.cats)
        self.classes: list[str] = [str(self.coco.cats[c]["name"]) for c in self.cat_ids]
        self._label_of = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self._boxes, self.dropped, self.n_clipped = self._build_targets()
        if masks:
            self._check_segmentations()
        self.n_degenerate = sum(self.dropped.values())
        self.n_boxes = sum(len(labels) for _, labels in self._boxes.values())

        self.image_ids: list[int] = self._check_images(sorted(self.coco.imgs))

    # -- construction ------------------------------------------------------------------

    def _build_targets(self) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[str, int], int]:
        """Per image id: (boxes [N, 4] XYXY clipped, labels [N]); dropped boxes per reason
        (with the first annotation id of each); the number of boxes clipped."""
        per_image: dict[int, tuple[list, list]] = {i: ([], []) for i in self.coco.imgs}
        self._kept_anns: dict[int, list[dict]] = {i: [] for i in self.coco.imgs}  # aligned with the boxes
        dropped: dict[str, int] = {}
        self._first_bad: dict[str, object] = {}
        n_clipped = 0
        for ann in self.coco.dataset["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            img = self.coco.imgs[ann["image_id"]]
            x, y, w, h = (float(v) for v in ann["bbox"])
            x1, x2 = min(max(x, 0.0), img["width"]), min(max(x + w, 0.0), img["width"])
            y1, y2 = min(max(y, 0.0), img["height"]), min(max(y + h, 0.0), img["height"])
            reason = ("of negative size" if w < 0 or h < 0 else "of zero size" if w == 0 or h == 0
                      else "outside the image" if x2 <= x1 or y2 <= y1 else None)
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + 1
                self._first_bad.setdefault(reason, _where(ann))
                continue
            if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                n_clipped += 1
                self._first_bad.setdefault("clipped", _where(ann))
            boxes, labels = per_image[ann["image_id"]]
            boxes.append((x1, y1, x2, y2))
            labels.append(self._label_of[ann["category_id"]])
            self._kept_anns[ann["image_id"]].append(ann)
        out = {
            i: (np.asarray(b, dtype=np.float32).reshape(-1, 4), np.asarray(lab, dtype=np.int64))
            for i, (b, lab) in per_image.items()
        }
        return out, dropped, n_clipped

    def _check_segmentations(self) -> None:
        """Every annotation must carry a mask pycocotools can decode: the kept ones become
        training targets, and mask AP reads them all (crowd and dropped ones included)."""
        for ann in self.coco.dataset["annotations"]:
            if not is_segmentation(ann.get("segmentation")):
                raise DynamicDetError(
                    f"{self.ann_file.name}: annotation {ann['id']} has no instance mask (COCO "
                    "'segmentation': polygons or RLE), and this model segments (family mask_rcnn); "
                    "use annotations with masks (make-shapes writes them) or a box-only family")
            seg, info = ann["segmentation"], self.coco.imgs[ann["image_id"]]
            if isinstance(seg, dict) and list(seg["size"]) != [info["height"], info["width"]]:
                raise DynamicDetError(
                    f"{self.ann_file.name}: annotation {ann['id']} has an RLE mask of size {seg['size']} "
                    f"on an image of height, width {[info['height'], info['width']]}")

    def instance_masks(self, image_id: int) -> Tensor:
        """uint8 [N, H, W]: the masks of the image's kept boxes, in their order."""
        info = self.coco.imgs[image_id]
        anns = self._kept_anns[image_id]
        if not anns:
            return torch.zeros(0, info["height"], info["width"], dtype=torch.uint8)
        return torch.from_numpy(np.stack([self.coco.annToMask(ann) for ann in anns]))

    def box_report(self) -> str:
        """One line: which boxes were dropped or clipped and why, with an example annotation id."""
        parts = [f"{n} {reason} (e.g. {self._first_bad[reason]})" for reason, n in self.dropped.items()]
        text = f"{self.ann_file.name}: dropped {self.n_degenerate} box(es): {', '.join(parts)}" if parts else \
            f"{self.ann_file.name}: dropped no box"
        if self.n_clipped:
            text += (f"; clipped {self.n_clipped} box(es) reaching beyond the image to its edges "
                     f"(e.g. {self._first_bad['clipped']})")
        return text

    def _check_images(self, ids: list[int]) -> list[int]:
        """Fail early on missing files; with skip_bad_images also verify and drop bad ones."""
        if not self.skip_bad_images:
            missing = [i for i in ids if not self.image_path_of(i).is_file()]
            if missing:
                first = self.coco.imgs[missing[0]]["file_name"]
                slashes = "; its file_name has Windows backslashes: write / between folders" if "\\" in first else ""
                raise DynamicDetError(
                    f"{self.ann_file.name}: {len(missing)} image file(s) missing, e.g. "
                    f"{self.image_path_of(missing[0])}{slashes}; {SKIP_HINT}"
                )
            return ids
        kept = []
        for i in ids:
            path = self.image_path_of(i)
            reason = self._verify(path, self.coco.imgs[i])
            if reason is None:
                kept.append(i)
            else:
                self.skipped.append((str(path), reason))
        return kept  # the caller reports self.skipped

    @staticmethod
    def _verify(path: Path, info: dict) -> str | None:
        """Why the file is unusable, or None; cheap: header + PIL's integrity check."""
        if not path.is_file():
            return "file not found"
        try:
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:  # verify() leaves the image unusable
                size = im.size
                if im.getexif().get(ExifTags.Base.Orientation, 1) in TURNED:
                    size = size[::-1]  # shown turned by a quarter: the JSON gives the size as shown
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
            return f"cannot open image: {err}"
        if size != (info["width"], info["height"]):
            return f"image is {size[0]}x{size[1]} but the JSON says {info['width']}x{info['height']}"
        return None

    # -- access ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.image_ids)

    def load(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]] | None:
        """Item `index` as its file holds it, before any resize or transform: image uint8 (uint16
        for a 16-bit PNG) [3, H, W] at the file's size, target as in the module docstring. None
        for an image that fails to decode under skip_bad_images."""
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_path_of(image_id)
        try:
            image = load_rgb(path)  # 3,H,W uint8 or uint16
            if tuple(image.shape[-2:]) != (info["height"], info["width"]):
                turned = tuple(image.shape[-2:]) == (info["width"], info["height"])
                raise BadImage(
                    f"image is {image.shape[-1]}x{image.shape[-2]} but "
                    f"{self.ann_file.name} says {info['width']}x{info['height']}"
                    + (" (width and height swapped: where an EXIF orientation tag turns the image, the "
                       "annotations must give its size, and its boxes, as it is shown)" if turned else "")
                )
        except BadImage as err:
            if self.skip_bad_images:
                if path not in _REPORTED_SKIPS:  # once per process (a loader worker is one)
                    _REPORTED_SKIPS.add(path)
                    warn(f"skipped {path}: {err}")
                return None
            raise DynamicDetError(f"{path}: {err}; {SKIP_HINT}") from None
        boxes, labels = self._boxes[image_id]
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(boxes.copy()), format="XYXY", canvas_size=tuple(image.shape[-2:])
            ),
            "labels": torch.from_numpy(labels.copy()),
            "image_id": int(image_id),
        }
        if self.masks:
            target["masks"] = tv_tensors.Mask(self.instance_masks(image_id))
        return tv_tensors.Image(image), target

    def file_size(self, image_id: int) -> tuple[int, int]:
        """(height, width) of image `image_id` as decoded (EXIF-turned), from the annotations:
        the frame evaluation reports its boxes in, whatever size it was read at."""
        info = self.coco.imgs[int(image_id)]
        return int(info["height"]), int(info["width"])

    def fitted_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an image of (height, width) is read at: as it is, or, after `fit_to`, no
        larger than the model's transform makes it in training (its floor of the sides, at
        least one pixel each, as model/transform.py)."""
        return (height, width) if self.fit is None else fitted_size(height, width, *self.fit)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]] | None:
        sample = self.load(index)
        if sample is None:
            return None
        image, target = sample
        image, target = resize_sample(image, target, self.fitted_size(*image.shape[-2:]), antialias=False)
        image = tv_tensors.Image(F.to_dtype(image, torch.float32, scale=True))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def fit_to(self, short: int, long: int) -> "CocoDataset":
        """The same dataset read no larger than the model's transform scales it in training:
        short side at most `short` (the largest of model.transform.min_size) unless the long
        side would pass `long` (max_size). An image above that size is scaled down, in uint8 and
        by the model's own interpolation, before it is converted to float and augmented, so a
        folder of 12-megapixel photos costs the loader (and the copy to the device) what the
        model's input does; smaller images are read as they are. Training reads at the largest
        training size (TransformConfig.largest_training_input); inference at the inference size
        (inference_input), handing the model each image's `file_size` for its output."""
        fitted = copy.copy(self)
        fitted.fit = (int(short), int(long))
        return fitted

    def split_ids(self, share: float, seed: int) -> tuple[list[int], list[int]]:
        """(kept, held out): a seeded `share` of this dataset's image ids held out, the
        rest kept, both in dataset order. The same (ids, share, seed) give the same split."""
        held = held_out(self.image_ids, share, seed)
        return [i for i in self.image_ids if i not in held], [i for i in self.image_ids if i in held]

    def restricted_to(self, image_ids) -> "CocoDataset":
        """The same dataset over only `image_ids` (dataset order; ids it lacks are ignored).
        Shares the annotations and transforms; the ground truth (`coco`) is left whole."""
        keep = {int(i) for i in image_ids}
        subset = copy.copy(self)
        subset.image_ids = [i for i in self.image_ids if i in keep]
        return subset

    def image_path_of(self, image_id: int) -> Path:
        """Path of the file of a COCO image id."""
        return self.image_dir / self.coco.imgs[image_id]["file_name"]

    def image_info(self, index: int) -> dict:
        """The COCO image record of item `index` (id, file_name, width, height, extras such
        as the synthetic data's `difficulty`)."""
        return self.coco.imgs[self.image_ids[index]]

    def label_to_cat_id(self, label: int) -> int:
        """COCO category id of a contiguous label (1..num_classes)."""
        if not 1 <= int(label) <= len(self.cat_ids):
            raise ValueError(f"label {label} outside 1..{len(self.cat_ids)}")
        return self.cat_ids[int(label) - 1]

    @property
    def num_classes(self) -> int:
        """Number of object classes, background excluded."""
        return len(self.cat_ids)


def _where(ann: dict) -> str:
    """How a message points at one annotation: its label file and line (YOLO data) or its id."""
    return ann.get("source") or f"annotation {ann['id']}"


def collate(batch: list) -> tuple[list[Tensor], list[dict]]:
    """Detection collate: lists of images and targets, with skipped (None) items dropped.

    A batch made only of skipped items gives ([], []); callers should skip it.
    """
    items = [b for b in batch if b is not None]
    return [b[0] for b in items], [b[1] for b in items]


# -- image decoding --------------------------------------------------------------------


TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def load_rgb(path: Path) -> Tensor:
    """Decode to a [3, H, W] uint8 (or uint16 for 16-bit PNG) tensor, whatever the mode, turned
    as its EXIF orientation says (as image viewers and annotation tools show it)."""
    try:
        data = read_file(str(path))
    except (RuntimeError, OSError) as err:
        raise BadImage("file not found" if not path.exists() else f"cannot read file: {err}")
    try:
        return decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:
        pass  # formats torchvision does not decode (BMP, TIFF, ...) or broken files
    try:
        with Image.open(path) as im:
            return pil_to_rgb(ImageOps.exif_transpose(im))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise BadImage(f"cannot decode image: {err}") from None


def pil_to_rgb(im: Image.Image) -> Tensor:
    """A PIL image as a 3,H,W uint8 tensor, whatever its mode (16-bit gray scaled to 8 bits)."""
    if im.mode.startswith("I"):  # PIL's convert("RGB") would clip 16-bit values at 255
        arr = np.asarray(im, dtype=np.float32) / 257.0
        gray = torch.from_numpy(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
        return gray.expand(3, *gray.shape).clone()
    arr = np.asarray(im.convert("RGB"))  # H,W,3
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
