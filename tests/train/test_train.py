"""Step 1, joint training of both detectors: the run folder, exact resume, non-finite losses,
bad and empty data, --amp and --init, and two DDP processes that agree.

Everything runs on the synthetic shapes (4 training images of 64 px, batch 2: 2 steps per
epoch) with the tiny recipe, so the whole file takes seconds on a 2-core CPU.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from dynamicdet_cli.cli.app import typer_app
from dynamicdet_cli.data.coco import CocoDataset
from dynamicdet_cli.data.shapes import make_shapes
from dynamicdet_cli.data.transforms import build_transforms
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.model.detector import DynamicDetector
from dynamicdet_cli.config.recipe import load_recipe
from dynamicdet_cli.train.distributed import Dist, evaluation_threads, init_distributed, process_batch_size
from dynamicdet_cli.train.loop import restore_scaler, train_detectors
from helpers import one_error_line

TESTS = Path(__file__).resolve().parent
TINY = TESTS.parents[1] / "recipes" / "shapes-tiny.yaml"
FAST = ["model.transform.min_size=[64]", "model.transform.max_size=64", "train.batch_size=2",
        "train.workers=0", "train.warmup_iters=1"]
FAST_SETS = [arg for key in FAST for arg in ("--set", key)]
RUN_FILES = ("last.pt", "best.pt", "state.pt", "metrics.jsonl", "recipe.yaml")


# ----------------------------------------------------------------------------- helpers

def cli(*args):
    return CliRunner().invoke(typer_app, [str(a) for a in args])


def train_cli(data: Path, out: Path, *extra) -> list:
    """train-detectors arguments on `data`'s training split only (no evaluation: faster)."""
    return ["train-detectors", TINY, "--train-ann", data / "train.json", "--train-images", data / "train",
            "--out", out, "--no-progress", *FAST_SETS, *extra]


def recipe(*overrides: str):
    return load_recipe(TINY, [*FAST, *overrides])


def train_set(data: Path) -> CocoDataset:
    return CocoDataset(data / "train.json", data / "train", transforms=build_transforms(True))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def copy_data(data: Path, dest: Path) -> Path:
    return Path(shutil.copytree(data, dest))


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Shapes: 4 training images (2 steps of 2), 2 validation images, 64 px."""
    folder = tmp_path_factory.mktemp("shapes")
    make_shapes(folder, n_train=4, n_val=2, size=64, seed=0)
    return folder


@pytest.fixture(scope="module")
def cli_run(data, tmp_path_factory) -> Path:
    """One epoch through the CLI, with evaluation on the validation split."""
    run = tmp_path_factory.mktemp("cli") / "run"
    result = cli("train-detectors", TINY, "--data", data / "data.yaml", "--out", run, "--epochs", 1,
                 "--no-progress", *FAST_SETS)
    assert result.exit_code == 0, result.output
    assert "done: 1 epoch(s)" in result.output
    return run


@pytest.fixture(scope="module")
def interrupted_run(data, tmp_path_factory) -> Path:
    """A 2-epoch run stopped after step 3 (mid second epoch): state.pt holds epoch 1."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    result = train_detectors(recipe("train.epochs=2"), train_set(data), None, run, max_steps=3,
                             show_progress=False)
    assert not result.complete and result.epochs == 1
    return run


# ----------------------------------------------------------------------------- the run folder

def test_cli_run_writes_the_run_folder_and_info_reads_it(cli_run):
    for name in RUN_FILES:
        assert (cli_run / name).is_file(), name
    (record,) = metrics(cli_run)
    assert record["epoch"] == 1 and record["step"] == 2 and record["steps"] == 2
    assert set(record["val"]) == {"d1", "d2"} and "AP" in record["val"]["d1"]
    state = torch.load(cli_run / "state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)
    assert state["recipe"]["model"]["num_classes"] == 5
    result = cli("info", cli_run / "last.pt", "--no-flops")
    assert result.exit_code == 0, result.output


def test_a_short_run_says_where_it_shortens_the_recipe_warm_up_and_average(data, tmp_path):
    # a recipe set for COCO (dy-yolo's 5000 warm-up steps, decay 0.9999) in a 2-step run
    run = tmp_path / "run"
    result = cli(*train_cli(data, run, "--set", "train.warmup_iters=5000", "--set", "train.ema_decay=0.9999",
                            "--epochs", 1))
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if line.startswith("note: ")]
    assert len(said) == 2, result.output
    assert "lr warm-up: 1 step, not train.warmup_iters=5000" in said[0]
    assert "train.ema_decay=0.9999 reaches back about 10000 steps, more than this run's 2" in said[1]
    events = [r["note"] for r in metrics(run) if r.get("event") == "schedule"]
    assert events == [line[len("note: "):] for line in said]
    # the recipe's own numbers, where they suit the run, draw no note
    quiet = cli(*train_cli(data, tmp_path / "quiet", "--epochs", 1))
    assert quiet.exit_code == 0 and "note: " not in quiet.output


def test_existing_run_is_refused_without_resume(cli_run, data):
    before = (cli_run / "last.pt").read_bytes()
    result = cli(*train_cli(data, cli_run, "--epochs", 1))
    one_error_line(result, "already holds a run", "--resume")
    assert (cli_run / "last.pt").read_bytes() == before


def test_resume_without_state_is_refused(data, tmp_path):
    one_error_line(cli("train-detectors", "--resume", "--out", tmp_path / "none",
                       "--data", data / "data.yaml"), "no resume state")


# ----------------------------------------------------------------------------- resume

def test_resume_mid_epoch_ends_where_an_uninterrupted_run_ends(data, interrupted_run, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    full = train_detectors(recipe("train.epochs=2"), train_set(data), None, straight, show_progress=False)
    assert full.complete and full.epochs == 2

    resumed = Path(shutil.copytree(interrupted_run, tmp_path / "resumed"))
    assert torch.load(resumed / "state.pt", weights_only=True)["epoch"] == 1
    reads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: (reads.append(Path(f).name), load(f, *a, **k))[1])
    result = cli("train-detectors", "--resume", "--out", resumed, "--train-ann", data / "train.json",
                 "--train-images", data / "train", "--no-progress")
    assert result.exit_code == 0, result.output
    assert reads.count("state.pt") == 1  # the CLI reads the recipe from the state training resumes from
    monkeypatch.undo()

    want = torch.load(straight / "state.pt", weights_only=True)
    got = torch.load(resumed / "state.pt", weights_only=True)
    assert (got["epoch"], got["step"]) == (want["epoch"], want["step"]) == (2, 4)
    assert list(got["model"]) == list(want["model"])
    for key, value in want["model"].items():
        assert torch.equal(got["model"][key], value), key
    # The replayed epoch saw the same batches in the same order: the same losses.
    assert [r["epoch"] for r in metrics(resumed)] == [1, 2]
    assert metrics(resumed)[1]["loss"] == metrics(straight)[1]["loss"]


# ----------------------------------------------------------------------------- non-finite loss

def test_non_finite_loss_names_step_and_part_and_keeps_the_checkpoints(data, interrupted_run, tmp_path,
                                                                      monkeypatch):
    run = Path(shutil.copytree(interrupted_run, tmp_path / "run"))
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt", "state.pt")}
    joint_losses = DynamicDetector.joint_losses

    def nan_box_loss(self, images, targets):
        out = joint_losses(self, images, targets)
        out["d2/loss_box_reg"] = out["d2/loss_box_reg"] * float("nan")
        out["loss"] = out["loss"] + out["d2/loss_box_reg"]
        return out

    monkeypatch.setattr(DynamicDetector, "joint_losses", nan_box_loss)
    with pytest.raises(DynamicDetError, match=r"epoch 2, step 3: d2/loss_box_reg = nan"):
        train_detectors(recipe("train.epochs=2"), train_set(data), None, run, resume=True, show_progress=False)
    for name, content in before.items():
        assert (run / name).read_bytes() == content, name


# ----------------------------------------------------------------------------- data edge cases

@pytest.fixture
def corrupt_data(data, tmp_path) -> Path:
    folder = copy_data(data, tmp_path / "data")
    (folder / "train" / "000002.png").write_bytes(b"not a png at all")
    return folder


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_one_line_error_naming_the_file(corrupt_data, tmp_path, workers):
    result = cli(*train_cli(corrupt_data, tmp_path / "run", "--epochs", 1, "--set", f"train.workers={workers}"))
    result.exc_info = None  # its traceback holds the data loader: free its worker now, not in a later test
    gc.collect()
    one_error_line(result, str(corrupt_data / "train" / "000002.png"), "--skip-bad-images")


def test_skip_bad_images_trains_and_reports_the_skipped(corrupt_data, tmp_path):
    run = tmp_path / "run"
    result = cli(*train_cli(corrupt_data, run, "--epochs", 1, "--skip-bad-images"))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "skipped 1 unreadable image(s)" in text and "cannot open image" in text
    assert metrics(run)[0]["step"] == 2  # 3 images left, batch 2
    assert (run / "last.pt").is_file()


def test_images_without_boxes_train_with_zero_box_losses(data, tmp_path):
    folder = copy_data(data, tmp_path / "data")
    coco = json.loads((folder / "train.json").read_text())
    coco["annotations"] = []
    (folder / "train.json").write_text(json.dumps(coco))
    result = train_detectors(recipe("train.epochs=1"), train_set(folder), None, tmp_path / "run",
                             show_progress=False)
    (record,) = result.history
    assert record["steps"] == 2 and torch.isfinite(torch.tensor(record["loss"]))
    for d in ("d1", "d2"):
        assert record[f"{d}/loss_box_reg"] == 0.0 and record[f"{d}/loss_rpn_box_reg"] == 0.0
        assert record[f"{d}/loss_classifier"] > 0.0


# ----------------------------------------------------------------------------- options

def test_amp_on_cpu_trains_in_bfloat16_without_a_scaler(data, tmp_path, monkeypatch):
    """--amp on CPU runs the same autocast and scaler calls as on CUDA, as bfloat16 autocast
    (no GradScaler: bfloat16 has float32's range). The backbone's convolutions must see it."""
    seen = set()
    forward = DynamicDetector.forward

    def spy(self, *args, **kwargs):
        if self.training:
            seen.add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(DynamicDetector, "forward", spy)
    run = tmp_path / "run"
    result = cli(*train_cli(data, run, "--epochs", 1, "--amp"))
    assert result.exit_code == 0, result.output
    assert seen == {torch.bfloat16}
    (record,) = metrics(run)
    assert torch.isfinite(torch.tensor(record["loss"]))
    state = torch.load(run / "state.pt", weights_only=True)
    assert not state["scaler"]  # a disabled GradScaler has no state


def _parameters_only(state: dict) -> dict:
    """Weights that lr 0 leaves alone (BatchNorm running statistics still move)."""
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches_tracked" not in k}


def test_init_from_a_dynamicdet_checkpoint(cli_run, data, tmp_path):
    run = tmp_path / "run"
    result = cli(*train_cli(data, run, "--epochs", 1, "--lr", 0, "--init", cli_run / "last.pt"))
    assert result.exit_code == 0, result.output
    source = torch.load(cli_run / "last.pt", weights_only=True)["detector"]
    event = metrics(run)[0]
    assert event["event"] == "init"
    assert f"dynamicdet checkpoint: {len(source)} tensors" in event["note"] and "skipped" not in event["note"]
    trained = torch.load(run / "last.pt", weights_only=True)["detector"]
    for key, value in _parameters_only(source).items():
        assert torch.equal(trained[key], value), key


def test_init_from_a_torchvision_resnet_state_dict(data, tmp_path):
    torch.manual_seed(0)
    weights = torchvision.models.resnet18().state_dict()
    torch.save(weights, tmp_path / "r18.pt")
    run = tmp_path / "run"
    result = cli(*train_cli(data, run, "--epochs", 1, "--lr", 0, "--set", "model.backbone.kind=resnet", "--set", "model.backbone.depth=18",
                            "--init", tmp_path / "r18.pt"))
    assert result.exit_code == 0, result.output
    note = metrics(run)[0]["note"]
    assert "torchvision ResNet state dict (into both backbones)" in note
    trained = torch.load(run / "last.pt", weights_only=True)["detector"]
    assert torch.equal(trained["backbone1.stem.0.weight"], weights["conv1.weight"])
    assert torch.equal(trained["backbone2.stem.0.weight"], weights["conv1.weight"])
    assert torch.equal(trained["backbone2.stages.4.1.conv2.weight"], weights["layer4.1.conv2.weight"])


def test_init_with_the_wrong_depth_is_a_clear_error(data, tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")  # the recipe says depth 10
    result = cli(*train_cli(data, tmp_path / "run", "--epochs", 1, "--max-steps", 1, "--init", tmp_path / "r18.pt"))
    one_error_line(result, "r18.pt", "depth")


# ----------------------------------------------------------------------------- several processes

def test_two_ddp_processes_agree_on_the_parameters(data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(TESTS / "ddp_worker.py"), str(data / "data.yaml"), str(tmp_path / "run"), str(out)],
        env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # train.batch_size 2 is the batch of all processes: one image each, so the 4 images take
    # 2 steps per epoch (with 2 images per process it would be 1)
    assert rank0["steps"] == rank1["steps"] == 4
    assert list(rank0["params"]) == list(rank1["params"])
    for key, value in rank0["params"].items():
        assert torch.equal(rank1["params"][key], value), key
    # Only rank 0 writes, and what it writes is what the processes agree on.
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["detector"]
    for key, value in rank0["params"].items():
        if not key.startswith("router."):
            assert torch.equal(saved[key], value), key


def test_the_recipe_batch_is_split_across_processes():
    assert process_batch_size(8, Dist()) == 8
    assert process_batch_size(8, Dist(rank=1, world_size=2)) == 4
    with pytest.raises(DynamicDetError, match="does not split evenly across 3 processes"):
        process_batch_size(8, Dist(world_size=3))


def test_the_process_group_waits_longer_than_nccls_ten_minutes(monkeypatch):
    """Rank 0 evaluates alone while the others wait at a barrier: a COCO-sized evaluation
    outlasts NCCL's default 10-minute timeout, which would end the job."""
    calls = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: calls.append(kw))
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(key, value)
    env, device = init_distributed("cpu")
    assert (env.rank, env.world_size, device.type) == (1, 2, "cpu")
    assert [kw["backend"] for kw in calls] == ["gloo"]
    assert calls[0]["timeout"].total_seconds() >= 3600


def test_a_resume_restores_the_loss_scale_or_starts_afresh_from_an_unscaled_run():
    """A run started without float16 (on a CPU, or without --amp) saved an empty scaler state,
    which torch refuses to load into an enabled scaler: resuming it with --amp on CUDA crashed."""
    unscaled = torch.amp.GradScaler("cpu", enabled=False).state_dict()
    assert unscaled == {}
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0)
    restore_scaler(fresh, unscaled)  # torch's load_state_dict raises here
    assert fresh.get_scale() == 1024.0
    saved = torch.amp.GradScaler("cpu", init_scale=256.0).state_dict()
    resumed = torch.amp.GradScaler("cpu", init_scale=1024.0)
    restore_scaler(resumed, saved)
    assert resumed.get_scale() == 256.0


def test_rank_0_evaluates_with_the_threads_of_the_processes_waiting_for_it(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with evaluation_threads(Dist(world_size=2), torch.device("cpu")):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with evaluation_threads(Dist(), torch.device("cpu")):  # one process: nothing to borrow
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_best_pt_is_the_best_evaluated_epoch(data, tmp_path, monkeypatch):
    """Epochs 2 and 4 are evaluated (AP 0.5, then 0.1): best.pt stays epoch 2, not the
    unevaluated epoch 3 nor the worse epoch 4."""
    aps = iter([0.5, 0.1])

    def fake_evaluate(model, val_set, device, batch_size, show_progress):
        ap = next(aps)
        return {d: {"AP": ap, "AP50": ap} for d in ("d1", "d2")}

    monkeypatch.setattr("dynamicdet_cli.train.loop.evaluate_both", fake_evaluate)
    run = tmp_path / "run"
    train_detectors(recipe("train.epochs=4", "train.eval_every=2"), train_set(data), train_set(data), run,
                    show_progress=False, max_steps=None)
    best = torch.load(run / "best.pt", weights_only=True)["training"]
    last = torch.load(run / "last.pt", weights_only=True)["training"]
    assert (best["epochs"], best["val"]["d1_AP"]) == (2, 0.5)
    assert last["epochs"] == 4


# ----------------------------------------------------------------------------- router holdout

class _Recording(CocoDataset):
    """A CocoDataset that notes every image id it hands out."""

    def __getitem__(self, index):
        self.seen.append(self.image_ids[index])
        return super().__getitem__(index)


def test_images_held_out_for_the_router_never_reach_step_1(tmp_path):
    folder = tmp_path / "data"
    make_shapes(folder, n_train=8, n_val=0, size=64, seed=0)
    ds = _Recording(folder / "train.json", folder / "train", transforms=build_transforms(True))
    ds.seen = []
    result = train_detectors(recipe("train.epochs=2", "train.router_holdout=0.25"), ds, None, tmp_path / "run",
                             show_progress=False)
    assert result.complete
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    held = ckpt["training"]["router_image_ids"]
    assert len(held) == 2 and set(held) < set(ds.image_ids)
    assert held == ds.split_ids(0.25, 0)[1]  # seeded by train.seed: the same split every time
    assert set(ds.seen) == set(ds.image_ids) - set(held) and len(ds.seen) == 2 * 6  # two epochs of the other 6


def test_router_holdout_option_reaches_the_recipe(data, tmp_path):
    result = cli(*train_cli(data, tmp_path / "run", "--epochs", 1, "--router-holdout", 0.5))
    assert result.exit_code == 0, result.output
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["recipe"]["train"]["router_holdout"] == 0.5 and len(ckpt["training"]["router_image_ids"]) == 2


def test_resume_restores_the_weight_average(data, tmp_path):
    """With train.ema_decay, an interrupted run resumed ends with the average an uninterrupted
    run ends with (saved in last.pt), and that average is not the last step's weights."""
    sets = ("train.epochs=2", "train.ema_decay=0.9", "train.ema_ramp=0.5")
    straight = train_detectors(recipe(*sets), train_set(data), None, tmp_path / "straight", show_progress=False)
    assert straight.complete
    stopped = train_detectors(recipe(*sets), train_set(data), None, tmp_path / "resumed", max_steps=3,
                              show_progress=False)
    assert not stopped.complete and stopped.epochs == 1
    resumed = train_detectors(recipe(*sets), train_set(data), None, tmp_path / "resumed", resume=True,
                              show_progress=False)
    assert resumed.complete and resumed.epochs == 2
    want = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["detector"]
    got = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["detector"]
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    state = torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)
    assert int(state["ema"]["n_averaged"]) == 4
    key = next(k for k, v in state["model"].items() if v.is_floating_point() and "weight" in k)
    assert not torch.equal(state["model"][key], want[key])  # last.pt holds the average, not the weights


def test_a_run_stopped_before_its_first_epoch_ended_starts_again_as_it_says(data, tmp_path):
    """It saved no checkpoint and says "start the run again": the same command then starts it
    (the notes it wrote to metrics.jsonl are replaced), while a folder with an epoch is refused."""
    out = tmp_path / "run"
    noted = ("--set", "train.warmup_iters=1000")  # shortened to a fifth of the run: a note in metrics.jsonl
    first = cli(*train_cli(data, out, "--epochs", 1, "--max-steps", 1, *noted))
    assert first.exit_code == 0 and "start the run again" in first.output, first.output
    assert first.output.startswith("training on cpu")
    assert [m["event"] for m in metrics(out)] == ["schedule"]
    again = cli(*train_cli(data, out, "--epochs", 1, "--max-steps", 1, *noted))
    assert again.exit_code == 0, again.output
    assert [m["event"] for m in metrics(out)] == ["schedule"]  # replaced, not appended
    done = cli(*train_cli(data, out, "--epochs", 1))
    assert done.exit_code == 0 and "done: 1 epoch(s)" in done.output, done.output
    refused = cli(*train_cli(data, out, "--epochs", 1))
    one_error_line(refused, "already holds a run", "--resume", "--force")
    before = (out / "metrics.jsonl").read_text()
    finished = cli(*train_cli(data, out, "--epochs", 1, "--resume"))
    one_error_line(finished, "finished its 1 epochs: nothing to resume", f"--init {out}/last.pt")
    assert (out / "metrics.jsonl").read_text() == before


def test_a_run_stopped_by_max_steps_says_to_go_on_without_it(data, tmp_path):
    out = tmp_path / "run"
    stopped = cli(*train_cli(data, out, "--epochs", 2, "--max-steps", 3))  # 2 steps an epoch: in epoch 2
    assert stopped.exit_code == 0, stopped.output
    assert "holds 1 complete epoch(s)" in stopped.output
    assert f"to continue: dynamicdet train-detectors --resume --out {out} with the same data" in stopped.output


def test_the_start_line_says_where_and_how_the_run_trains(one_thread):
    from dynamicdet_cli.train.loop import start_line
    cfg = recipe("train.epochs=3", "train.batch_size=8").train
    cpu = torch.device("cpu")
    assert start_line(cpu, Dist(0, 1, 0), cfg, 10, amp=False, start_epoch=0) == \
        "training on cpu (1 thread): batch 8, float32, 3 epoch(s) of 10 steps"
    assert start_line(cpu, Dist(0, 2, 0), cfg, 5, amp=True, start_epoch=1) == \
        "training on cpu (1 thread each), 2 processes: batch 8 (4 per process), bfloat16, epochs 2-3 of 5 steps"


def test_validation_data_with_other_categories_is_refused_before_training(data, tmp_path):
    """Val categories numbered otherwise would score every label as another class (and best.pt be
    picked on that); one missing would stop the run at its first evaluation, nothing saved."""
    coco = json.loads((data / "val.json").read_text())
    reversed_ids = {c["id"]: len(coco["categories"]) + 1 - c["id"] for c in coco["categories"]}
    coco["categories"] = [dict(c, id=reversed_ids[c["id"]]) for c in coco["categories"]]
    for ann in coco["annotations"]:
        ann["category_id"] = reversed_ids[ann["category_id"]]
    (tmp_path / "val_other_ids.json").write_text(json.dumps(coco))
    out = tmp_path / "run"
    refused = cli("train-detectors", TINY, "--train-ann", data / "train.json", "--train-images", data / "train",
                  "--val-ann", tmp_path / "val_other_ids.json", "--val-images", data / "val", "--out", out,
                  "--no-progress", *FAST_SETS)
    one_error_line(refused, "the validation data's classes differ from the training data's",
                   "another category-id order")
    assert not out.exists()
