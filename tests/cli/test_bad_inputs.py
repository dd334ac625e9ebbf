"""Every bad input: one line, a non-zero exit, nothing lost, nothing damaged accepted (issue 12).

One test per class of failure. Each runs the `dynamicdet` console-script entry point
(`cli.main`, with sys.argv set) on several examples of its class and asserts: exit status 2,
exactly one line on stderr, which starts with `error:` and names the problem, no traceback,
and every input file byte-identical afterwards.

The data is the synthetic shapes at 64 px (4 training, 2 validation images) and the model the
tiny recipe's, so the module takes a few seconds on a 2-core CPU.
"""

from __future__ import annotations

import json
from dataclasses import replace
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynamicdet_cli import __version__
from dynamicdet_cli.core import atomic
from dynamicdet_cli.cli import app as cli
from dynamicdet_cli.checkpoint.store import (load_checkpoint, new_checkpoint, read_checkpoint_dict, router_state,
                                             save_checkpoint, write_checkpoint_dict)
from dynamicdet_cli.checkpoint.types import ValidationScores
from dynamicdet_cli.data.shapes import CLASSES, make_shapes
from dynamicdet_cli.model.build import build_model
from helpers import repo_pythonpath

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning",
                                         "ignore:The image encoding:DeprecationWarning")]

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "shapes-tiny.yaml"
FAST = ["model.transform.min_size=[64]", "model.transform.max_size=64", "train.batch_size=2",
        "train.workers=0", "train.warmup_iters=1"]
FAST_SETS = [arg for key in FAST for arg in ("--set", key)]


# ----------------------------------------------------------------------------- helpers

def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `dynamicdet ARGS` through the console-script entry point."""
    monkeypatch.setattr(sys, "argv", ["dynamicdet", *[str(a) for a in args]])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    out, err = capsys.readouterr()
    code = stop.value.code
    return (0 if code is None else code), out, err


def snapshot(*paths: Path) -> dict[Path, bytes]:
    """Every file under `paths` (files or folders) with its bytes."""
    files = {}
    for path in paths:
        for p in ([path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []):
            if p.is_file():
                files[p] = p.read_bytes()
    return files


class Cli:
    """`cli(*args)` runs a command; `cli.fails(args, needles, inputs)` asserts a user error."""

    def __init__(self, monkeypatch, capsys):
        self.monkeypatch, self.capsys = monkeypatch, capsys

    def __call__(self, *args):
        return run_cli(self.monkeypatch, self.capsys, *args)

    def fails(self, args, *needles: str, inputs=(), status: int = 2) -> str:
        before = snapshot(*inputs)
        code, out, err = self(*args)
        lines = err.strip("\n").splitlines()
        assert code == status, (args, code, out, err)
        assert "Traceback" not in out + err, err
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        for needle in needles:
            assert needle in lines[0], (args, needle, lines[0])
        assert snapshot(*inputs) == before, f"{args}: an input changed"
        return lines[0]


@pytest.fixture
def run(monkeypatch, capsys) -> Cli:
    return Cli(monkeypatch, capsys)


def _checkpoint(recipe, path: Path, seed: int = 0, router: bool = False, val_ids=()) -> Path:
    torch.manual_seed(seed)
    model = build_model(recipe.model, num_classes=len(CLASSES))
    ckpt = new_checkpoint(recipe, list(CLASSES), list(range(1, len(CLASSES) + 1)), model)
    if router:
        ckpt = replace(ckpt, router=router_state(model),
                       validation=ValidationScores(tuple(val_ids), torch.linspace(0.1, 0.9, len(val_ids)), "val.json"))
    return save_checkpoint(ckpt, path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shapes data, a fresh checkpoint and one with a router and validation scores."""
    from dynamicdet_cli.config.recipe import load_recipe
    root = tmp_path_factory.mktemp("world")
    make_shapes(root / "data", n_train=4, n_val=2, size=64, seed=0)
    recipe = load_recipe(TINY, FAST)
    fresh = _checkpoint(recipe, root / "fresh.pt")
    routed = _checkpoint(recipe, root / "routed.pt", router=True, val_ids=[1, 2])
    return {"root": root, "data": root / "data", "yaml": root / "data" / "data.yaml", "recipe": recipe,
            "fresh": fresh, "routed": routed, "file": _touch(root / "a-file")}


def _touch(path: Path) -> Path:
    path.write_text("not a folder\n")
    return path


def _damaged(ckpt: Path, dest: Path, edit) -> Path:
    """A copy of `ckpt` whose content `edit(ckpt_dict)` changed, saved with a valid checksum."""
    data = read_checkpoint_dict(ckpt)
    edit(data)
    return write_checkpoint_dict(data, dest)


# ----------------------------------------------------------------------------- class 1

def test_file_system_errors_are_one_line(run, world, tmp_path, monkeypatch):
    """Output paths that are folders, paths under a regular file, unwritable folders."""
    a_file, data, fresh = world["file"], world["data"], world["fresh"]
    folder = tmp_path / "folder"
    folder.mkdir()
    inputs = [fresh, data, a_file]
    run.fails(["build", TINY, "-o", folder, *FAST_SETS], str(folder), "is a folder", inputs=inputs)
    run.fails(["build", TINY, "-o", a_file / "x.pt"], str(a_file), "not a folder", inputs=inputs)
    run.fails(["make-shapes", a_file, "--train", 1, "--val", 1, "--size", 32], str(a_file), inputs=inputs)
    run.fails(["evaluate", fresh, "--data", world["yaml"], "--out", a_file, "--no-progress"], str(a_file),
              inputs=inputs)
    run.fails(["train-detectors", TINY, "--data", world["yaml"], "--out", a_file, "--no-progress", *FAST_SETS],
              str(a_file), inputs=inputs)

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(dir))  # as in a read-only folder, even for root
    monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
    run.fails(["calibrate", world["routed"], "--hard-ratio", 0.5], str(world["routed"].parent),
              "permission denied", inputs=[world["routed"]])


# ----------------------------------------------------------------------------- class 2

def test_checkpoints_with_wrong_contents_name_the_field(run, world, tmp_path):
    fresh, routed = world["fresh"], world["routed"]
    key = "head1.roi_heads.box_predictor.cls_score.weight"
    cases = {
        "shape": (fresh, lambda c: c["detector"].__setitem__(key, torch.zeros(3, 7)), f"detector[{key}]"),
        "classes": (fresh, lambda c: c.update(classes=["a", "b"], category_ids=[1, 2]), "] has shape"),
        "category_ids": (fresh, lambda c: c.update(category_ids=[1, 2]), "category_ids"),
        "point": (routed, lambda c: c["operating_points"].update(fast={"tau": "x", "hard_ratio": 0.5}),
                  "operating_points['fast']"),
        "latency": (routed, lambda c: c.update(latency=[{"device": "cpu", "easy_ms": "fast"}]), "latency[0]"),
        "scores": (routed, lambda c: c["validation"].update(scores=torch.zeros(5)), "validation.scores"),
        "recipe": (fresh, lambda c: c["recipe"]["model"].update(num_classes="many"),
                   "field recipe is not a valid recipe"),
    }
    image = world["data"] / "val" / "000000.png"
    for name, (source, edit, needle) in cases.items():
        bad = _damaged(source, tmp_path / f"{name}.pt", edit)
        run.fails(["info", bad, "--no-flops"], needle, inputs=[bad])
        run.fails(["predict", image, "-c", bad, "--out", tmp_path / name, "--no-progress"], needle,
                  inputs=[bad, image])
        assert not (tmp_path / name / "predictions.jsonl").exists()


# ----------------------------------------------------------------------------- class 3

def _largest_entry_offset(path: Path) -> int:
    """Byte offset of the middle of the largest stored tensor in a torch zip archive."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(fh.read(4), dtype="<u2")
    return info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size // 2


def test_damaged_checkpoints_are_refused_and_nan_never_written(run, world, tmp_path):
    bad = tmp_path / "bad.pt"
    bytes_ = bytearray(world["routed"].read_bytes())
    at = _largest_entry_offset(world["routed"])
    bytes_[at:at + 64] = b"\xff" * 64  # 0xffffffff is a NaN in float32
    bad.write_bytes(bytes(bytes_))
    image = world["data"] / "val" / "000000.png"
    for args in (["info", bad, "--no-flops"],
                 ["predict", image, "-c", bad, "--out", tmp_path / "p", "--no-progress"],
                 ["evaluate", bad, "--data", world["yaml"], "--out", tmp_path / "e", "--no-progress"],
                 ["calibrate", bad, "--hard-ratio", 0.5]):
        run.fails(args, str(bad), "checksum", inputs=[bad, world["data"]])
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()
    # Weights that are NaN but saved as such (the checksum is right): no NaN reaches a file.
    nan = _damaged(world["routed"], tmp_path / "nan.pt",
                   lambda c: [t.fill_(float("nan")) for t in c["router"].values() if t.is_floating_point()])
    run.fails(["predict", image, "-c", nan, "--out", tmp_path / "n", "--no-progress", "--threshold", 0.5],
              "NaN", inputs=[nan, image])
    assert not (tmp_path / "n" / "predictions.jsonl").exists()


def test_a_checkpoint_without_checksum_still_loads_and_says_so(run, world, tmp_path):
    old = read_checkpoint_dict(world["fresh"])
    torch.save(old, tmp_path / "old.pt")  # as dynamicdet 0.1 wrote it: no checksum field
    code, out, err = run("info", tmp_path / "old.pt", "--no-flops")
    assert code == 0, err
    assert err.count("warning:") == 1 and "no checksum" in err


# ----------------------------------------------------------------------------- class 4

def test_user_text_is_never_read_as_markup(run, world, tmp_path):
    path = tmp_path / "ck" / "[/bold]x.pt"
    code, out, err = run("build", TINY, "-o", path, *FAST_SETS)
    assert code == 0 and str(path) in out, out + err
    run.fails(["info", tmp_path / "ck" / "[red]y.pt"], "[red]y.pt")
    data = tmp_path / "data"
    make_shapes(data, n_train=1, n_val=1, size=32)
    coco = json.loads((data / "val.json").read_text())
    coco["annotations"][0]["bbox"] = [1, 2]
    (data / "val.json").write_text(json.dumps(coco))
    run.fails(["evaluate", world["fresh"], "--data", data / "data.yaml", "--no-progress"],
              "has bbox [1, 2]; expected [x, y, w, h]", inputs=[data, world["fresh"]])
    coco["annotations"][0]["bbox"] = [1, 2, 3, 4]
    coco["categories"][0]["name"] = "[b]disc"
    (data / "val.json").write_text(json.dumps(coco))
    run.fails(["evaluate", world["fresh"], "--data", data / "data.yaml", "--no-progress"],
              "only in the data: [b]disc", inputs=[data, world["fresh"]])


# ----------------------------------------------------------------------------- class 5

def test_make_shapes_refuses_a_folder_holding_data(run, tmp_path):
    folder = tmp_path / "shapes"
    make_shapes(folder, n_train=3, n_val=1, size=32)
    (folder / "notes.txt").write_text("mine\n")
    run.fails(["make-shapes", folder, "--train", 1, "--val", 1, "--size", 32], str(folder), "--force",
              inputs=[folder])
    code, out, err = run("make-shapes", folder, "--train", 1, "--val", 1, "--size", 32, "--force")
    assert code == 0, err
    train = json.loads((folder / "train.json").read_text())
    assert sorted(p.name for p in (folder / "train").iterdir()) == [im["file_name"] for im in train["images"]]
    assert (folder / "notes.txt").read_text() == "mine\n"  # not ours: left alone


# ----------------------------------------------------------------------------- class 6

def test_garbage_is_refused(run, world, tmp_path):
    fresh, routed, yaml_ = world["fresh"], world["routed"], world["yaml"]
    empty = _touch(tmp_path / "empty.yaml")
    empty.write_text("")
    inputs = [fresh, routed, world["data"], empty]
    run.fails(["build", empty, "-o", tmp_path / "m.pt"], "recipe is empty", inputs=inputs)
    run.fails(["build", TINY, "-o", tmp_path / "m.pt", "--classes", "a,a,b"], "a given more than once", inputs=inputs)
    run.fails(["build", TINY, "-o", tmp_path / "m.pt", "--classes", "a,,b"], "empty", inputs=inputs)
    run.fails(["evaluate", fresh, "--data", yaml_, "--sweep", "--ratios", ""], "--ratios", inputs=inputs)
    run.fails(["evaluate", fresh, "--data", yaml_, "--sweep", "--ratios", "0,2"], "--ratios", inputs=inputs)
    run.fails(["evaluate", fresh, "--data", yaml_, "--sweep", "--latency", "40ms"], "--sweep", inputs=inputs)
    run.fails(["calibrate", routed, "--hard-ratio", 0.5, "--name", ""], "--name", inputs=inputs)
    run.fails(["calibrate", routed, "--hard-ratio", 0.5, "--name", "easy"], "--name", inputs=inputs)
    run.fails(["calibrate", routed, "--latency", "40"], "--latency", "40ms", inputs=inputs)
    run.fails(["predict", world["data"] / "val", "-c", routed, "--latency", "40", "--out", tmp_path / "p"],
              "--latency", inputs=inputs)
    run.fails(["info", fresh, "--image-size", -5], "--image-size", inputs=inputs)
    run.fails(["info", fresh, "--image-size", 0], "--image-size", inputs=inputs)
    # A training set whose every box is degenerate: nothing to learn, refused before training.
    data = tmp_path / "degenerate"
    make_shapes(data, n_train=2, n_val=1, size=32)
    coco = json.loads((data / "train.json").read_text())
    for k, ann in enumerate(coco["annotations"]):
        ann["bbox"] = [[-5, 0, -3, 4], [0, 0, 0, 4], [100, 100, 5, 5]][k % 3]
    (data / "train.json").write_text(json.dumps(coco))
    line = run.fails(["train-detectors", TINY, "--data", data / "data.yaml", "--out", tmp_path / "run",
                      "--no-progress", *FAST_SETS], "no usable box", inputs=[data])
    assert "negative size" in line and "zero size" in line and "outside the image" in line
    assert not (tmp_path / "run").exists()


def test_bad_ground_truth_boxes_are_reported_by_evaluate(run, world, tmp_path):
    data = tmp_path / "data"
    make_shapes(data, n_train=1, n_val=2, size=64)
    coco = json.loads((data / "val.json").read_text())
    coco["annotations"][0]["bbox"] = [0, 0, 1e30, 10]
    coco["annotations"][1]["bbox"] = [3, 3, -2, 5]
    (data / "val.json").write_text(json.dumps(coco))
    code, out, err = run("evaluate", world["fresh"], "--data", data / "data.yaml", "--out", tmp_path / "e",
                         "--no-progress")
    assert code == 0, err
    (warning,) = [line for line in err.splitlines() if "warning:" in line]
    assert "1 of negative size" in warning and "clipped 1 box(es)" in warning


# ----------------------------------------------------------------------------- class 7

def test_training_never_claims_files_it_did_not_write(run, world, tmp_path, monkeypatch):
    out = tmp_path / "run"
    code, text, err = run("train-detectors", TINY, "--data", world["yaml"], "--out", out, "--no-progress",
                          "--max-steps", 1, *FAST_SETS)
    assert code == 0, err
    assert "best.pt" not in text and "no checkpoint" in text
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()

    from dynamicdet_cli.train import loop as engine
    real = engine.train_one_epoch

    def ctrl_c_in_epoch_2(*args, **kwargs):
        if args[6] == 1:  # epoch index
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", ctrl_c_in_epoch_2)
    out = tmp_path / "run2"
    line = run.fails(["train-detectors", TINY, "--data", world["yaml"], "--out", out, "--no-progress",
                      "--epochs", 2, *FAST_SETS], "interrupted in epoch 2", "1 complete epoch",
                     f"dynamicdet train-detectors --resume --out {out}", status=130)
    assert "error:" in line and (out / "last.pt").is_file()

    def sigterm_in_epoch_2(*args, **kwargs):  # what the handler does when SIGTERM arrives
        if args[6] == 1:
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", sigterm_in_epoch_2)
    run.fails(["train-detectors", TINY, "--data", world["yaml"], "--out", tmp_path / "run3", "--no-progress",
               "--epochs", 2, *FAST_SETS], "stopped by SIGTERM in epoch 2", "1 complete epoch", status=143)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back after training
    monkeypatch.setattr(engine, "train_one_epoch", real)

    import dynamicdet_cli.cli.tables as tables
    shown = tables.epoch_table

    def ctrl_c_printing_epoch_1(record):  # after state.pt holds the epoch, before the table is out
        raise KeyboardInterrupt

    monkeypatch.setattr(tables, "epoch_table", ctrl_c_printing_epoch_1)
    out = tmp_path / "run4"
    run.fails(["train-detectors", TINY, "--data", world["yaml"], "--out", out, "--no-progress",
               "--epochs", 2, *FAST_SETS], "interrupted in epoch 1", "holds 1 complete epoch", status=130)
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(tables, "epoch_table", shown)

    from dynamicdet_cli.evaluation import evaluate as evaluation
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluation, "evaluate_route", ctrl_c)
    run.fails(["evaluate", world["fresh"], "--data", world["yaml"], "--no-progress"], "interrupted",
              inputs=[world["fresh"], world["data"]], status=130)


# ----------------------------------------------------------------------------- class 8

def test_exif_orientation_is_applied(run, world, tmp_path):
    pixels = np.zeros((32, 64, 3), np.uint8)  # 64 wide, 32 high as stored
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: 32 wide, 64 high
    image.save(tmp_path / "turned.jpg", exif=exif.tobytes())
    code, out, err = run("predict", tmp_path / "turned.jpg", "-c", world["fresh"], "--out", tmp_path / "p",
                         "--no-progress", "--no-render")
    assert code == 0, err
    line = json.loads((tmp_path / "p" / "predictions.jsonl").read_text())
    assert (line["width"], line["height"]) == (32, 64)


# ----------------------------------------------------------------------------- class 9

def test_option_errors_are_one_line_and_version(run, world, tmp_path):
    fresh = world["fresh"]
    run.fails(["predict", world["data"] / "val", "-c", fresh, "--batch-size", 0], "--batch-size", inputs=[fresh])
    run.fails(["evaluate", fresh, "--hard-ratio", 2], "--hard-ratio", inputs=[fresh])
    run.fails(["build", TINY], "--output", inputs=[fresh])
    run.fails(["no-such-command"], "no-such-command")
    code, out, err = run("--version")
    assert code == 0 and out.strip() == f"dynamicdet {__version__}"


def test_only_rank_0_prints(world, tmp_path):
    env = {**os.environ, "RANK": "1", "PYTHONPATH": repo_pythonpath(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dynamicdet_cli", "make-shapes", str(tmp_path / "s"), "--train", "1",
                           "--val", "1", "--size", "32"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and (tmp_path / "s" / "data.yaml").is_file()


# ----------------------------------------------------------------------------- class 10

def test_metrics_survive_a_torn_line(tmp_path):
    from dynamicdet_cli.train.loop import _trim_metrics, _write_metrics
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')  # an append killed half-way (older versions)
    _write_metrics(tmp_path, {"epoch": 3})
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 2, 3]
    _trim_metrics(tmp_path, 2)  # resuming from epoch 2 drops what came after it
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 2]


def test_kill_9_during_training_loses_at_most_one_epoch(world, tmp_path):
    """A run killed with SIGKILL (no cleanup at all) resumes from its last complete epoch,
    and its files all read: no torn metrics line, checkpoints that pass their checksum."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": repo_pythonpath(REPO), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "dynamicdet_cli", "train-detectors"]
    args = ["--out", str(out), "--no-progress"]
    epochs = 4
    proc = subprocess.Popen([*base, str(TINY), "--train-ann", str(world["data"] / "train.json"),
                             "--train-images", str(world["data"] / "train"), *args, "--epochs", str(epochs),
                             *FAST_SETS],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (out / "state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    saved = torch.load(out / "state.pt", weights_only=True)["epoch"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert saved >= 1 and [r["epoch"] for r in lines][:saved] == list(range(1, saved + 1))
    assert len(lines) <= saved + 1  # at most the epoch that was being saved
    load_checkpoint(out / "last.pt")

    data = ["--train-ann", str(world["data"] / "train.json"), "--train-images", str(world["data"] / "train")]
    done = subprocess.run([*base, *args, *data, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, epochs + 1))
    assert load_checkpoint(out / "last.pt").training.epochs == epochs
