"""Bad inputs, second round (issue 25): COCO files as real tools write them, weights that went
bad with a valid checksum, writers that collide, extreme image shapes, misleading messages.

One test per class, through the `dynamicdet` console-script entry point (`cli.main`), each
asserting exit status 2, exactly one `error:` line on stderr, no traceback, and every input
byte-identical afterwards (test_bad_inputs.Cli.fails). Tiny recipe, shapes at 64 px.
"""

from __future__ import annotations

import json
from dataclasses import replace
import shutil
from pathlib import Path

import pytest
import torch

from dynamicdet_cli.data.shapes import make_shapes
from dynamicdet_cli.config.recipe import load_recipe
from helpers import repo_pythonpath
from test_bad_inputs import FAST, FAST_SETS, TINY, Cli, _checkpoint, _damaged

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning",
                                         "ignore:The image encoding:DeprecationWarning")]


@pytest.fixture
def run(monkeypatch, capsys) -> Cli:
    return Cli(monkeypatch, capsys)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shapes data (4 training, 2 validation images), a fresh checkpoint and one with a router."""
    root = tmp_path_factory.mktemp("world2")
    make_shapes(root / "data", n_train=4, n_val=2, size=64, seed=0)
    recipe = load_recipe(TINY, FAST)
    return {"root": root, "data": root / "data", "yaml": root / "data" / "data.yaml", "recipe": recipe,
            "fresh": _checkpoint(recipe, root / "fresh.pt"),
            "routed": _checkpoint(recipe, root / "routed.pt", router=True, val_ids=[1, 2])}


def _coco_variant(world, tmp_path: Path, name: str, edit) -> Path:
    """A copy of the shapes data whose val.json `edit(coco)` changed (or replaced: edit returns text)."""
    data = Path(shutil.copytree(world["data"], tmp_path / name))
    coco = json.loads((data / "val.json").read_text())
    text = edit(coco)
    (data / "val.json").write_text(text if isinstance(text, str) else json.dumps(coco))
    return data


# ----------------------------------------------------------------------------- class 1

def test_coco_files_as_real_tools_write_them(run, world, tmp_path):
    """Missing area / iscrowd are filled with COCO's defaults (one warning); wrong types,
    duplicate annotation ids and absurdly nested JSON are one error line naming the record."""
    def strip(coco):
        for ann in coco["annotations"]:
            del ann["area"], ann["iscrowd"]
    data = _coco_variant(world, tmp_path, "no-area", strip)
    before = (data / "val.json").read_bytes()
    code, out, err = run("evaluate", world["fresh"], "--data", data / "data.yaml", "--out", tmp_path / "e",
                         "--no-progress")
    assert code == 0, err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("warning:") and "without area" in line and "without iscrowd" in line
    assert (data / "val.json").read_bytes() == before

    def set_ann(key, value):
        return lambda coco: coco["annotations"][1].__setitem__(key, value)

    def set_img(key, value):
        return lambda coco: coco["images"][0].__setitem__(key, value)

    def duplicate(coco):
        coco["annotations"][1]["id"] = coco["annotations"][0]["id"]
    cases = {
        "crowd": (set_ann("iscrowd", "yes"), "iscrowd 'yes'"),
        "area": (set_ann("area", "big"), "area 'big'"),
        "name-int": (set_img("file_name", 123), "file_name 123"),
        "name-null": (set_img("file_name", None), "file_name None"),
        "dup": (duplicate, "duplicate annotation id"),
        "ann-id": (set_ann("id", "7"), "annotation id '7'"),
        "nested": (lambda coco: "[" * 100000 + "]" * 100000, "nested too deeply"),
    }
    for name, (edit, needle) in cases.items():
        data = _coco_variant(world, tmp_path, name, edit)
        line = run.fails(["evaluate", world["fresh"], "--data", data / "data.yaml", "--out", tmp_path / name,
                          "--no-progress"], "val.json", needle, inputs=[data, world["fresh"]])
        if name in ("crowd", "area", "ann-id"):
            assert "annotation" in line


# ----------------------------------------------------------------------------- class 3

def test_weights_that_went_bad_with_a_valid_checksum(run, world, tmp_path, monkeypatch):
    """NaN or inf weights saved with a right checksum are refused on load by every command;
    a run that diverges stops naming the epoch and keeps its last finite checkpoint; a sweep
    without a trained router says so."""
    key = "head1.roi_heads.box_predictor.cls_score.weight"
    nan = _damaged(world["routed"], tmp_path / "nan.pt", lambda c: c["detector"][key].view(-1)[3].fill_(float("nan")))
    inf = _damaged(world["fresh"], tmp_path / "inf.pt", lambda c: c["detector"][key].view(-1)[0].fill_(float("inf")))
    image = world["data"] / "val" / "000000.png"
    inputs = [nan, inf, world["data"]]
    for bad in (nan, inf):
        for args in (["info", bad, "--no-flops"],
                     ["predict", image, "-c", bad, "--out", tmp_path / "p", "--no-progress"],
                     ["evaluate", bad, "--data", world["yaml"], "--out", tmp_path / "e", "--no-progress"],
                     ["evaluate", bad, "--data", world["yaml"], "--out", tmp_path / "e", "--sweep", "--no-progress"],
                     ["calibrate", bad, "--hard-ratio", 0.5],
                     ["export", bad, "--format", "onnx", "-o", tmp_path / "x"],
                     ["train-router", bad, "--data", world["yaml"], "--no-progress"]):
            run.fails(args, str(bad), f"detector[{key}]", "NaN or infinite", inputs=inputs)
    assert not any((tmp_path / d).exists() for d in ("p", "e", "x"))

    run.fails(["evaluate", world["fresh"], "--data", world["yaml"], "--sweep", "--out", tmp_path / "s",
               "--no-progress"], "no trained router", "train-router", inputs=[world["fresh"], world["data"]])
    code, out, err = run("info", world["fresh"], "--no-flops")
    assert code == 0 and "not trained" in out, out + err

    from dynamicdet_cli.router import training as router_training
    from dynamicdet_cli.checkpoint.store import load_checkpoint

    def diverged_router(ckpt, *args, **kwargs):
        new = replace(ckpt, router={k: torch.full_like(v, float("nan")) for k, v in ckpt.detector.items()
                                    if k.startswith("head1.roi_heads.box_predictor")})
        return new, {}
    monkeypatch.setattr(router_training, "train_router_checkpoint", diverged_router)
    routed = tmp_path / "to-route.pt"
    routed.write_bytes(world["fresh"].read_bytes())
    run.fails(["train-router", routed, "--data", world["yaml"], "--no-progress"], "router training diverged",
              "nothing was written", inputs=[routed, world["data"]])

    from dynamicdet_cli.train import loop as engine
    real = engine.train_one_epoch

    def diverge_in_epoch_2(model, *args, **kwargs):
        stats = real(model, *args, **kwargs)
        if args[5] == 1:  # epoch index: the loss stayed finite, the last step's update did not
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")
        return stats
    monkeypatch.setattr(engine, "train_one_epoch", diverge_in_epoch_2)
    out = tmp_path / "run"
    run.fails(["train-detectors", TINY, "--data", world["yaml"], "--out", out, "--no-progress", "--epochs", 3,
               *FAST_SETS], "diverged in epoch 2", "last.pt keeps epoch 1", inputs=[world["data"]])
    assert load_checkpoint(out / "last.pt").training.epochs == 1
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 1


# ----------------------------------------------------------------------------- class 4

REPO = Path(__file__).resolve().parents[2]


def _cli_process(*args):
    """`dynamicdet ARGS` in a process of its own (the package of this checkout, one thread)."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": repo_pythonpath(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dynamicdet_cli", *[str(a) for a in args]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_writers_that_collide_lose_nothing(run, world, tmp_path):
    """Two calibrates on one checkpoint both store their point; a second train-detectors into a
    busy --out is refused; a run folder holding a model needs --resume or --force; predict never
    renders over its own input images."""
    import shutil
    import time

    from dynamicdet_cli.core.atomic import locked
    from dynamicdet_cli.checkpoint.store import load_checkpoint
    ckpt = tmp_path / "routed.pt"
    shutil.copy(world["routed"], ckpt)
    calibrate = ["calibrate", ckpt, "--random-images", "--max-images", 2, "--repeats", 1, "--batch-size", 1]
    with locked(ckpt):  # both start while the file is held, so without the lock their updates would race
        procs = [_cli_process(*calibrate, "--hard-ratio", ratio, "--name", name)
                 for name, ratio in (("a", 0.25), ("b", 0.75))]
        for proc in procs:
            assert "waiting" in proc.stderr.readline()
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "stored operating point" in out
    points = load_checkpoint(ckpt).operating_points
    assert set(points) == {"a", "b"}

    # A second train-detectors into an --out being written is refused; the first loses nothing.
    out = tmp_path / "run"
    train = ["train-detectors", TINY, "--data", world["yaml"], "--out", out, "--no-progress", *FAST_SETS]
    first = _cli_process(*train, "--epochs", 4)  # long enough to be running when the second starts
    deadline = time.monotonic() + 120
    while not (out / "recipe.yaml").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()[1]
    run.fails([*train, "--epochs", 1], str(out), "another train-detectors", inputs=[world["data"]])
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]

    # A run folder holding a model (even without state.pt) is refused unless --resume or --force.
    (out / "state.pt").unlink()
    run.fails([*train, "--epochs", 1], str(out), "best.pt", "--force", inputs=[out])
    code, text, err = run(*train, "--epochs", 1, "--force")
    assert code == 0, err
    assert load_checkpoint(out / "best.pt").training.epochs == 1
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]

    # predict DIR/render --out DIR would render each image over itself.
    images = tmp_path / "pics"
    shutil.copytree(world["data"] / "val", images / "render")
    run.fails(["predict", images / "render", "-c", world["fresh"], "--out", images, "--no-progress"],
              "written over", str(images / "render"), inputs=[images])


# ----------------------------------------------------------------------------- class 2

def test_extreme_image_shapes_and_sizes(run, world, tmp_path, monkeypatch):
    """Images of 10000x10 and 10x10000 are legal: evaluate, train-detectors and predict run on
    them. Out-of-range sizes are refused by the recipe's checks, and an allocation that fails
    is one line."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "thin"
    make_shapes(data, n_train=2, n_val=2, size=64, seed=0)
    for split in ("train", "val"):
        coco = json.loads((data / f"{split}.json").read_text())
        for image, (w, h) in zip(coco["images"], ((10000, 10), (10, 10000))):
            Image.fromarray(np.full((h, w, 3), 127, np.uint8)).save(data / split / image["file_name"])
            image["width"], image["height"] = w, h
            for ann in coco["annotations"]:
                if ann["image_id"] == image["id"]:
                    ann["bbox"] = [1, 1, min(w, 50) - 2, min(h, 50) - 2]
                    ann.pop("segmentation", None)
                    ann.pop("area", None)
        (data / f"{split}.json").write_text(json.dumps(coco))
    for args in (["evaluate", world["fresh"], "--data", data / "data.yaml", "--out", tmp_path / "e", "--no-progress"],
                 ["train-detectors", TINY, "--data", data / "data.yaml", "--out", tmp_path / "run", "--no-progress",
                  "--epochs", 1, *FAST_SETS],
                 ["predict", data / "val", "-c", world["fresh"], "--out", tmp_path / "p", "--no-progress"]):
        code, out, err = run(*args)
        assert code == 0, (args, err)
        assert "Traceback" not in err
    assert len((tmp_path / "p" / "predictions.jsonl").read_text().splitlines()) == 2

    inputs = [world["fresh"], world["data"]]
    out = tmp_path / "m.pt"
    run.fails(["build", TINY, "-o", out, "--set", "model.transform.min_size=[0]"],
              "model.transform.min_size[0]", "below the minimum", inputs=inputs)
    run.fails(["build", TINY, "-o", out, "--set", "model.rpn.anchor_sizes=[-32,64,128,256,512]"],
              "model.rpn.anchor_sizes[0]", inputs=inputs)
    run.fails(["build", TINY, "-o", out, "--set", "model.num_classes=100000000"], "model.num_classes",
              "above the maximum", inputs=inputs)
    run.fails(["train-detectors", TINY, "--data", world["yaml"], "--out", tmp_path / "r", "--image-size", 60000],
              "--image-size", inputs=inputs)
    run.fails(["info", world["fresh"], "--image-size", 60000], "--image-size", inputs=inputs)
    assert not out.exists()

    from dynamicdet_cli.cli import tables
    def allocator(*args, **kwargs):  # what torch's CPU allocator raises for a size it cannot hold
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 412316860416 bytes. Error code 12")
    monkeypatch.setattr(tables, "info_table", allocator)
    run.fails(["info", world["fresh"]], "not enough memory", "--image-size", inputs=inputs)


# ----------------------------------------------------------------------------- class 5

REGNET = ["--set", "model.backbone.kind=regnet", "--set", "model.backbone.widths=[16,32,64,128]",
          "--set", "model.backbone.stem_width=16", "--set", "model.backbone.weights=''"]


def test_messages_say_what_is_wrong_with_the_input_given(run, world, tmp_path, monkeypatch):
    import errno

    from dynamicdet_cli.core import atomic
    from helpers import coco_to_yolo

    fresh, data = world["fresh"], world["data"]
    folder = tmp_path / "a-folder"
    folder.mkdir()
    text = tmp_path / "notes.txt"
    text.write_text("not weights\n")
    inputs = [fresh, data, text]
    # A folder where a file is expected is a folder, not "not found".
    run.fails(["info", folder], str(folder), "is a folder", inputs=inputs)
    run.fails(["build", folder, "-o", tmp_path / "m.pt"], str(folder), "is a folder", inputs=inputs)
    run.fails(["evaluate", fresh, "--val-ann", folder, "--val-images", data / "val"], "is a folder", inputs=inputs)
    run.fails(["evaluate", fresh, "--data", folder], "is a folder", inputs=inputs)
    # A COCO file given as --data, a checkpoint given as a recipe, a text file as weights.
    run.fails(["evaluate", fresh, "--data", data / "val.json"], "COCO annotation file", "--val-ann", inputs=inputs)
    run.fails(["build", fresh, "-o", tmp_path / "m.pt"], str(fresh), "it is a checkpoint", inputs=inputs)
    run.fails(["train-detectors", TINY, "--data", world["yaml"], "--out", tmp_path / "r", "--init", text,
               "--no-progress", *FAST_SETS], str(text), "not a weights file", inputs=inputs)
    # On a RegNet recipe, what is wrong with the weights given comes first.
    for spec, needle in ((tmp_path / "missing.pt", "not found"), (text, "not a weights file"),
                         ("torchvision:NotAThing", "not a torchvision weights name"),
                         ("torchvision:resnet18", "ResNet backbones only")):
        run.fails(["build", TINY, "-o", tmp_path / "m.pt", *REGNET, "--backbone-weights", spec], needle, inputs=inputs)
    # The latency hint offers only what the parser takes; a negative seed is an option error.
    line = run.fails(["calibrate", world["routed"], "--latency", "fast"], "50%", inputs=inputs)
    assert "or '40'" not in line
    run.fails(["make-shapes", tmp_path / "s", "--seed", -5], "--seed", inputs=inputs)
    # A YOLO class 1.5 is not a whole number (not "outside 0..4").
    yolo = coco_to_yolo(data, tmp_path / "yolo")
    label = next((tmp_path / "yolo" / "labels" / "val").glob("*.txt"))
    label.write_text("1.5 0.5 0.5 0.2 0.2\n")
    run.fails(["evaluate", fresh, "--data", yolo, "--no-progress"], "class 1.5 is not a whole number",
              inputs=[*inputs, tmp_path / "yolo"])
    # Write errors name the user's file, not the hidden temporary one.
    real_chmod = atomic.os.chmod

    def read_only(path, mode):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    monkeypatch.setattr(atomic.os, "chmod", read_only)
    out = tmp_path / "m.pt"
    line = run.fails(["build", TINY, "-o", out, *FAST_SETS], f"{out}: read-only file system", inputs=inputs)
    assert ".tmp" not in line and not list(tmp_path.glob(".m.pt*"))
    monkeypatch.setattr(atomic.os, "chmod", real_chmod)
    # A 244-character image name is legal, and so is its render.
    long_name = tmp_path / "long" / ("a" * 240 + ".png")
    long_name.parent.mkdir()
    long_name.write_bytes((data / "val" / "000000.png").read_bytes())
    code, out_text, err = run("predict", long_name, "-c", fresh, "--out", tmp_path / "p", "--no-progress")
    assert code == 0, err
    assert (tmp_path / "p" / "render" / long_name.name).is_file()


# ----------------------------------------------------------------------------- class 6

def test_one_line_means_one_line(run, world, tmp_path, monkeypatch):
    """No warning line before an error: a foreign pickle given to --init, a folder of files
    that are not images, a data set whose every image is skipped. A library warning in a command
    that succeeds is one `warning:` line, said once."""
    import pickle
    import warnings

    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))  # torch warns of protocol 4
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(12):
        (junk / f"photo-with-a-rather-long-name-{i:03d}.jpg").write_text(f"not an image {i}\n" * 4)
    wrong = tmp_path / "wrong"
    make_shapes(wrong, n_train=1, n_val=2, size=64, seed=0)
    coco = json.loads((wrong / "val.json").read_text())
    for image in coco["images"]:
        image["width"] = 100
    (wrong / "val.json").write_text(json.dumps(coco))
    inputs = [world["fresh"], world["data"], foreign, junk, wrong]
    run.fails(["train-detectors", TINY, "--data", world["yaml"], "--out", tmp_path / "r", "--init", foreign,
               "--no-progress", *FAST_SETS], str(foreign), inputs=inputs)
    run.fails(["predict", junk, "-c", world["fresh"], "--out", tmp_path / "p", "--no-progress"],
              "no readable images among 12 files", inputs=inputs)
    run.fails(["evaluate", world["fresh"], "--data", wrong / "data.yaml", "--skip-bad-images", "--no-progress"],
              "no usable images", "skipped 2", inputs=inputs)

    from dynamicdet_cli.cli import tables
    real = tables.info_table

    def chatty(*args, **kwargs):
        for _ in range(3):
            warnings.warn("a library's warning\n    spread over two lines", UserWarning)
        return real(*args, **kwargs)
    monkeypatch.setattr(tables, "info_table", chatty)
    code, out, err = run("info", world["fresh"], "--no-flops")
    assert code == 0, err
    assert err.splitlines() == ["warning: a library's warning spread over two lines"], err


# ----------------------------------------------------------------------------- class 7

def _readme_python_blocks() -> list[str]:
    """The ```python blocks of README.md and the manual in docs/."""
    blocks = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        blocks += [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    return blocks


def test_examples_and_readme_snippets_are_part_of_the_product(world, tmp_path):
    """examples/onnx_predict.py gives one error line and status 2 for a truncated image and a
    NaN --tau, and runs on a 10000x10 image; the Python snippets of README and docs/ run as written."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    ts = subprocess.run([sys.executable, "-m", "dynamicdet_cli", "export", str(world["fresh"]), "--format",
                         "torchscript", "-o", str(tmp_path / "exported-ts")], cwd=tmp_path, capture_output=True,
                        text=True, timeout=600, env=_env())
    assert ts.returncode == 0, ts.stderr
    # docs/export.md's pt2 snippet loads exported-pt2/: a yolo model's programs (fresh weights)
    yolo = tmp_path / "yolo.pt"
    for args in (["build", str(REPO / "recipes" / "shapes-yolo-tiny.yaml"), "-o", str(yolo)],
                 ["export", str(yolo), "--format", "pt2", "-o", str(tmp_path / "exported-pt2")]):
        done = subprocess.run([sys.executable, "-m", "dynamicdet_cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600, env=_env())
        assert done.returncode == 0, done.stderr
    blocks = _readme_python_blocks()
    assert blocks, "README.md and docs/ have no python snippet"
    # the paths the Python API example names: the demo's model (with a router) and its data
    import shutil
    shutil.copytree(world["data"], tmp_path / "data" / "shapes")
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    shutil.copy(world["routed"], tmp_path / "runs" / "demo" / "model.pt")
    for block in blocks:
        done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env=_env())
        assert done.returncode == 0, (block, done.stderr[-2000:])

    pytest.importorskip("onnxruntime", reason="running the graphs needs the export extra: pip install 'dynamicdet[export]'")
    onnx = subprocess.run([sys.executable, "-m", "dynamicdet_cli", "export", str(world["fresh"]), "--format",
                           "onnx", "-o", str(tmp_path / "exported")], capture_output=True, text=True, timeout=600,
                          env=_env())
    assert onnx.returncode == 0, onnx.stderr
    image = world["data"] / "val" / "000000.png"
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(image.read_bytes()[:200])
    thin = tmp_path / "thin.png"
    Image.fromarray(np.full((10, 10000, 3), 127, np.uint8)).save(thin)
    tall = tmp_path / "tall.png"
    Image.fromarray(np.full((10000, 10, 3), 127, np.uint8)).save(tall)
    example = [sys.executable, str(REPO / "examples" / "onnx_predict.py"), str(tmp_path / "exported")]
    before = {p: p.read_bytes() for p in (truncated, image)}
    for args, needle in (([str(truncated)], "truncated.png: cannot read the image"),
                         ([str(image), "--tau", "nan"], "--tau nan"),
                         ([str(image), "--batch-size", "0"], "--batch-size"),
                         ([str(image), "--tau", "x"], "--tau")):
        done = subprocess.run([*example, *args], capture_output=True, text=True, timeout=300, env=_env())
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], done.stderr
    assert {p: p.read_bytes() for p in before} == before
    done = subprocess.run([*example, str(thin), str(tall), str(image), "--conf", "0"], capture_output=True,
                          text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["file"] for r in results] == [str(thin), str(tall), str(image)]
    for r, (w, h) in zip(results, ((10000, 10), (10, 10000), (64, 64))):
        assert all(0 <= b[0] <= b[2] <= w and 0 <= b[1] <= b[3] <= h for b in (d["box"] for d in r["detections"]))


def _env() -> dict:
    import os
    return {**os.environ, "PYTHONPATH": repo_pythonpath(REPO), "OMP_NUM_THREADS": "1"}
