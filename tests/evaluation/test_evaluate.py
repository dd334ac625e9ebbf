"""evaluate, routing and latency: the sweep's composed AP against running each route (and a
mixed threshold) for real; how route options resolve; the latency-to-threshold step at and
beyond both ends; replacing a latency measurement.

The model is the tiny recipe at 64 px trained for two epochs on 8 synthetic images (its
router untrained: random but fixed scores are all these checks need); the routing checks
use hand-made checkpoints with known validation scores.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision.io import decode_image
from torchvision.models.detection.image_list import ImageList

from dynamicdet_cli.speed.calibrate import hard_ratio_for_threshold, threshold_for_hard_ratio
from dynamicdet_cli.checkpoint.store import load_checkpoint, model_from_checkpoint
from dynamicdet_cli.evaluation.coco import to_coco_results
from dynamicdet_cli.data.coco import CocoDataset
from dynamicdet_cli.data.shapes import make_shapes
from dynamicdet_cli.data.transforms import build_transforms
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.model.detector import DynamicDetector
from dynamicdet_cli.evaluation.evaluate import evaluate_route, sweep
from dynamicdet_cli.speed import latency as latency_module
from dynamicdet_cli.speed.latency import measure_routes, operating_point, store_latency
from dynamicdet_cli.predict import check_route
from dynamicdet_cli.config.recipe import load_recipe
from dynamicdet_cli.checkpoint.types import REGIME_KEYS, Checkpoint, LatencyRecord, OperatingPoint, ValidationScores
from dynamicdet_cli.config.recipe import Recipe
from dynamicdet_cli.speed.regime import Regime, find_latency
from dynamicdet_cli.speed.routing import resolve_route
from dynamicdet_cli.train.loop import train_detectors

TINY = Path(__file__).resolve().parents[2] / "recipes" / "shapes-tiny.yaml"
FAST = ["model.transform.min_size=[64]", "model.transform.max_size=64", "train.batch_size=2",
        "train.workers=0", "train.warmup_iters=1", "train.epochs=1",
        "model.roi_heads.score_thresh=0.0"]  # every image gets boxes from both detectors
CPU = torch.device("cpu")
BATCH = 4  # 6 validation images: one full batch and one short one


# ----------------------------------------------------------------------------- a trained model

def pseudo_ground_truth(model, folder: Path) -> Path:
    """val.json with each image's objects replaced by the top 2 detections of one detector
    (easy on even images, hard on odd ones). One epoch on 8 images finds next to nothing of
    the real shapes, so AP would be 0 for both routes and prove nothing; on this ground
    truth each route scores well on its half and poorly on the other, and where the images
    go changes the AP."""
    coco = json.loads((folder / "val.json").read_text())
    cat_ids = [c["id"] for c in coco["categories"]]
    annotations = []
    with torch.inference_mode():
        for n, info in enumerate(coco["images"]):
            image = decode_image(str(folder / "val" / info["file_name"])).float() / 255
            easy, hard, _ = model.detect_both([image])
            for r in to_coco_results((easy if n % 2 == 0 else hard)[0], info["id"], cat_ids)[:2]:
                x, y, w, h = r["bbox"]
                annotations.append({"id": len(annotations) + 1, "image_id": info["id"], "bbox": [x, y, w, h],
                                    "category_id": r["category_id"], "area": w * h, "iscrowd": 0})
    assert len(annotations) == 2 * len(coco["images"])
    path = folder / "pseudo.json"
    path.write_text(json.dumps({**coco, "annotations": annotations}))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint, model in eval mode, validation dataset) after one epoch of training."""
    folder = tmp_path_factory.mktemp("shapes")
    make_shapes(folder, n_train=8, n_val=6, size=64, seed=0)
    train_set = CocoDataset(folder / "train.json", folder / "train", transforms=build_transforms(True))
    run = tmp_path_factory.mktemp("train") / "run"
    result = train_detectors(load_recipe(TINY, FAST), train_set, None, run, show_progress=False)
    assert result.complete
    ckpt = load_checkpoint(run / "last.pt")
    torch.manual_seed(0)  # the untrained router's weights
    model = model_from_checkpoint(ckpt, CPU).eval()
    val_set = CocoDataset(pseudo_ground_truth(model, folder), folder / "val", transforms=build_transforms(False))
    return ckpt, model, val_set


@pytest.fixture(scope="module")
def swept(trained, tmp_path_factory):
    ckpt, model, val_set = trained
    out = tmp_path_factory.mktemp("sweep")
    rows, written, measured = sweep(model, ckpt, val_set, CPU, out, [0.0, 0.5, 1.0], random_draws=0,
                                    batch_size=BATCH, show_progress=False)
    assert measured is None and all(r["latency_ms"] is None for r in rows)
    return rows


@pytest.mark.parametrize("index, route", [(0, "easy"), (2, "hard")])
def test_sweep_ends_equal_evaluating_each_route_alone(trained, swept, tmp_path, index, route):
    _, model, val_set = trained
    alone = evaluate_route(model, val_set, route, CPU, tmp_path, BATCH, show_progress=False)
    row = swept[index]
    assert row["hard_share"] == alone.hard_share == (1.0 if route == "hard" else 0.0)
    assert alone.metrics["AP"] > 0.05, "each route finds its own half of the pseudo ground truth"
    assert row["AP"] == pytest.approx(alone.metrics["AP"], abs=1e-9)
    assert row["AP50"] == pytest.approx(alone.metrics["AP50"], abs=1e-9)


def test_sweep_middle_equals_a_mixed_route_run(trained, swept, tmp_path):
    """At 50% hard the composed AP is what the model gives when it routes each batch itself."""
    _, model, val_set = trained
    row = swept[1]
    mixed = evaluate_route(model, val_set, row["tau"], CPU, tmp_path, BATCH, show_progress=False)
    assert mixed.hard_share == row["hard_share"] == 0.5
    # Backbone 2 runs on a sub-batch here: convolution numerics may differ in the last bits.
    assert row["AP"] == pytest.approx(mixed.metrics["AP"], abs=1e-6)


# ----------------------------------------------------------------------------- hand-made checkpoints

SCORES = torch.tensor([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95])
LATENCY = {"device": "cpu", "threads": 2, "batch_size": 1, "image_size": 64, "easy_ms": 10.0, "hard_ms": 20.0}


def lat(**changes) -> LatencyRecord:
    """LATENCY as a stored record, with `changes`."""
    return LatencyRecord.from_dict(dict(LATENCY, **changes))


def make_ckpt(points: dict | None = None, latency: list | None = None, router: bool = True,
              scores: torch.Tensor | None = None) -> Checkpoint:
    """A checkpoint holding only what routing reads (no detector weights)."""
    scores = SCORES.clone() if scores is None else scores
    return Checkpoint(
        recipe=Recipe(), classes=("a",), category_ids=(1,), detector={},
        router={"mlp.0.weight": torch.zeros(1)} if router else None,
        validation=ValidationScores(tuple(range(len(scores))), scores, "val.json") if router else None,
        latency=tuple(latency or ()),
        operating_points=dict(points or {}),
    )


def point(tau: float, share: float) -> OperatingPoint:
    return OperatingPoint(tau, share)


def test_no_option_takes_the_default_point():
    ckpt = make_ckpt({"fast": point(0.9, 0.1), "default": point(0.6, 0.4), "slow": point(0.1, 0.9)})
    route, text = resolve_route(ckpt)
    assert route == 0.6 and "'default'" in text


def test_no_option_takes_the_only_point_then_the_fallbacks():
    assert resolve_route(make_ckpt({"fast": point(0.9, 0.1)}))[0] == 0.9
    assert resolve_route(make_ckpt(router=False))[0] == "hard"
    route, _ = resolve_route(make_ckpt())  # a router but no point: half the images hard
    assert hard_ratio_for_threshold(SCORES, route) == 0.5


def test_no_option_with_several_points_but_no_default_is_half_hard():
    route, _ = resolve_route(make_ckpt({"a": point(0.9, 0.1), "b": point(0.1, 0.9)}))
    assert hard_ratio_for_threshold(SCORES, route) == 0.5


@pytest.mark.parametrize("k", [0.0, 0.1, 0.3, 0.7, 1.0])
def test_hard_ratio_gives_that_share_on_the_stored_scores(k):
    tau, text = resolve_route(make_ckpt({"default": point(0.5, 0.5)}), hard_ratio=k)
    assert hard_ratio_for_threshold(SCORES, tau) == pytest.approx(k)
    assert f"{100 * k:.0f}% hard" in text


def test_named_points_and_fixed_routes():
    ckpt = make_ckpt({"x": point(0.42, 0.6)})
    assert resolve_route(ckpt, point="x")[0] == 0.42
    assert resolve_route(ckpt, point="easy")[0] == "easy"
    assert resolve_route(ckpt, point="hard")[0] == "hard"
    with pytest.raises(DynamicDetError, match=r"no operating point named 'y' in the checkpoint \(stored: x; or easy, hard\)"):
        resolve_route(ckpt, point="y")


@pytest.mark.parametrize("options", [
    {"hard_ratio": 0.3, "threshold": 0.5},
    {"latency": "15ms", "point": "x"},
    {"hard_ratio": 0.3, "latency": "15ms", "threshold": 0.2, "point": "x"},
])
def test_more_than_one_option_is_refused(options):
    with pytest.raises(DynamicDetError, match="at most one"):
        resolve_route(make_ckpt({"x": point(0.5, 0.5)}, [lat()]), **options)


# The regime LATENCY was measured in (a record of before dtypes were stored: float32).
RUN = Regime("cpu", batch_size=1, image_size=64, threads=2)


def test_latency_uses_the_measurement_of_this_runs_regime():
    gpu = lat(device="cuda:NVIDIA H100", easy_ms=1.0, hard_ms=2.0)
    batch8 = lat(batch_size=8, easy_ms=5.0, hard_ms=6.0)
    tau, text = resolve_route(make_ckpt(latency=[lat(), gpu, batch8]), latency="15ms", regime=RUN)
    assert hard_ratio_for_threshold(SCORES, tau) == 0.5  # k = (15 - 10) / (20 - 10): batch 1, not 8
    assert "batch 1" in text
    tau, _ = resolve_route(make_ckpt(latency=[lat(), gpu, batch8]), latency="5.5ms",
                           regime=Regime("cpu", 8, 64, 2))
    assert hard_ratio_for_threshold(SCORES, tau) == 0.5  # (5.5 - 5) / (6 - 5)


def test_latency_as_a_share_uses_this_regimes_routes():
    """'50%' is halfway between lat1 and lat2 of the regime the run is in, not of another."""
    batch8 = lat(batch_size=8, easy_ms=5.0, hard_ms=6.0)
    # the ratio is 0.5 in either regime: the target in ms says which regime's routes were read
    for regime, target in ((RUN, "target 15.0 ms"), (Regime("cpu", 8, 64, 2), "target 5.5 ms")):
        tau, text = resolve_route(make_ckpt(latency=[lat(), batch8]), latency="50%", regime=regime)
        assert hard_ratio_for_threshold(SCORES, tau) == 0.5
        assert target in text, text  # (10 + 20) / 2 at batch 1, (5 + 6) / 2 at batch 8


@pytest.mark.parametrize("other", [
    {"batch_size": 8}, {"threads": 1}, {"image_size": 128}, {"device": "cuda:NVIDIA H100"}, {"dtype": "float16"},
    {"malloc": "keep-freed"},
])
def test_latency_of_another_regime_is_never_used(other):
    ckpt = make_ckpt(latency=[lat(**other)])
    with pytest.raises(DynamicDetError, match="no latency measured for this run"):
        resolve_route(ckpt, latency="15ms", regime=RUN)
    assert find_latency(ckpt, RUN) is None


def test_threads_and_malloc_do_not_split_gpu_regimes():
    gpu = lat(device="cuda:NVIDIA H100", threads=8)
    assert find_latency(make_ckpt(latency=[gpu]), Regime("cuda:NVIDIA H100", 1, 64, 2, device_arg="cuda")) is gpu
    run = Regime("cuda:NVIDIA H100", 1, 64, 2, malloc="keep-freed", device_arg="cuda")
    assert find_latency(make_ckpt(latency=[gpu]), run) is gpu


def test_a_record_from_before_malloc_was_stored_holds_for_the_default_malloc_only(monkeypatch):
    """Latencies stored before the package kept freed memory were measured with glibc's
    default, under which the demo model's routes take 1.22-1.27x as long: a run that keeps
    freed memory must not use them."""
    keeping = Regime("cpu", batch_size=1, image_size=64, threads=2, malloc="keep-freed")
    monkeypatch.delenv("DYNAMICDET_MALLOC", raising=False)  # not opted out: the command needs no prefix
    with pytest.raises(DynamicDetError) as err:
        resolve_route(make_ckpt(latency=[lat()]), latency="15ms", regime=keeping, checkpoint="m.pt")
    assert "stored: cpu, batch 1, 64 px, 2 threads, float32, malloc default." in str(err.value)
    assert "`dynamicdet calibrate m.pt --device cpu --batch-size 1 --threads 2`" in str(err.value)
    assert find_latency(make_ckpt(latency=[lat(malloc="keep-freed")]), keeping).easy_ms == 10.0


def test_the_missing_regime_message_names_the_stored_ones_and_the_command(monkeypatch):
    ckpt = make_ckpt(latency=[lat(), lat(device="cuda:NVIDIA H100")])
    run = Regime("cpu", batch_size=8, image_size=64, threads=2)
    monkeypatch.setenv("DYNAMICDET_MALLOC", "default")  # the user opted out: the command says so
    with pytest.raises(DynamicDetError) as err:
        resolve_route(ckpt, latency="15ms", regime=run, checkpoint="runs/model.pt")
    line = str(err.value)
    assert "\n" not in line
    assert "this run (cpu, batch 8, 64 px, 2 threads, float32, malloc default)" in line
    assert "stored: cpu, batch 1, 64 px, 2 threads, float32, malloc default; cuda:NVIDIA H100, batch 1" in line
    assert "`DYNAMICDET_MALLOC=default dynamicdet calibrate runs/model.pt --device cpu --batch-size 8 --threads 2`" \
        in line
    with pytest.raises(DynamicDetError, match="stored: none"):
        resolve_route(make_ckpt(), latency="15ms", regime=run)


def test_a_point_calibrated_for_another_regime_says_so():
    bound = OperatingPoint(0.5, 0.5, 15.0, **{k: v for k, v in LATENCY.items() if k in REGIME_KEYS})
    _, text = resolve_route(make_ckpt({"default": bound}), regime=RUN)
    assert "calibrated for" not in text
    _, text = resolve_route(make_ckpt({"default": bound}), regime=Regime("cpu", 8, 64, 2))
    assert "15.0 ms target was calibrated for cpu, batch 1" in text and "not promised" in text
    _, text = resolve_route(make_ckpt({"default": point(0.5, 0.5)}), regime=Regime("cpu", 8, 64, 2))
    assert "calibrated for" not in text  # a hard-ratio point promises no latency


def test_threshold_outside_the_scores_range_routes_all_one_way():
    assert resolve_route(make_ckpt(), threshold=1.0)[0] == 1.0
    assert hard_ratio_for_threshold(SCORES, resolve_route(make_ckpt(), threshold=0.0)[0]) == 1.0


# ----------------------------------------------------------------------------- operating_point

@pytest.mark.parametrize("target, k", [(10.0, 0.0), (12.0, 0.2), (15.0, 0.5), (18.0, 0.8), (20.0, 1.0)])
def test_operating_point_from_a_latency(target, k):
    p = operating_point(make_ckpt(), target_ms=target, latency=lat())
    assert p.hard_ratio == pytest.approx(k)
    assert hard_ratio_for_threshold(SCORES, p.tau) == pytest.approx(k)
    assert p.tau == threshold_for_hard_ratio(SCORES, k)
    assert p.target_ms == target
    assert p.expected_ms == pytest.approx(10.0 + 10.0 * k)
    assert {k: getattr(p, k) for k in REGIME_KEYS} == RUN.record()


def test_an_all_hard_point_with_a_score_of_zero_is_accepted_by_predict():
    scores = SCORES.clone()
    scores[0] = 0.0  # a saturated sigmoid
    ckpt = make_ckpt(scores=scores)
    p = operating_point(ckpt, target_ms=20.0, latency=lat())
    assert p.tau == 0.0
    check_route(p.tau)  # no "threshold must lie in [0, 1]"
    assert p.hard_ratio == pytest.approx(0.9) and p.expected_ms == pytest.approx(19.0)


def test_operating_point_ends_route_everything_one_way():
    easy = operating_point(make_ckpt(), target_ms=10.0, latency=lat())
    hard = operating_point(make_ckpt(), target_ms=20.0, latency=lat())
    assert (SCORES > easy.tau).sum() == 0 and easy.tau >= 1.0
    assert (SCORES > hard.tau).all() and hard.tau <= 0.0


@pytest.mark.parametrize("target, k", [(5.0, 0.0), (9.99, 0.0), (20.01, 1.0), (100.0, 1.0)])
def test_operating_point_out_of_range(target, k):
    with pytest.raises(DynamicDetError, match=r"cannot be met: achievable range is 10\.0-20\.0 ms"):
        operating_point(make_ckpt(), target_ms=target, latency=lat())
    p = operating_point(make_ckpt(), target_ms=target, latency=lat(), clamp=True)
    assert p.hard_ratio == k
    assert p.expected_ms == pytest.approx(10.0 + 10.0 * k)


def test_operating_point_refusals():
    with pytest.raises(DynamicDetError, match="exactly one"):
        operating_point(make_ckpt(), hard_ratio=0.5, threshold=0.5)
    with pytest.raises(DynamicDetError, match="needs a latency measurement"):
        operating_point(make_ckpt(), target_ms=15.0)
    with pytest.raises(DynamicDetError, match="not slower"):
        operating_point(make_ckpt(), target_ms=15.0, latency=lat(hard_ms=9.0))
    with pytest.raises(DynamicDetError, match="run train-router"):
        operating_point(make_ckpt(router=False), hard_ratio=0.5)


# ----------------------------------------------------------------------------- store_latency

def test_store_latency_replaces_a_measurement_under_the_same_conditions(trained, images):
    _, model, _ = trained
    ckpt = make_ckpt(latency=[lat(device="cuda:NVIDIA H100")])
    first = measure_routes(model, CPU, images, batch_size=2, warmup=1, repeats=1, source="4 test images")
    assert first.easy_ms > 0 and first.hard_ms > 0 and first.batch_size == 2
    assert first.images == "4 test images" and first.dtype == "float32" and first.image_size == 64
    ckpt = store_latency(ckpt, first)
    assert len(ckpt.latency) == 2 and ckpt.latency[1] is first
    second = measure_routes(model, CPU, images, batch_size=2, warmup=1, repeats=1)
    ckpt = store_latency(ckpt, second)  # same device, threads, batch and size: replaced
    assert len(ckpt.latency) == 2 and ckpt.latency[1] is second
    other = replace(second, batch_size=8)
    ckpt = store_latency(ckpt, other)  # another batch size is another measurement
    assert [m.device for m in ckpt.latency] == ["cuda:NVIDIA H100", "cpu", "cpu"]


class _RouteRecorder(torch.nn.Module):
    """A stand-in model for measure_routes: the parts a RouteBatcher calls, recording
    (route, batch size) per route call; it detects nothing."""

    class transform:
        min_size = (64,)

        size_divisible = 1

        @staticmethod
        def postprocess(dets, image_sizes, original_sizes):
            return dets

    split_by_route = staticmethod(DynamicDetector.split_by_route)
    shape_groups = DynamicDetector.shape_groups

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def prepare(self, images, original_sizes=None):
        sizes = [tuple(im.shape[-2:]) for im in images]
        return ImageList(torch.stack(images), sizes), None, original_sizes or sizes

    def backbone1(self, x):
        return {1: x}

    def difficulty(self, feats, image_list):
        return torch.zeros(len(image_list.image_sizes))

    def run_route(self, route, image_list, feats):
        self.calls.append((route, len(image_list.image_sizes)))
        return [{} for _ in image_list.image_sizes]


def test_measure_routes_times_every_image_under_both_routes_interleaved(images):
    model = _RouteRecorder()
    measured = measure_routes(model, CPU, images[:3], batch_size=2, warmup=1, repeats=2)
    timed = model.calls[2:]  # one warm-up batch per route first
    assert timed == [("easy", 2), ("hard", 2), ("hard", 1), ("easy", 1),  # pass 1
                     ("hard", 2), ("easy", 2), ("easy", 1), ("hard", 1)]  # pass 2: the other order
    assert measured.batch_size == 2 and measured.images == "3 images"


def test_the_sweep_takes_the_latency_of_its_own_regime_only(trained, tmp_path):
    ckpt, model, val_set = trained
    here = Regime.of_run(model, CPU, BATCH).record()
    other = LatencyRecord(**dict(here, batch_size=1), easy_ms=1.0, hard_ms=2.0)
    ckpt = replace(ckpt, latency=(other,), validation=ValidationScores(tuple(val_set.image_ids), torch.rand(6)))
    rows, _, measured = sweep(model, ckpt, val_set, CPU, tmp_path, [0.0, 1.0], 0, BATCH, show_progress=False)
    assert measured is None and rows[0]["latency_ms"] is None  # batch 1's latency is not batch 4's
    ckpt = replace(ckpt, latency=(other, LatencyRecord(**here, easy_ms=10.0, hard_ms=20.0)))
    rows, _, measured = sweep(model, ckpt, val_set, CPU, tmp_path, [0.0, 1.0], 0, BATCH, show_progress=False)
    assert measured.batch_size == BATCH and [r["latency_ms"] for r in rows] == [10.0, 20.0]


def test_mixed_batches_are_timed_at_the_shares_their_thresholds_route_hard(trained, images):
    _, model, _ = trained
    with torch.no_grad():
        phi = torch.stack([out["difficulty"] for out in model(images, route="easy")])  # B
    taus = [float(phi.max()) + 1e-6, float(phi.median()), -1.0]  # none, half (rounded down), all
    measured = measure_routes(model, CPU, images, batch_size=2, warmup=1, repeats=1, mixed_taus=taus)
    shares = [share for share, _ in measured.curve_ms]
    assert shares == [0.0, float((phi > float(phi.median())).float().mean()), 1.0]
    assert all(ms > 0 for _, ms in measured.curve_ms)
    assert measure_routes(model, CPU, images, 2, 1, 1).curve_ms == ()


def test_measure_routes_reports_how_far_its_passes_disagree(images, monkeypatch):
    """spread_pct: (max - min) / median of a route's passes, the larger route's. One batch, two
    routes: 2 warm-up calls, then pass 1 takes 1 ms per call and pass 2 takes 2 ms, so
    (2 - 1) / 1.5 = 66.7%."""
    model = _RouteRecorder()

    def fake_latency(fn, warmup, repeats, sync):
        fn()
        return 1e-3 if len(model.calls) <= 4 else 2e-3

    monkeypatch.setattr(latency_module, "measure_latency", fake_latency)
    measured = measure_routes(model, CPU, images[:2], batch_size=2, warmup=1, repeats=2)
    assert len(model.calls) == 6
    assert abs(measured.spread_pct - 100 * (2 - 1) / 1.5) < 1e-9
    assert measure_routes(model, CPU, images[:2], batch_size=2, warmup=1, repeats=1).spread_pct is None


def test_the_latency_table_shows_malloc_as_a_column_only_when_cpu_rows_differ():
    from rich.console import Console

    from dynamicdet_cli.cli.tables import latency_table

    def shown(records):
        console = Console(width=200, record=True)
        console.print(latency_table(records))
        return console.export_text()

    kept = lat(malloc="keep-freed")
    text = shown([kept, replace(kept, batch_size=8)])
    assert "CPU rows measured with malloc keep-freed" in text and "│ malloc" not in text
    text = shown([kept, lat()])  # LATENCY: a record from before malloc was stored
    assert "malloc" in text.splitlines()[2] and "keep-freed" in text and "default" in text


def test_evaluates_latency_leaves_each_routes_warm_up_batch_at_that_routes_steady_time():
    """evaluate's ms/image counted the first batch of each route (set-up, cold caches) like any
    other, so a small validation set reported several times the steady cost; predict left it out."""
    from dynamicdet_cli.evaluation.evaluate import _steady_ms

    times = {("easy", False): [30.0, 6], ("easy", True): [400.0, 2],   # steady 5 ms, warm-up 200 ms
             ("hard", False): [0.0, 0], ("hard", True): [60.0, 2]}     # hard ran only its warm-up
    assert _steady_ms(times, 10) == pytest.approx((8 * 5.0 + 2 * 30.0) / 10)
    assert _steady_ms({k: [0.0, 0] for k in times}, 0) == 0.0


def test_the_evaluate_table_shows_cocos_no_ground_truth_as_a_dash_and_counts_one_image():
    """COCOeval's -1 (no ground truth of a size) is not a score: the table shows "-"."""
    from types import SimpleNamespace

    from rich.console import Console

    from dynamicdet_cli.cli.tables import evaluate_table
    metrics = {"AP": 0.5, "AP50": 0.75, "AP75": 0.25, "APs": -1.0, "APm": 0.125, "APl": -1.0}
    evaluation = SimpleNamespace(metrics=metrics, hard_share=0.5, latency_ms=3.0, n_images=1,
                                 detections_path="dets.json")
    console = Console(width=200, record=True)
    console.print(evaluate_table(evaluation, "tau 0.5"))
    text = console.export_text()
    assert "-1.000" not in text
    row = next(line for line in text.splitlines() if line.startswith("│ box"))
    assert [cell.strip() for cell in row.split("│")[2:8]] == ["0.500", "0.750", "0.250", "-", "0.125", "-"], row
    assert "1 image;" in text
