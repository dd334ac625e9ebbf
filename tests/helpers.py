"""Assertions and data helpers shared by the tests (imported as `helpers`: pyproject puts tests/ on sys.path)."""

import json
import shutil
from pathlib import Path


def one_error_line(result, *needles: str) -> str:
    """A user error: exit status 2, no traceback, one 'error:' line holding every needle."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if "error:" in line]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], result.output
    return lines[0]


def routed_at_median(model, images):
    """Route a batch at its median difficulty, and run each image alone on the route the batch
    gave it: (mixed, alone, phi, tau), for the mixed-batch tests of every family. The routes
    must mix: a batch that went all one way tests nothing."""
    import torch  # here, so that the CLI helpers above import nothing heavy

    with torch.no_grad():
        phi = torch.stack([r["difficulty"] for r in model.detect(images, route="easy")])  # B
        tau = float(phi.median())
        mixed = model.detect(images, route=tau)
        alone = [model.detect([img], route="hard" if p > tau else "easy")[0] for img, p in zip(images, phi)]
    routes = [r["route"] for r in mixed]
    assert routes == ["hard" if p > tau else "easy" for p in phi.tolist()]
    assert set(routes) == {"easy", "hard"}
    assert [r["route"] for r in alone] == routes
    return mixed, alone, phi, tau


def regrouped_at_median(model, images):
    """Route images at their median difficulty through a RouteBatcher (input batches of 2,
    route calls of 3, so images of different input batches share calls) and run each image
    alone on its route: (regrouped in input order, alone), for every family's tests."""
    import torch

    from dynamicdet_cli.speed.batcher import RouteBatcher

    _, alone, _, tau = routed_at_median(model, images)
    batcher = RouteBatcher(model, tau, batch_size=3, regroup=True)
    done = []
    with torch.no_grad():
        for i in range(0, len(images), 2):
            done += batcher.add(images[i:i + 2], range(i, min(i + 2, len(images))))
        done += batcher.finish()
    assert sorted(d.key for d in done) == list(range(len(images)))
    regrouped = [d.detection for d in sorted(done, key=lambda d: d.key)]
    assert [r["route"] for r in regrouped] == [r["route"] for r in alone]
    return regrouped, alone


def coco_to_yolo(coco: Path, dest: Path, splits=("train", "val")) -> Path:
    """A YOLO-format copy of make-shapes data: images/<split>/, labels/<split>/*.txt (none for an
    image without objects), and data.yaml with `names` as an {index: name} mapping."""
    names = None
    for split in splits:
        data = json.loads((coco / f"{split}.json").read_text())
        cats = sorted(c["id"] for c in data["categories"])
        names = {i: next(c["name"] for c in data["categories"] if c["id"] == cat) for i, cat in enumerate(cats)}
        (dest / "images" / split).mkdir(parents=True)
        (dest / "labels" / split).mkdir(parents=True)
        for img in data["images"]:
            shutil.copy(coco / split / img["file_name"], dest / "images" / split / img["file_name"])
            lines = []
            for ann in data["annotations"]:
                if ann["image_id"] == img["id"]:
                    x, y, w, h = ann["bbox"]
                    W, H = img["width"], img["height"]
                    lines.append(f"{cats.index(ann['category_id'])} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} "
                                 f"{w / W:.6f} {h / H:.6f}\n")
            if lines:
                (dest / "labels" / split / img["file_name"]).with_suffix(".txt").write_text("".join(lines))
    text = "path: .\n" + "".join(f"{s}: images/{s}\n" for s in splits) + "names:\n"
    text += "".join(f"  {i}: {n}\n" for i, n in names.items())
    (dest / "data.yaml").write_text(text)
    return dest / "data.yaml"


def detector_keeping_everything(num_classes: int):
    """recipes/shapes-tiny.yaml at 64 px with `num_classes` classes, seed 0, eval mode, keeping
    every detection (an untrained model's scores are low): predict's tests compare its outputs."""
    import torch

    from dynamicdet_cli.config.recipe import load_recipe, with_overrides
    from dynamicdet_cli.model.build import build_model
    recipe = with_overrides(load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "shapes-tiny.yaml"), [
        "model.transform.min_size=64", "model.transform.max_size=64", "model.roi_heads.score_thresh=0.0"])
    torch.manual_seed(0)
    return build_model(recipe.model, num_classes=num_classes).eval()


PHOTO_COLOURS = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30)]


def coco_photos(tmp_path: Path, sizes, masks: bool = False) -> "CocoDataset":  # noqa: F821
    """One PNG per (width, height): a textured gray field with one rectangle of its own colour
    (a quarter of each side, at a third of the way in), boxed (and masked) in a COCO file."""
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_util

    from dynamicdet_cli.data import CocoDataset, build_transforms
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (w, h) in enumerate(sizes):
        pixels = (100 + rng.integers(0, 40, (h, w, 3))).astype(np.uint8)
        x, y, bw, bh = w // 3, h // 3, w // 4, h // 4
        pixels[y:y + bh, x:x + bw] = PHOTO_COLOURS[i % 4]
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        ann = {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [x, y, bw, bh], "iscrowd": 0,
               "area": bw * bh}
        if masks:
            m = np.zeros((h, w), dtype=np.uint8)
            m[y:y + bh, x:x + bw] = 1
            rle = mask_util.encode(np.asfortranarray(m))
            ann["segmentation"] = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
        anns.append(ann)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    return CocoDataset(path, tmp_path, transforms=build_transforms(False), masks=masks)


def repo_pythonpath(repo: Path) -> str:
    """PYTHONPATH for a subprocess that imports the package from `repo`: the repository first,
    then whatever the caller's PYTHONPATH held (on the GPU machine, where pycocotools is)."""
    import os
    return os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p)
