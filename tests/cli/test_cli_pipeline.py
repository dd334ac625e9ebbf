"""The whole pipeline through the CLI, end to end, on a tiny model:

make-shapes -> train-detectors -> train-router -> info -> calibrate (hard ratio, latency:
out of range, clamped, midway) -> evaluate (one point, sweep) -> predict (with bad files),
and the user errors on the way (untrained detectors, unknown operating point).

The synthetic shapes at 64 px (8 training, 6 validation images), one epoch of batch 2 and
two router epochs: the module's fixtures build everything once, in well under a minute on
a 2-core CPU.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dynamicdet_cli.checkpoint.types import LatencyRecord
from dynamicdet_cli.core import allocator
from dynamicdet_cli.speed import latency
from dynamicdet_cli.cli.app import typer_app
from dynamicdet_cli.speed.regime import Regime
from helpers import one_error_line

# torchvision 0.29 deprecates its image codecs (in favour of torchcodec) on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning",
                                        "ignore:The image encoding:DeprecationWarning")

TINY = Path(__file__).resolve().parents[2] / "recipes" / "shapes-tiny.yaml"
FAST = ["model.transform.min_size=[64]", "model.transform.max_size=64", "train.batch_size=2",
        "train.workers=0", "train.warmup_iters=1"]
FAST_SETS = [arg for key in FAST for arg in ("--set", key)]
N_TRAIN, N_VAL = 8, 6
REPEATS = ["--repeats", 3]  # timed runs per route: enough for a smoke test, cheap on a shared CPU


# ----------------------------------------------------------------------------- helpers

def cli(*args):
    return CliRunner().invoke(typer_app, [str(a) for a in args])


def ok(result) -> str:
    """The output of a command that must succeed, table borders dropped and whitespace
    collapsed (rich wraps long cells over several lines)."""
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output, result.output
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", result.output).split())


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapes")
    ok(cli("make-shapes", folder, "--train", N_TRAIN, "--val", N_VAL, "--size", 64, "--seed", 0))
    assert len(list((folder / "val").iterdir())) == N_VAL
    return folder


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    """One epoch of both detectors (training split only: no evaluation, faster)."""
    run = tmp_path_factory.mktemp("train") / "run"
    out = ok(cli("train-detectors", TINY, "--train-ann", data / "train.json", "--train-images", data / "train",
                 "--out", run, "--epochs", 1, "--no-progress", *FAST_SETS))
    assert "done: 1 epoch(s)" in out
    return run


@pytest.fixture(scope="module")
def model(run, data) -> Path:
    """train-router on the trained detectors, written to a new file (model.pt)."""
    path = run.parent / "model.pt"
    out = ok(cli("train-router", run / "last.pt", "--data", data / "data.yaml", "-o", path,
                 "--set", "router.epochs=2", "--no-progress"))
    assert "router trained" in out
    ckpt = load(path)
    assert ckpt["router"] is not None
    assert len(ckpt["validation"]["image_ids"]) == N_VAL
    assert load(run / "last.pt")["router"] is None  # -o leaves the input alone
    return path


@pytest.fixture(scope="module")
def calibrated(model) -> Path:
    """`model` with the operating point 'half' (50% hard) stored."""
    ok(cli("calibrate", model, "--hard-ratio", 0.5, "--name", "half"))
    return model


# ----------------------------------------------------------------------------- the pipeline

def test_info_shows_the_trained_router(model):
    out = ok(cli("info", model, "--no-flops"))
    assert "router trained;" in out
    assert f"validation scores {N_VAL} images" in out


def test_calibrate_hard_ratio_stores_the_point(calibrated):
    ckpt = load(calibrated)
    point = ckpt["operating_points"]["half"]
    assert abs(point["hard_ratio"] - 0.5) <= 1 / N_VAL + 1e-9  # ties at the cut may send fewer hard
    scores = ckpt["validation"]["scores"]
    assert (scores > point["tau"]).float().mean().item() == pytest.approx(point["hard_ratio"])
    assert point["target_ms"] is None


@pytest.fixture
def fixed_latency(monkeypatch):
    """Route timings that do not depend on the load of a shared CPU: each call of
    measure_routes returns the next of LATENCIES (the last one repeats), as measured under
    the conditions asked for."""
    calls = []

    def measure(model, device, images, batch_size, warmup=2, repeats=5, source="", mixed_taus=(), original_sizes=None):
        easy, hard = LATENCIES[min(len(calls), len(LATENCIES) - 1)]
        calls.append((batch_size, len(images), repeats))
        assert len(mixed_taus) == len(latency.CURVE_SHARES)  # calibrate times mixed batches too
        return LatencyRecord(**Regime.of_run(model, device, batch_size).record(), easy_ms=easy, hard_ms=hard,
                             images=source, time="2026-01-01T00:00:00+00:00")

    monkeypatch.setattr(latency, "measure_routes", measure)
    return calls


LATENCIES = [(10.0, 20.0), (10.5, 20.5)]  # lat1, lat2 in ms; the second call drifts a little


def copy_of(model: Path, folder: Path) -> Path:
    path = folder / "model.pt"
    path.write_bytes(model.read_bytes())
    return path


def test_calibrate_unreachable_latency_is_refused_and_clamped(calibrated, tmp_path, fixed_latency):
    model = copy_of(calibrated, tmp_path)
    before = model.read_bytes()
    line = one_error_line(cli("calibrate", model, "--latency", "5ms"), "cannot be met")
    assert "achievable range is 10.0-20.0 ms" in line
    assert "such as 50%" in line and "--clamp" in line  # options the commands have
    assert model.read_bytes() == before  # nothing written

    out = ok(cli("calibrate", model, "--latency", "5ms", "--clamp", "--name", "fastest", "--batch-size", 2))
    assert "stored operating point 'fastest'" in out
    ckpt = load(model)
    fastest = ckpt["operating_points"]["fastest"]
    assert fastest["hard_ratio"] == 0.0 and fastest["expected_ms"] == 10.5  # clamped to all easy
    assert fastest["batch_size"] == 2 and fastest["image_size"] == 64  # the recipe's input size
    assert [(m["easy_ms"], m["batch_size"]) for m in ckpt["latency"]] == [(10.5, 2)]
    assert set(ckpt["operating_points"]) == {"half", "fastest"}
    # batch 8 by default, as predict and evaluate run; the 6 validation images cycled to fill it
    assert fixed_latency == [(8, 8, 5), (2, 6, 5)]


def test_calibrate_latency_midway_routes_about_k(calibrated, tmp_path, fixed_latency):
    model = copy_of(calibrated, tmp_path)
    ok(cli("calibrate", model, "--latency", "1s", "--clamp", "--name", "slowest"))
    first = load(model)["latency"][0]
    target = (first["easy_ms"] + first["hard_ms"]) / 2
    ok(cli("calibrate", model, "--latency", f"{target}ms", "--name", "mid"))
    ckpt = load(model)
    assert len(ckpt["latency"]) == 1  # same device/threads/batch/size: the measurement is replaced
    lat = ckpt["latency"][0]
    assert (lat["easy_ms"], lat["hard_ms"]) == LATENCIES[1]
    k = (target - lat["easy_ms"]) / (lat["hard_ms"] - lat["easy_ms"])  # 0.45
    point = ckpt["operating_points"]["mid"]
    assert abs(point["hard_ratio"] - k) <= 1 / N_VAL + 1e-9
    assert (ckpt["validation"]["scores"] > point["tau"]).float().mean().item() == pytest.approx(point["hard_ratio"])
    assert point["target_ms"] == target
    assert point["expected_ms"] == pytest.approx(lat["easy_ms"] + point["hard_ratio"] * (lat["hard_ms"] - lat["easy_ms"]))
    assert ckpt["operating_points"]["slowest"]["hard_ratio"] == 1.0


def test_calibrate_latency_as_a_share_of_the_way_between_the_routes(calibrated, tmp_path, fixed_latency):
    """'--latency 25%' is a quarter of the way from this measurement's lat1 to its lat2: one
    timing, no second call to compute the target from the first."""
    model = copy_of(calibrated, tmp_path)
    ok(cli("calibrate", model, "--latency", "25%", "--name", "quarter"))
    ckpt = load(model)
    lat, point = ckpt["latency"][0], ckpt["operating_points"]["quarter"]
    assert len(fixed_latency) == 1
    assert point["target_ms"] == pytest.approx(lat["easy_ms"] + 0.25 * (lat["hard_ms"] - lat["easy_ms"]))
    assert abs(point["hard_ratio"] - 0.25) <= 1 / N_VAL + 1e-9
    one_error_line(cli("calibrate", model, "--latency", "150%"), "0% .. 100%")
    assert len(fixed_latency) == 1  # refused before timing anything


def test_calibrate_can_reuse_the_stored_latency(calibrated, tmp_path, fixed_latency):
    model = copy_of(calibrated, tmp_path)
    one_error_line(cli("calibrate", model, "--latency", "15ms", "--reuse-latency"), "no latency stored")
    ok(cli("calibrate", model, "--latency", "1s", "--clamp", "--name", "slowest"))  # times: (10, 20)
    ok(cli("calibrate", model, "--latency", "15ms", "--name", "mid", "--reuse-latency"))
    assert len(fixed_latency) == 1  # the second call did not time again
    point = load(model)["operating_points"]["mid"]
    assert abs(point["hard_ratio"] - 0.5) <= 1 / N_VAL + 1e-9  # k from (10, 20), not the drifted (10.5, 20.5)


def test_calibrate_times_the_routes_for_real(calibrated, tmp_path):
    """The real timing path. On a busy shared CPU the two medians can come out in the wrong
    order; that must be the one-line refusal, not a crash, and a second try times again.
    Refused twice, the test says it was skipped rather than passing unchecked."""
    model = copy_of(calibrated, tmp_path)
    for _ in range(2):
        result = cli("calibrate", model, "--latency", "1s", "--clamp", "--name", "slowest", *REPEATS)
        if result.exit_code != 2:
            break
        one_error_line(result, "is not slower than the easy route")
    else:
        pytest.skip("the CPU was too busy to time the hard route slower than the easy one, twice")
    ok(result)
    (lat,) = load(model)["latency"]
    assert 0 < lat["easy_ms"] < lat["hard_ms"]
    assert (lat["device"], lat["batch_size"], lat["image_size"]) == ("cpu", 8, 64)
    assert lat["images"].startswith("8 validation images")


def test_calibrate_says_which_images_it_timed(calibrated, data, tmp_path, fixed_latency):
    model = copy_of(calibrated, tmp_path)
    out = ok(cli("calibrate", model, "--batch-size", 2))  # no target: measure and store only
    assert f"timed on {N_VAL} validation images ({(data / 'val').resolve()})" in out
    assert "stored the latency in" in out
    ckpt = load(model)
    assert ckpt["latency"][0]["images"] == f"{N_VAL} validation images ({(data / 'val').resolve()})"
    assert set(ckpt["operating_points"]) == {"half"}  # no point stored or replaced
    out = ok(cli("calibrate", model, "--batch-size", 2, "--random-images", "--max-images", 4))
    assert "timed on 4 random 64 px images" in out
    assert fixed_latency == [(2, 6, 5), (2, 4, 5)]


def test_latency_of_another_regime_is_refused_with_the_command(calibrated, data, tmp_path, fixed_latency):
    model = copy_of(calibrated, tmp_path)
    ok(cli("calibrate", model, "--batch-size", 1, "--threads", 1))
    line = one_error_line(cli("predict", data / "val", "--checkpoint", model, "--latency", "15ms", "--threads", 1,
                              "--out", tmp_path / "pred", "--no-progress"),
                          "no latency measured for this run (cpu, batch 8, 64 px, 1 thread, float32, "
                          f"malloc {allocator.setting()})",
                          f"stored: cpu, batch 1, 64 px, 1 thread, float32, malloc {allocator.setting()}",
                          f"dynamicdet calibrate {model} --device cpu --batch-size 8 --threads 1")
    assert not (tmp_path / "pred" / "predictions.jsonl").exists()
    command = line.split("`")[1].split()
    ok(cli("calibrate", *command[command.index("calibrate") + 1:]))  # the very command the message gives
    out = ok(cli("predict", data / "val", "--checkpoint", model, "--latency", "15ms", "--threads", 1,
                 "--out", tmp_path / "pred", "--no-progress", "--no-render"))
    assert "route: target 15.0 ms" in out and "batch 8" in out
    # held against the batch-8 measurement (10.5 / 20.5 ms, no curve), too few batches to warn
    assert re.search(r"vs calibration .* ms/image here; \d+\.\d expected at \d+% hard", out), out
    assert "2026-01-01" in out and "differs from its calibration" not in out
    flat = " ".join(out.replace("│", " ").split())  # the table's cells, unwrapped
    assert re.search(r"\((easy|hard|easy and hard) route: warm-up included\)", flat), out  # the 6 images made one batch of 8
    out = ok(cli("info", model, "--no-flops"))
    assert "latency per image, by regime" in out and "operating points" in out
    assert re.search(r"cpu 1 64 1 float32 10\.00 20\.00 6 validation", out), out
    assert re.search(r"cpu 8 64 1 float32 10\.50 20\.50 8 validation", out), out
    assert f"CPU rows measured with malloc {allocator.setting()}" in out


def test_predict_warns_when_the_device_no_longer_runs_at_its_calibrated_speed(calibrated, data, tmp_path,
                                                                               fixed_latency, monkeypatch):
    """A calibration far slower than the tiny model runs: predict says by how much, and how to re-measure."""
    monkeypatch.setitem(globals(), "LATENCIES", [(1e6, 2e6)])
    monkeypatch.setattr("dynamicdet_cli.predict.WARN_AFTER_BATCHES", 4)  # the 6 validation images at batch 1
    model = copy_of(calibrated, tmp_path)
    ok(cli("calibrate", model, "--batch-size", 1, "--threads", 1))
    out = ok(cli("predict", data / "val", "--checkpoint", model, "--point", "easy", "--batch-size", 1,
                 "--threads", 1, "--out", tmp_path / "pred", "--no-progress", "--no-render"))
    assert re.search(r"1000000\.0 expected at 0% hard", out), out
    assert re.search(r"differs from its calibration by -100%", out), out
    assert f"dynamicdet calibrate {model} --device cpu --batch-size 1 --threads 1" in out.replace("\n", "")
    assert (tmp_path / "pred" / "predictions.jsonl").exists()


def test_calibrate_warns_when_its_passes_disagree(calibrated, tmp_path, monkeypatch):
    def noisy(model, device, images, batch_size, warmup=2, repeats=5, source="", mixed_taus=(), original_sizes=None):
        return LatencyRecord(**Regime.of_run(model, device, batch_size).record(), easy_ms=10.0, hard_ms=20.0,
                             images=source, repeats=repeats, spread_pct=25.0, time="2026-01-01T00:00:00+00:00")

    monkeypatch.setattr(latency, "measure_routes", noisy)
    model = copy_of(calibrated, tmp_path)
    out = ok(cli("calibrate", model, "--latency", "50%", "--name", "half", "--repeats", 3))
    assert "a route's timed passes disagree by 25%" in out.replace("\n", " ")
    assert re.search(r"passes disagree by\s+25\.0% \(3 passes\)", out), out
    assert torch.load(model, weights_only=True)["operating_points"]["half"]["tau"] is not None  # stored all the same


def test_sweep_without_its_regimes_latency_says_how_to_measure_it(calibrated, data, tmp_path, fixed_latency):
    model = copy_of(calibrated, tmp_path)
    ok(cli("calibrate", model, "--batch-size", 1))
    out = ok(cli("evaluate", model, "--data", data / "data.yaml", "--sweep", "--ratios", "0,1", "--draws", 0,
                 "--out", tmp_path, "--no-progress"))
    assert "latency column empty: no latency measured for this run (cpu, batch 8" in out
    assert json.loads((tmp_path / "sweep.json").read_text())[0]["latency_ms"] is None  # not batch 1's


def test_evaluate_at_a_stored_point(calibrated, data, tmp_path):
    out = ok(cli("evaluate", calibrated, "--data", data / "data.yaml", "--point", "half", "--out", tmp_path,
                 "--no-progress"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    point = load(calibrated)["operating_points"]["half"]
    assert metrics["images"] == N_VAL
    assert metrics["route"] == pytest.approx(point["tau"])
    # The threshold was chosen on these very images: the share routed hard is the stored one.
    assert abs(metrics["hard_share"] - point["hard_ratio"]) <= 1 / N_VAL + 1e-9
    assert f"{100 * metrics['hard_share']:.0f}%" in out
    assert {"AP", "AP50"} <= set(metrics["metrics"])
    assert (tmp_path / "detections.json").is_file()


def test_evaluate_sweep_writes_a_row_per_ratio(calibrated, data, tmp_path):
    ok(cli("evaluate", calibrated, "--data", data / "data.yaml", "--sweep", "--ratios", "0,0.5,1", "--draws", 2,
           "--out", tmp_path, "--no-progress"))
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["k"] for r in rows] == [0.0, 0.5, 1.0]
    assert [r["hard_share"] for r in rows][::2] == [0.0, 1.0]
    with open(tmp_path / "sweep.csv", newline="") as fh:
        assert [float(r["k"]) for r in csv.DictReader(fh)] == [0.0, 0.5, 1.0]
    # At 0% and 100% hard every routing is the same one: random equals router.
    for r in rows[::2]:
        assert r["random_AP"] == r["AP"] and r["random_AP_std"] == 0.0


def test_predict_skips_bad_files_and_counts_them(calibrated, data, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    good = next(iter(sorted((data / "val").iterdir())))
    (extra / "corrupt.png").write_bytes(good.read_bytes()[:60])  # a PNG header, then nothing
    (extra / "notes.txt").write_text("not an image\n")
    out_dir = tmp_path / "pred"
    out = ok(cli("predict", data / "val", extra, extra / "notes.txt", "--checkpoint", calibrated, "--point", "half",
                 "--out", out_dir, "--no-render", "--no-progress"))
    assert re.search(r"skipped 2\b", out), out  # the corrupt PNG, and notes.txt named (a folder's is left out)
    assert re.search(rf"images {N_VAL}\b", out), out
    lines = (out_dir / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == N_VAL
    assert {json.loads(line)["route"] for line in lines} <= {"easy", "hard"}


# ----------------------------------------------------------------------------- user errors

def test_train_router_refuses_to_change_the_detectors_keys(calibrated, data, tmp_path):
    """The targets are the detectors' own losses: a loss weight changed after training would
    make them another loss (and the stored recipe would lie)."""
    model = copy_of(calibrated, tmp_path)
    before = model.read_bytes()
    one_error_line(cli("train-router", model, "--data", data / "data.yaml", "--set", "model.roi_heads.box_loss_weight=0.25",
                       "--no-progress"),
                   "--set model.roi_heads.box_loss_weight: train-router changes only the router's keys")
    assert model.read_bytes() == before


def test_train_router_on_fresh_detectors_is_refused(data, tmp_path):
    fresh = tmp_path / "fresh.pt"
    ok(cli("build", TINY, "-o", fresh, *FAST_SETS))
    before = fresh.read_bytes()
    one_error_line(cli("train-router", fresh, "--data", data / "data.yaml", "--no-progress"),
                   "detectors never trained", "train-detectors")
    assert fresh.read_bytes() == before


def test_evaluate_an_unknown_point_is_refused(calibrated, data, tmp_path):
    one_error_line(cli("evaluate", calibrated, "--data", data / "data.yaml", "--point", "nosuch",
                       "--out", tmp_path, "--no-progress"), "'nosuch'", "half")
    assert not (tmp_path / "metrics.json").exists()


def test_two_route_options_are_refused(calibrated, data, tmp_path):
    one_error_line(cli("evaluate", calibrated, "--data", data / "data.yaml", "--point", "half",
                       "--hard-ratio", 0.3, "--out", tmp_path, "--no-progress"), "at most one")


def test_predict_holds_a_latency_target_with_speed_held(calibrated, data, tmp_path, fixed_latency):
    """--speed held starts at the calibrated point and reports what it held; it needs a
    latency target, and an unreachable one keeps calibrate's one-line message."""
    model = copy_of(calibrated, tmp_path)
    ok(cli("calibrate", model, "--threads", 1, "--latency", "15ms", "--name", "mid"))  # times: (10, 20)
    base = ["predict", data / "val", "--checkpoint", model, "--threads", 1, "--no-progress", "--no-render"]
    out = ok(cli(*base, "--latency", "15ms", "--speed", "held", "--out", tmp_path / "held"))
    assert "route: target 15.0 ms" in out and "held at 15.0 ms/image" in out
    assert re.search(r"held target 15\.0 ms/image: ", out), out
    assert re.search(r"held share \d+\.\d% hard; tau \d\.\d{4} -> \d\.\d{4}", out), out
    assert len((tmp_path / "held" / "predictions.jsonl").read_text().splitlines()) == N_VAL
    out = ok(cli(*base, "--point", "mid", "--speed", "held", "--out", tmp_path / "held2"))
    assert "held at 15.0 ms/image" in out  # the point's stored target
    out = ok(cli(*base, "--point", "mid", "--out", tmp_path / "fixed"))  # --speed fixed by default
    assert "held" not in out
    line = one_error_line(cli(*base, "--latency", "25ms", "--speed", "held", "--out", tmp_path / "x"),
                          "cannot be met: achievable range is 10.0-20.0 ms")
    assert "clamp to the nearest end" not in line  # predict has no --clamp
    for route in (["--hard-ratio", 0.5], ["--point", "half"], ["--point", "easy"]):
        one_error_line(cli(*base, *route, "--speed", "held", "--out", tmp_path / "x"),
                       "--speed held holds a latency target")
    one_error_line(cli(*base, "--latency", "15ms", "--speed", "steady", "--out", tmp_path / "x"), "--speed")
    assert not (tmp_path / "x").exists()
