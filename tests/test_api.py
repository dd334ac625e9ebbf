"""The Python API (api.py): load, predict on paths, PIL images and tensors, choose the speed,
calibrate and evaluate from code, build; bad input is one DynamicDetError; importing the
package is cheap and changes nothing."""

from __future__ import annotations

import re

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from PIL import Image
from torchvision.io import decode_png, read_file

import dynamicdet_cli as dd
from dynamicdet_cli import api
from dynamicdet_cli.checkpoint.store import load_checkpoint, new_checkpoint, router_state, save_checkpoint
from dynamicdet_cli.checkpoint.types import ValidationScores
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.data.shapes import make_shapes
from dynamicdet_cli.model.build import build_model

from conftest import RECIPES, TINY_OVERRIDES


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_recipe):
    """Shapes data (4 train, 6 val images of 64 px) and a checkpoint with a (fresh) router and
    validation scores for those 6 images."""
    root = tmp_path_factory.mktemp("api")
    data_yaml = make_shapes(root / "data", n_train=4, n_val=6, size=64, seed=0)
    val_ids = json.loads((root / "data" / "val.json").read_text())["images"]
    torch.manual_seed(0)
    classes = ["circle", "square", "triangle", "cross", "ring"]
    model = build_model(tiny_recipe.model, num_classes=len(classes))
    ckpt = replace(new_checkpoint(tiny_recipe, classes, [1, 2, 3, 4, 5], model), router=router_state(model),
                   validation=ValidationScores(tuple(im["id"] for im in val_ids), torch.linspace(0.1, 0.9, 6),
                                               str(root / "data" / "val.json"), str(root / "data" / "val")))
    path = save_checkpoint(ckpt, root / "model.pt")
    return {"root": root, "data": data_yaml, "model": path,
            "val": sorted((root / "data" / "val").iterdir())}


def test_predict_takes_paths_pil_images_and_tensors_alike(world):
    model = dd.load(world["model"])
    path = world["val"][0]
    as_uint8 = decode_png(read_file(str(path)))  # 3,H,W uint8
    as_pil = Image.open(path)
    as_float = as_uint8.float() / 255
    outputs = model.predict([str(path), path, as_pil, as_uint8, as_float], point="hard")
    assert len(outputs) == 5
    for out in outputs:
        assert set(out) >= {"boxes", "labels", "scores", "route", "difficulty"}
        assert out["boxes"].dtype == torch.float32 and out["boxes"].shape[1:] == (4,)
        assert out["labels"].dtype == torch.int64 and out["route"] == "hard"
        torch.testing.assert_close(out["boxes"], outputs[0]["boxes"])  # the same image, whatever its form
        assert out["difficulty"] == pytest.approx(outputs[0]["difficulty"])
    one = model.predict(as_float, point="hard")  # a single image
    assert len(one) == 1
    torch.testing.assert_close(one[0]["scores"], outputs[4]["scores"], rtol=1e-4, atol=1e-5)  # batch of 1 vs 5


def test_predict_equals_the_network_on_the_route_asked_for(world):
    model = dd.load(world["model"])
    images = torch.stack([decode_png(read_file(str(p))).float() / 255 for p in world["val"][:4]])  # B,3,H,W
    with torch.inference_mode():
        want = model.network.detect(list(images), route=0.5)
    got = model.predict(images, threshold=0.5, batch_size=3)  # batches of 3 and 1: input order kept
    assert [g["route"] for g in got] == [w["route"] for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g["boxes"], w["boxes"].float())
        torch.testing.assert_close(g["scores"], w["scores"].float())


def test_the_speed_options_choose_the_route(world):
    model = dd.load(world["model"])
    images = [world["val"][i] for i in range(3)]
    assert {o["route"] for o in model.predict(images, point="easy")} == {"easy"}
    assert {o["route"] for o in model.predict(images, hard_ratio=1.0)} == {"hard"}
    assert model.route(hard_ratio=0.5).text.startswith("tau")
    with pytest.raises(DynamicDetError, match="no latency measured for this run.*dynamicdet calibrate"):
        model.predict(images, latency="40ms")
    with pytest.raises(DynamicDetError, match="at most one"):
        model.predict(images, point="easy", hard_ratio=0.5)


def test_conf_leaves_out_low_scores(world):
    model = dd.load(world["model"])
    out = model.predict(world["val"][0], point="hard", conf=0.0)[0]
    assert len(out["scores"]) > 1, "the test needs detections of several scores"
    c = float(out["scores"].median())
    mid = model.predict(world["val"][0], point="hard", conf=c)[0]
    keep = out["scores"] >= c  # kept at or above conf, in the same order, with their boxes
    assert 0 < len(mid["scores"]) < len(out["scores"]) or bool(keep.all())
    torch.testing.assert_close(mid["scores"], out["scores"][keep])
    torch.testing.assert_close(mid["boxes"], out["boxes"][keep])
    for bad in (-0.1, 1.5):  # the same one-line error as `predict --conf`
        with pytest.raises(DynamicDetError, match="confidence threshold must be a number in"):
            model.predict(world["val"][0], point="hard", conf=bad)
    with pytest.raises(DynamicDetError, match="batch size must be a whole number, at least 1"):
        model.predict(world["val"][0], point="hard", batch_size=0)


def test_bad_images_are_one_error(world, tmp_path):
    model = dd.load(world["model"])
    with pytest.raises(DynamicDetError, match="3,H,W"):
        model.predict(torch.zeros(1, 64, 64))
    with pytest.raises(DynamicDetError, match="must be a path, a PIL image or a 3,H,W tensor"):
        model.predict([42])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DynamicDetError, match="broken.png"):
        model.predict(broken)
    with pytest.raises(DynamicDetError, match="not found"):
        dd.load(tmp_path / "missing.pt")


def test_images_the_network_would_misread_are_one_error(world, tmp_path):
    """Integer tensors other than uint8 / uint16 would be scaled by their dtype's maximum (a black
    image), floats in 0-255 would saturate: refused, as are empty images and folders."""
    model = dd.load(world["model"])
    pixels = decode_png(read_file(str(world["val"][0])))  # 3,H,W uint8
    for bad, needle in ((pixels.int(), "must be uint8 (0-255), uint16 or float in [0, 1], got torch.int32"),
                        (pixels > 0, "got torch.bool"),
                        (pixels.float(), "must hold values in [0, 1], this one reaches"),
                        (torch.zeros(3, 0, 10, dtype=torch.uint8), "has no pixels")):
        with pytest.raises(DynamicDetError, match=re.escape(needle)):
            model.predict(bad)
    with pytest.raises(DynamicDetError, match="is a folder: pass its image files"):
        model.predict(world["val"][0].parent)
    for kwargs, needle in ((dict(hard_ratio="50%"), "hard_ratio must be a number"),
                           (dict(batch_size="2"), "batch size must be a whole number"),
                           (dict(latency=40), "latency must be a string")):
        with pytest.raises(DynamicDetError, match=needle):
            model.predict(pixels, **kwargs)
    for call in (lambda: model.calibrate(batch_size=0, save=False), lambda: model.evaluate(world["data"], batch_size=0)):
        with pytest.raises(DynamicDetError, match="batch size must be a whole number"):
            call()


def test_a_sixteen_bit_pil_image_reads_as_its_file_does(world, tmp_path):
    """PIL's convert("RGB") clips 16-bit values at 255 (a white image): the API reads a 16-bit PIL
    image as predict reads the file."""
    from PIL import Image
    from dynamicdet_cli.data.coco import load_rgb
    gray = (decode_png(read_file(str(world["val"][0])))[0].numpy().astype("uint16") * 257)
    path = tmp_path / "sixteen.png"
    Image.fromarray(gray).save(path)
    model = dd.load(world["model"])
    from_pil, from_file = model.predict([Image.open(path), path], point="hard")
    assert load_rgb(path).dtype == torch.uint16  # the file: 16 bits, scaled by 65535; PIL's: 8 bits
    assert len(from_pil["boxes"]) == len(from_file["boxes"]) > 0
    torch.testing.assert_close(from_pil["boxes"], from_file["boxes"], atol=0.05, rtol=0)
    assert float(from_pil["difficulty"]) == pytest.approx(float(from_file["difficulty"]), abs=1e-3)


def test_calibrate_and_a_held_latency_from_code(world, tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(world["model"].read_bytes())
    model = dd.load(path)
    result = model.calibrate(latency="50%", name="half", batch_size=2, repeats=1, max_images=4, save=False)
    assert result.point is not None and result.measured.batch_size == 2
    assert "half" in model.checkpoint.operating_points and "half" not in load_checkpoint(path).operating_points
    model.save(path)
    assert load_checkpoint(path).operating_points["half"] == result.point
    outputs = model.predict(world["val"], latency="50%", batch_size=2)  # the regime calibrate just timed
    assert len(outputs) == len(world["val"])
    held = model.predict(world["val"], point="half", hold=True, batch_size=2)
    assert len(held) == len(world["val"]) and model.last_hold is not None
    assert model.last_hold.target_ms == pytest.approx(result.point.target_ms)


def test_evaluate_from_code_writes_what_the_cli_writes(world, tmp_path):
    model = dd.load(world["model"])
    report = model.evaluate(world["data"], point="easy", out=tmp_path / "eval", batch_size=2)
    assert 0.0 <= report.evaluation.metrics["AP"] <= 1.0 and report.evaluation.hard_share == 0.0
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["metrics"]["AP"] == report.evaluation.metrics["AP"] and written["route"] == "easy"
    sweep = model.evaluate(world["data"], sweep=[0.0, 1.0], draws=0, out=tmp_path / "sweep", batch_size=2)
    assert [row["hard_share"] for row in sweep.sweep_rows] == [0.0, 1.0]
    assert sweep.missing_latency is not None  # no latency timed at batch 2 in this checkpoint


def test_build_from_code(tmp_path):
    ckpt, note = api.build(RECIPES / "shapes-tiny.yaml", classes=["cat", "dog"], overrides=TINY_OVERRIDES)
    assert ckpt.classes == ("cat", "dog") and ckpt.category_ids == (1, 2) and note == ""
    with pytest.raises(DynamicDetError, match="given more than once"):
        api.build(RECIPES / "shapes-tiny.yaml", classes="cat,cat", overrides=TINY_OVERRIDES)


def test_importing_the_package_loads_no_torch_and_changes_no_malloc_setting():
    code = ("import sys, dynamicdet_cli; from dynamicdet_cli.core import allocator; "
            "print('torch' in sys.modules, allocator.setting(), callable(dynamicdet_cli.load))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["False", "default"] and out[2] == "True"


def test_eight_bit_images_cross_to_the_device_before_they_are_converted(monkeypatch):
    """A uint8 image is copied to the model's device as uint8 (a quarter of float32's bytes over
    PCIe) and converted there; a float image arrives as it is. Spied on Tensor.to, on the CPU."""
    import torch
    from PIL import Image
    from dynamicdet_cli.api import _decoded
    from dynamicdet_cli.predict import to_model_input
    _as_tensor = lambda image, device: to_model_input(_decoded(image), device)  # noqa: E731  the API's path
    moved, real = [], torch.Tensor.to

    def to(self, *args, **kwargs):
        target = kwargs.get("device", args[0] if args else None)
        if isinstance(target, torch.device):
            moved.append(self.dtype)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    cpu = torch.device("cpu")
    pixels = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    for convert in (lambda: _as_tensor(pixels, cpu), lambda: _as_tensor(Image.new("RGB", (5, 4)), cpu),
                    lambda: to_model_input(pixels, cpu)):
        moved.clear()
        out = convert()
        assert out.dtype == torch.float32 and moved[0] == torch.uint8
    from torchvision.transforms.v2 import functional as F
    assert torch.equal(_as_tensor(pixels, cpu), F.to_dtype(pixels, torch.float32, scale=True))
    moved.clear()
    assert _as_tensor(pixels.float() / 255, cpu).dtype == torch.float32 and moved == [torch.float32]


def test_train_both_steps_from_code_and_predict(world, tmp_path):
    """dd.train_detectors and dd.train_router are the commands' two steps: a run folder, then a
    checkpoint with a router that dd.load predicts with; the callbacks see what the CLI prints."""
    seen = {"start": [], "epoch": []}
    result = dd.train_detectors(RECIPES / "shapes-tiny.yaml", world["data"], tmp_path / "run",
                                overrides=[*TINY_OVERRIDES, "train.batch_size=2", "train.workers=0",
                                           "train.warmup_iters=1"], epochs=1, progress=False,
                                on_start=seen["start"].append, on_epoch=seen["epoch"].append)
    assert result.complete and result.epochs == 1 and result.run == tmp_path / "run"
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "state.pt").is_file()
    assert seen["start"][0].startswith("training on cpu") and seen["epoch"][0]["epoch"] == 1
    assert "d1" in result.last_val and "AP" in result.last_val["d1"]
    with pytest.raises(DynamicDetError, match="already holds a run"):
        dd.train_detectors(RECIPES / "shapes-tiny.yaml", world["data"], tmp_path / "run", epochs=1, progress=False)
    with pytest.raises(DynamicDetError, match="resume state, not a checkpoint: use best.pt or last.pt"):
        dd.load(tmp_path / "run" / "state.pt")

    path, summary = dd.train_router(tmp_path / "run" / "best.pt", world["data"], tmp_path / "model.pt",
                                    overrides=["router.epochs=2", "router.loss_draws=1"], progress=False)
    assert path == tmp_path / "model.pt" and isinstance(summary["delta"], float)
    assert "gap_router_50" in summary and "gap_random_50" in summary
    model = dd.load(path, device="cpu")
    assert model.checkpoint.router is not None and model.checkpoint.validation is not None
    (out,) = model.predict([world["val"][0]], hard_ratio=0.5)
    assert out["route"] in ("easy", "hard") and out["boxes"].shape[-1] == 4


def test_train_from_code_refuses_what_the_command_refuses(world, tmp_path):
    with pytest.raises(DynamicDetError, match="give a RECIPE"):
        dd.train_detectors(None, world["data"], tmp_path / "run")
    with pytest.raises(DynamicDetError, match="no resume state"):
        dd.train_detectors(None, world["data"], tmp_path / "nothing", resume=True)
    with pytest.raises(DynamicDetError, match="router"):
        dd.train_router(world["model"], world["data"], tmp_path / "m.pt", overrides=["train.lr=0.1"])
    for kwargs, needle in ((dict(epochs=0), "train.epochs: 0 is below the minimum 1"),
                           (dict(batch_size=0), "train.batch_size: 0 is below the minimum 1"),
                           (dict(overrides={"train.epochs": 1}), "give a list of 'KEY=VALUE' strings")):
        with pytest.raises(DynamicDetError, match=re.escape(needle)):  # not the recipe's whole schedule
            dd.train_detectors(RECIPES / "shapes-tiny.yaml", world["data"], tmp_path / "zero", **kwargs)
    with pytest.raises(DynamicDetError, match="router.epochs: 0 is below the minimum 1"):
        dd.train_router(world["model"], world["data"], tmp_path / "m.pt", epochs=0)
