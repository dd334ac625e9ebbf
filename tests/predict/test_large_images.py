"""Inference reads an image larger than the model's input at that input's size, as decoded
(data/transforms.py fit_image), and hands the model the image's own size for its output:
predict, the Python API, evaluate and calibrate's timing images. What the model sees stays what
it made of the whole image (within one uint8 step); its boxes stay in the file's pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from dynamicdet_cli.data.transforms import fit_image, fitted_size
from dynamicdet_cli.evaluation.inference import run_both_routes
from dynamicdet_cli.predict import predict, to_model_inputs
from dynamicdet_cli.speed.timing_images import folder_images

from helpers import coco_photos, detector_keeping_everything

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning",
                                        "ignore:The image encoding:DeprecationWarning")


@pytest.fixture(scope="module")
def model():
    """The tiny recipe at 64 px, one class, keeping every detection (untrained scores are low)."""
    return detector_keeping_everything(1)


def _photo(h: int, w: int) -> torch.Tensor:
    """A smooth uint8 photo, 3,h,w (a gradient and a bright block)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    image = torch.stack([x, y, (x + y) / 2]) * 200
    image[:, h // 3:h // 2, w // 4:w // 2] = 250
    return image.to(torch.uint8)


def _prepared_inputs(model, monkeypatch) -> list:
    """Spy: the image tensors model.prepare receives, call by call."""
    seen, real = [], type(model).prepare

    def prepare(self, images, targets=None, original_sizes=None):
        seen.append([tuple(im.shape) for im in images])
        return real(self, images, targets, original_sizes)
    monkeypatch.setattr(type(model), "prepare", prepare)
    return seen


def test_fit_image_gives_the_model_what_it_makes_of_the_whole_image(model):
    photo = _photo(192, 256)
    small = fit_image(photo, 64, 64)
    assert small.dtype == torch.uint8 and tuple(small.shape) == (3, 48, 64) == (3, *fitted_size(192, 256, 64, 64))
    with torch.no_grad():
        whole, _, _ = model.prepare([F.to_dtype(photo, torch.float32, scale=True)])
        read, _, sizes = model.prepare([F.to_dtype(small, torch.float32, scale=True)], original_sizes=[(192, 256)])
    assert whole.tensors.shape == read.tensors.shape
    assert (whole.tensors - read.tensors).abs().max() <= (1 / 255 + 1e-6) / min(model.transform.image_std)
    assert sizes == [(192, 256)]
    tiny = _photo(30, 40)
    assert fit_image(tiny, 64, 64) is tiny  # smaller than the input: as it is


def test_predict_reads_a_large_photo_at_the_model_size_and_reports_the_files_pixels(model, tmp_path, monkeypatch):
    photo = _photo(192, 256)
    path = tmp_path / "in" / "big.png"
    path.parent.mkdir()
    Image.fromarray(photo.permute(1, 2, 0).numpy()).save(path)
    seen = _prepared_inputs(model, monkeypatch)
    predict(model, [path], "hard", tmp_path / "out", ["a"], [1], conf=0.0, render=False, progress=False)
    assert seen == [[(3, 48, 64)]]  # never the 192x256 image
    line = json.loads((tmp_path / "out" / "predictions.jsonl").read_text())
    assert (line["width"], line["height"]) == (256, 192)
    boxes = torch.tensor([d["box"] for d in line["detections"]])
    with torch.inference_mode():
        want = model.detect([F.to_dtype(fit_image(photo, 64, 64), torch.float32, scale=True)], "hard",
                            original_sizes=[(192, 256)])[0]["boxes"]
    torch.testing.assert_close(boxes, want.round(decimals=2), atol=0.01, rtol=0)
    assert boxes[:, 2].max() > 64 and boxes[:, 2].max() <= 256 and boxes[:, 3].max() <= 192  # the file's frame
    tensors, sizes = to_model_inputs([photo], model, torch.device("cpu"))
    assert tuple(tensors[0].shape) == (3, 48, 64) and tensors[0].dtype == torch.float32 and sizes == [(192, 256)]


def test_evaluation_reads_at_the_model_size_and_compares_in_the_annotations_pixels(model, tmp_path, monkeypatch):
    data = coco_photos(tmp_path, [(320, 240), (48, 32)])
    seen = _prepared_inputs(model, monkeypatch)
    routes = run_both_routes(model, data, torch.device("cpu"), batch_size=2, show_progress=False)
    assert seen == [[(3, 48, 64), (3, 32, 48)]]  # the photo read at 48x64, the small image as it is
    big = torch.tensor([r["bbox"] for r in routes.hard[1]])  # COCO x, y, w, h
    assert (big[:, 0] + big[:, 2]).max() > 64 and (big[:, 0] + big[:, 2]).max() <= 320 + 1e-3


def test_calibrate_times_a_folder_as_predict_reads_it(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(_photo(192, 256).permute(1, 2, 0).numpy()).save(folder / "big.png")
    Image.fromarray(np.full((20, 30, 3), 128, dtype=np.uint8)).save(folder / "small.png")
    timed = folder_images(folder, batch_size=2, fit=(64, 64))
    assert sorted(tuple(im.shape) for im in timed.images) == [(3, 20, 30), (3, 48, 64)]
    assert sorted(timed.sizes) == [(20, 30), (192, 256)]
    assert all(im.dtype == torch.float32 for im in timed.images)
