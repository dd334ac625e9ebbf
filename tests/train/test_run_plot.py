"""The run folder people look at: results.png drawn from metrics.jsonl (several epochs, one
epoch, no validation, damaged lines, a resumed run) and TensorBoard scalars (a fake writer
through real training; the real `tensorboard` package when it is installed). Neither a plot
nor TensorBoard that fails ever stops training, and each warns at most once.

The trainings are the tiny recipe on 4 shapes images of 64 px (2 steps per epoch).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from torchvision.io import ImageReadMode, read_image
from typer.testing import CliRunner

from dynamicdet_cli.cli.app import typer_app
from dynamicdet_cli.config.recipe import load_recipe
from dynamicdet_cli.data.coco import CocoDataset
from dynamicdet_cli.data.shapes import make_shapes
from dynamicdet_cli.data.transforms import build_transforms
from dynamicdet_cli.train import run_plot, tensorboard_log
from dynamicdet_cli.train.loop import train_detectors
from dynamicdet_cli.train.run_plot import PLOT_NAME, epoch_records, plot_run
from dynamicdet_cli.train.tensorboard_log import TensorBoardLog, epoch_scalars

TINY = Path(__file__).resolve().parents[2] / "recipes" / "shapes-tiny.yaml"
FAST = ["model.transform.min_size=[64]", "model.transform.max_size=64", "train.batch_size=2",
        "train.workers=0", "train.warmup_iters=1"]


# ----------------------------------------------------------------------------- helpers

def epoch_line(epoch: int, val: bool = True, **extra) -> dict:
    """A metrics.jsonl line as train_detectors writes it (Faster R-CNN loss parts)."""
    record = {"epoch": epoch, "step": 2 * epoch, "loss": 5.0 / epoch, "steps": 2, "lr": 0.01 / epoch,
              "images_per_s": 20.0, "seconds": 0.2}
    for d, scale in (("d1", 1.0), ("d2", 0.9)):
        record.update({f"{d}/loss_classifier": 1.5 * scale / epoch, f"{d}/loss_box_reg": 0.2 * scale / epoch,
                       f"{d}/total": 2.5 * scale / epoch})
    if val:
        record["val"] = {d: {"AP": ap * epoch, "AP50": 2 * ap * epoch, "APm": -1.0}
                         for d, ap in (("d1", 0.1), ("d2", 0.15))}
    record.update(extra)
    return record


def write_lines(path: Path, *lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    image = read_image(str(path), ImageReadMode.RGB)  # 3,H,W: a whole, decodable PNG
    assert image.shape[0] == 3 and image.shape[1] > 100 and image.shape[2] > 100
    assert image.float().std() > 0  # not a blank canvas
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def warnings_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning:")]


class FakeWriter:
    """Stands in for torch's SummaryWriter: remembers what a real one would write."""
    made: list[FakeWriter] = []

    def __init__(self, log_dir: str, purge_step: int | None = None):
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: dict[str, dict[int, float]] = {}
        self.flushes, self.closed = 0, False
        type(self).made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        assert not self.closed
        self.scalars.setdefault(tag, {})[step] = value

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True


class BrokenWriter(FakeWriter):
    def add_scalar(self, tag, value, step):
        raise OSError(28, "No space left on device")


@pytest.fixture
def fake_writer(monkeypatch):
    FakeWriter.made = []
    monkeypatch.setattr(tensorboard_log, "_summary_writer", lambda: FakeWriter)
    return FakeWriter.made


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Shapes: 4 training images (2 steps of 2), 2 validation images, 64 px."""
    folder = tmp_path_factory.mktemp("shapes")
    make_shapes(folder, n_train=4, n_val=2, size=64, seed=0)
    return folder


def datasets(data: Path) -> tuple[CocoDataset, CocoDataset]:
    return (CocoDataset(data / "train.json", data / "train", transforms=build_transforms(True)),
            CocoDataset(data / "val.json", data / "val"))


def train(data: Path, run: Path, *overrides: str, val: bool = False, **kwargs):
    train_set, val_set = datasets(data)
    return train_detectors(load_recipe(TINY, [*FAST, *overrides]), train_set, val_set if val else None, run,
                           show_progress=False, **kwargs)


# ----------------------------------------------------------------------------- reading metrics.jsonl

def test_epoch_records_keep_one_line_per_epoch_and_skip_damaged_ones(tmp_path):
    path = write_lines(tmp_path / "metrics.jsonl",
                       {"event": "init", "note": "torchvision weights"}, epoch_line(2, loss=9.0),
                       "{\"epoch\": 3, \"lo", "[1, 2]", "not json at all", {"epoch": True},
                       epoch_line(1), epoch_line(2, loss=7.0))
    records = epoch_records(path)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["loss"] == 7.0  # the last line of an epoch wins (a replayed epoch)


# ----------------------------------------------------------------------------- the plot

def test_plot_of_several_epochs_is_a_whole_png(tmp_path):
    metrics = write_lines(tmp_path / "metrics.jsonl", epoch_line(1, val=False), epoch_line(2), epoch_line(3))
    out = plot_run(metrics, tmp_path / PLOT_NAME)
    assert out == tmp_path / PLOT_NAME
    assert_png(out)


def test_ap_panel_draws_both_routes_on_the_evaluated_epochs_only():
    records = [epoch_line(1, val=False), epoch_line(2), epoch_line(3)]
    ax = Figure().subplots()
    run_plot._ap_panel(ax, records)
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
    assert lines["d1 (route easy)"] == ([2, 3], [pytest.approx(0.2), pytest.approx(0.3)])
    assert lines["d2 (route hard)"] == ([2, 3], [pytest.approx(0.3), pytest.approx(0.45)])
    assert lines["d2 AP50"][1] == [pytest.approx(0.6), pytest.approx(0.9)]
    assert "d1 mask_AP" not in lines  # not logged: no empty legend entry


def test_loss_panels_follow_the_parts_logged():
    assert run_plot._loss_parts([epoch_line(1)]) == ["loss_classifier", "loss_box_reg"]
    assert run_plot._loss_parts([{"epoch": 1, "d1/loss_dfl": 1.0, "d2/loss_cls": 2.0}]) == ["loss_dfl", "loss_cls"]


def test_one_epoch_without_validation_plots_and_says_not_evaluated(tmp_path):
    metrics = write_lines(tmp_path / "metrics.jsonl", epoch_line(1, val=False))
    assert_png(plot_run(metrics, tmp_path / PLOT_NAME))
    ax = Figure().subplots()
    run_plot._ap_panel(ax, epoch_records(metrics))
    assert [text.get_text() for text in ax.texts] == ["not evaluated"] and not ax.get_lines()


def test_nothing_to_plot_writes_nothing(tmp_path):
    metrics = write_lines(tmp_path / "metrics.jsonl", {"event": "init", "note": "x"})
    assert plot_run(metrics, tmp_path / PLOT_NAME) is None
    assert not (tmp_path / PLOT_NAME).exists()


def test_without_matplotlib_there_is_no_plot_and_no_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # `from matplotlib.figure import` fails
    metrics = write_lines(tmp_path / "metrics.jsonl", epoch_line(1))
    assert plot_run(metrics, tmp_path / PLOT_NAME) is None
    assert not (tmp_path / PLOT_NAME).exists()


def test_plot_leaves_the_process_backend_alone(tmp_path):
    """A user who chose another backend keeps it, and pyplot's global state is never touched."""
    import matplotlib
    had_pyplot = "matplotlib.pyplot" in sys.modules
    with matplotlib.rc_context({"backend": "svg"}):
        out = plot_run(write_lines(tmp_path / "metrics.jsonl", epoch_line(1)), tmp_path / PLOT_NAME)
        assert matplotlib.get_backend() == "svg"
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules
    assert_png(out)  # a PNG all the same: the figure draws itself with Agg


def test_a_failing_plot_warns_once_however_often_it_fails(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").mkdir()  # unreadable as a file: every draw fails
    plot = run_plot.RunPlot(tmp_path)
    assert plot.update() is None and plot.update() is None
    (warning,) = warnings_in(capsys.readouterr().err)
    assert PLOT_NAME in warning and "training goes on" in warning


# ----------------------------------------------------------------------------- TensorBoard scalars

def test_epoch_scalars_tag_losses_lr_and_both_routes_ap():
    scalars = epoch_scalars(epoch_line(2, bad=float("nan")))
    assert scalars["train/d1/total"] == pytest.approx(1.25) and scalars["train/d2/total"] == pytest.approx(1.125)
    assert scalars["train/loss"] == 2.5 and scalars["lr"] == 0.005
    assert scalars["val/d1_AP"] == pytest.approx(0.2) and scalars["val/d2_AP"] == pytest.approx(0.3)
    # the step itself, COCOeval's -1 and a NaN are not scalars
    assert not {"train/epoch", "train/step", "train/steps", "val/d1_APm", "train/bad"} & set(scalars)


def test_tensorboard_events_hold_the_whole_run_after_a_resume(tmp_path):
    """The real package: a resumed log purges the epochs past the resume state's, so TensorBoard
    shows each epoch once, with the value of the run that finished it."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardLog(tmp_path, first_epoch=0) as board:
        for epoch in (1, 2, 3):  # epoch 3 logged, then killed before state.pt held it
            board.log(epoch_line(epoch))
    with TensorBoardLog(tmp_path, first_epoch=2) as board:
        for epoch in (3, 4):
            board.log(epoch_line(epoch, loss=10.0 + epoch))
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"train/d1/total", "train/d2/total", "lr", "val/d1_AP", "val/d2_AP"} <= set(events.Tags()["scalars"])
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(1, 5.0), (2, 2.5), (3, 13.0), (4, 14.0)]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("val/d2_AP")] == [(1, 0.15), (2, 0.3), (3, 0.45),
                                                                               (4, 0.6)]


# ----------------------------------------------------------------------------- through training

def test_cli_training_writes_results_png_and_tensorboard_scalars(data, tmp_path, fake_writer):
    run = tmp_path / "run"
    result = CliRunner().invoke(typer_app, [str(a) for a in (
        "train-detectors", TINY, "--data", data / "data.yaml", "--out", run, "--epochs", 2, "--no-progress",
        *[arg for key in [*FAST, "train.eval_every=1"] for arg in ("--set", key)])])
    assert result.exit_code == 0, result.output
    assert not warnings_in(result.output), result.output
    assert_png(run / PLOT_NAME)

    (writer,) = fake_writer
    assert writer.log_dir == str(run) and writer.purge_step == 1 and writer.closed
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in lines:
        epoch = record["epoch"]
        assert writer.scalars["train/d1/total"][epoch] == record["d1/total"]
        assert writer.scalars["train/d2/total"][epoch] == record["d2/total"]
        assert writer.scalars["lr"][epoch] == record["lr"]
        assert writer.scalars["val/d1_AP"][epoch] == record["val"]["d1"]["AP"]
        assert writer.scalars["val/d2_AP"][epoch] == record["val"]["d2"]["AP"]
    assert sorted(writer.scalars["val/d2_AP"]) == [1, 2]


def test_resumed_run_plots_the_whole_run_despite_a_torn_line(data, tmp_path, fake_writer, monkeypatch):
    run = tmp_path / "run"
    first = train(data, run, "train.epochs=2", max_steps=3)  # killed in epoch 2: state.pt holds epoch 1
    assert not first.complete and first.epochs == 1
    assert_png(run / PLOT_NAME)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"epoch": 2, "lo')  # a torn line, as an older appending version left it

    plotted = []
    real_plot_run = run_plot.plot_run

    def spy(metrics_path, out_path):
        plotted.append([r["epoch"] for r in epoch_records(metrics_path)])
        return real_plot_run(metrics_path, out_path)

    monkeypatch.setattr(run_plot, "plot_run", spy)
    resumed = train(data, run, resume=True)
    assert resumed.complete and resumed.epochs == 2
    assert plotted == [[1, 2]]  # the resumed process drew epoch 1 too
    assert_png(run / PLOT_NAME)
    assert [w.purge_step for w in fake_writer] == [1, 2]  # the resumed log purges epoch 2 on
    assert sorted(fake_writer[1].scalars["train/loss"]) == [2]


def test_failing_plot_and_tensorboard_never_stop_training_and_warn_once_each(data, tmp_path, monkeypatch,
                                                                               capsys):
    BrokenWriter.made = []
    monkeypatch.setattr(tensorboard_log, "_summary_writer", lambda: BrokenWriter)

    def broken_plot(metrics_path, out_path):
        raise RuntimeError("the plot broke")

    monkeypatch.setattr(run_plot, "plot_run", broken_plot)
    result = train(data, tmp_path / "run", "train.epochs=2")
    assert result.complete and result.epochs == 2
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["epoch"] == 2
    warnings = warnings_in(capsys.readouterr().err)
    assert len(warnings) == 2, warnings
    assert sum("the plot broke" in w for w in warnings) == 1
    assert sum("TensorBoard logging stopped" in w and "no space left" in w.lower() for w in warnings) == 1
    (writer,) = BrokenWriter.made  # turned off after the first failure, not reopened
    assert writer.closed


def test_training_without_tensorboard_installed_says_nothing(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were absent
    run = tmp_path / "run"
    result = train(data, run, "train.epochs=1")
    assert result.complete
    assert not warnings_in(capsys.readouterr().err)
    assert not list(run.glob("events.out.tfevents.*"))
    assert_png(run / PLOT_NAME)  # one epoch, no validation data: still a plot


def test_force_removes_the_replaced_runs_plot(data, tmp_path):
    run = tmp_path / "run"
    train(data, run, "train.epochs=1")
    assert_png(run / PLOT_NAME)
    old_events = run / "events.out.tfevents.1700000000.host.1.0"  # as TensorBoard names them
    old_events.write_bytes(b"an earlier run's scalars")
    killed = train(data, run, "train.epochs=1", force=True, max_steps=1)  # stops before its first epoch ends
    assert not killed.complete
    assert not (run / PLOT_NAME).exists()  # no picture of the old run beside the new one
    assert not old_events.exists()  # nor its TensorBoard curves, which TensorBoard would join to the new ones
