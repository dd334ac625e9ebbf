"""sweep: AP of every easy/hard split composed from two stored runs, plus the random baseline."""

import contextlib
import csv
import importlib.util
import io
import json

import pytest
import torch
from pycocotools.coco import COCO

from dynamicdet_cli.evaluation.coco import coco_evaluate
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.evaluation.sweep import SWEEP_COLUMNS, compose_sweep, write_sweep

N_IMAGES = 10
IMAGE_IDS = [100 + i for i in range(N_IMAGES)]
DIFFICULT = set(IMAGE_IDS[:5])  # the easy detector misses these; the hard one never does
RATIOS = [0.0, 0.2, 0.5, 0.8, 1.0]


def gt_box(i):
    return [10.0 + 5 * i, 20.0, 40.0 + 3 * i, 50.0]


def make_gt() -> COCO:
    gt = COCO()
    gt.dataset = {
        "images": [{"id": img, "width": 200, "height": 200} for img in IMAGE_IDS],
        "categories": [{"id": 1, "name": "thing"}, {"id": 5, "name": "other"}],
        "annotations": [
            {"id": n, "image_id": img, "category_id": 1 + 4 * (n % 2), "bbox": gt_box(n),
             "area": gt_box(n)[2] * gt_box(n)[3], "iscrowd": 0}
            for n, img in enumerate(IMAGE_IDS, start=1)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def perfect(gt, img):
    return [{"image_id": img, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt.imgToAnns[img]]


def make_results(gt):
    hard = {img: perfect(gt, img) for img in IMAGE_IDS}
    easy = {}
    for img in IMAGE_IDS:
        if img == IMAGE_IDS[0]:
            continue  # no entry at all: the easy detector found nothing
        if img in DIFFICULT:  # a badly placed box: a false positive and a miss
            x, y, w, h = gt.imgToAnns[img][0]["bbox"]
            easy[img] = [{**perfect(gt, img)[0], "bbox": [x + w, y + h, w, h], "score": 0.6}]
        else:
            easy[img] = perfect(gt, img)
    return easy, hard


def informative_scores():
    # difficult images score highest, so they are routed hard first
    return torch.tensor([0.9 - 0.01 * i if img in DIFFICULT else 0.4 - 0.01 * i
                         for i, img in enumerate(IMAGE_IDS)])


def flat(results):
    return [r for img in IMAGE_IDS for r in results.get(img, [])]


@pytest.fixture(scope="module")
def setup():
    gt = make_gt()
    easy, hard = make_results(gt)
    rows = compose_sweep(gt, IMAGE_IDS, easy, hard, informative_scores(), RATIOS,
                         lat1_ms=20.0, lat2_ms=40.0, random_draws=4, seed=0)
    return gt, easy, hard, rows


def test_ends_equal_single_detectors(setup):
    gt, easy, hard, rows = setup
    first, last = rows[0], rows[-1]
    easy_stats = coco_evaluate(gt, flat(easy), IMAGE_IDS)
    hard_stats = coco_evaluate(gt, flat(hard), IMAGE_IDS)
    assert (first["AP"], first["AP50"]) == (easy_stats["AP"], easy_stats["AP50"])
    assert (last["AP"], last["AP50"]) == (hard_stats["AP"], hard_stats["AP50"])
    assert last["AP"] == pytest.approx(1.0) and first["AP"] < 0.6
    assert (first["hard_share"], last["hard_share"]) == (0.0, 1.0)
    assert (first["tau"], last["tau"]) == (1.0, 0.0)
    # random routing of no / all images is the same routing: copied, zero spread
    assert (first["random_AP"], first["random_AP_std"]) == (first["AP"], 0.0)
    assert (last["random_AP"], last["random_AP_std"]) == (last["AP"], 0.0)


def test_ap_grows_with_k_and_beats_random(setup):
    _, _, _, rows = setup
    aps = [row["AP"] for row in rows]
    assert aps == sorted(aps) and aps[0] < aps[-1]
    half = rows[RATIOS.index(0.5)]
    assert half["AP"] == pytest.approx(1.0)  # all difficult images routed hard
    assert half["random_AP"] < half["AP"]
    assert half["random_AP_std"] > 0.0


def test_rows_shape_and_latency(setup):
    _, _, _, rows = setup
    assert [row["k"] for row in rows] == RATIOS
    for row in rows:
        assert set(row) == set(SWEEP_COLUMNS)
        assert row["hard_share"] == pytest.approx(row["k"])
        assert row["latency_ms"] == pytest.approx(20.0 + 20.0 * row["k"])


def test_middle_point_equals_evaluating_composed_results(setup):
    gt, easy, hard, rows = setup
    row = rows[RATIOS.index(0.2)]
    routed = {img for img, s in zip(IMAGE_IDS, informative_scores()) if s > row["tau"]}
    composed = [r for img in IMAGE_IDS
                for r in (hard if img in routed else easy).get(img, [])]
    stats = coco_evaluate(gt, composed, IMAGE_IDS)
    assert (row["AP"], row["AP50"]) == (stats["AP"], stats["AP50"])


def test_no_latency_and_no_random_draws():
    gt = make_gt()
    easy, hard = make_results(gt)
    rows = compose_sweep(gt, IMAGE_IDS, easy, hard, informative_scores(), [0.0, 0.5],
                         None, None, random_draws=0)
    assert all(row["latency_ms"] is None and row["random_AP"] is None for row in rows)


def test_seeded_random_baseline_is_reproducible():
    gt = make_gt()
    easy, hard = make_results(gt)
    args = (gt, IMAGE_IDS, easy, hard, informative_scores(), [0.3], None, None)
    assert compose_sweep(*args, random_draws=3, seed=7) == compose_sweep(*args, random_draws=3, seed=7)


def test_mismatched_scores_raise():
    gt = make_gt()
    easy, hard = make_results(gt)
    with pytest.raises(DynamicDetError, match="router scores"):
        compose_sweep(gt, IMAGE_IDS, easy, hard, torch.rand(3), [0.5], None, None)


def test_write_sweep(setup, tmp_path):
    _, _, _, rows = setup
    out = tmp_path / "sweep"
    paths = write_sweep(rows, out)
    assert json.loads(paths["json"].read_text()) == rows
    with paths["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(SWEEP_COLUMNS) and len(table) == len(rows)
    assert float(table[2]["AP"]) == pytest.approx(rows[2]["AP"])
    if importlib.util.find_spec("matplotlib") is None:
        assert paths["plot"] is None
    else:
        assert paths["plot"].stat().st_size > 0
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_write_sweep_without_latency_leaves_empty_cells(tmp_path):
    rows = [{"k": 0.0, "tau": 1.0, "hard_share": 0.0, "AP": 0.3, "AP50": 0.5,
             "latency_ms": None, "random_AP": None, "random_AP_std": None}]
    paths = write_sweep(rows, tmp_path)
    row = next(csv.DictReader(paths["csv"].open()))
    assert row["latency_ms"] == "" and row["random_AP"] == ""


def _random_case(seed: int, n_images: int = 12, crowd: bool = False):
    """Ground truth of 3 categories (one without any box) and two detectors' results:
    jittered true boxes, misses and false positives, every score distinct. With `crowd`,
    every fourth box is a crowd region (detections on it are ignored, not false)."""
    g = torch.Generator().manual_seed(seed)
    images = [{"id": 7 + 3 * i, "width": 100, "height": 100} for i in range(n_images)]
    anns, results = [], ([], [])
    for img in images:
        for _ in range(int(torch.randint(0, 4, (1,), generator=g))):
            x, y = torch.randint(0, 60, (2,), generator=g).tolist()
            box = [float(x), float(y), 20.0 + x % 7, 20.0 + y % 5]
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": 1 + int(torch.randint(0, 2, (1,), generator=g)),
                         "bbox": box, "area": box[2] * box[3], "iscrowd": int(crowd and len(anns) % 4 == 0)})
    for det in results:
        for a in anns:
            if torch.rand(1, generator=g) < 0.75:  # found, a few pixels off
                jitter = (torch.rand(4, generator=g) * 6 - 3).tolist()
                det.append({"image_id": a["image_id"], "category_id": a["category_id"],
                            "bbox": [v + j for v, j in zip(a["bbox"], jitter)]})
        for _ in range(8):  # false positives
            img = images[int(torch.randint(0, n_images, (1,), generator=g))]["id"]
            det.append({"image_id": img, "category_id": 1 + int(torch.randint(0, 3, (1,), generator=g)),
                        "bbox": [*torch.randint(0, 70, (2,), generator=g).float().tolist(), 15.0, 15.0]})
    scores = torch.randperm(len(results[0]) + len(results[1]), generator=g).tolist()
    for n, det in enumerate(results[0] + results[1]):
        det["score"] = 0.01 + scores[n] / 1000
    return images, anns, results


def _coco(images, anns) -> COCO:
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


@pytest.mark.parametrize("seed,crowd", [(0, False), (1, False), (2, False), (3, True), (4, True)])
def test_resampled_ap_equals_pycocotools_on_the_repeated_images(seed, crowd):
    """The AP of a routing over a resample equals COCOeval on a dataset that holds each image
    as many times as the resample does (copies under new ids); with crowd regions too, whose
    ignored detections take the other path of ResampledAP.ap."""
    from dynamicdet_cli.evaluation.coco import ResampledAP, evaluate_images
    images, anns, (easy, hard) = _random_case(seed, crowd=crowd)
    gt = _coco(images, anns)
    ids = [im["id"] for im in images]
    fast = ResampledAP(evaluate_images(gt, easy, ids), evaluate_images(gt, hard, ids))
    g = torch.Generator().manual_seed(100 + seed)
    for _ in range(4):
        from_hard = (torch.rand(len(ids), generator=g) < 0.5).tolist()
        counts = torch.bincount(torch.randint(len(ids), (len(ids),), generator=g), minlength=len(ids)).tolist()
        copies, copy_anns, copy_results = [], [], []
        for i, (img, n) in enumerate(zip(fast.image_ids, counts)):
            source = hard if from_hard[i] else easy
            for c in range(n):
                new_id = 1000 * (c + 1) + img
                copies.append({"id": new_id, "width": 100, "height": 100})
                copy_anns += [{**a, "id": len(copy_anns) + 1 + j, "image_id": new_id}
                              for j, a in enumerate(x for x in anns if x["image_id"] == img)]
                copy_results += [{**r, "image_id": new_id} for r in source if r["image_id"] == img]
        want = coco_evaluate(_coco(copies, copy_anns), copy_results, [c["id"] for c in copies])["AP"]
        assert fast.ap(from_hard, counts) == pytest.approx(want, abs=1e-9)
    # every image once, routed all easy: the one-shot evaluation of the easy results
    assert fast.ap([False] * len(ids), [1] * len(ids)) == pytest.approx(coco_evaluate(gt, easy, ids)["AP"], abs=1e-9)


def test_bootstrap_interval_of_the_gain_over_random(setup):
    _, _, _, rows = setup
    for row in rows:
        if row["k"] in (0.0, 1.0):  # every routing of no image or of all is the same: no interval
            assert row["gain_lo"] is None and row["gain_hi"] is None
            continue
        assert row["gain_vs_random"] == pytest.approx(row["AP"] - row["random_AP"])
        assert row["gain_lo"] <= row["gain_hi"]
    half = next(row for row in rows if row["k"] == 0.5)
    # the informative router sends exactly the 5 difficult images hard: no resample has chance
    # routing beat it (on 10 images, chance covers every difficult image of a resample often)
    assert half["gain_lo"] >= 0 and half["gain_hi"] > 0


def test_bootstrap_interval_of_a_router_that_sends_the_wrong_images_hard_lies_below_zero(setup):
    gt, easy, hard, _ = setup
    scores = torch.tensor([0.4 - 0.01 * i if img in DIFFICULT else 0.9 - 0.01 * i
                           for i, img in enumerate(IMAGE_IDS)])  # routes the wrong images first
    row = compose_sweep(gt, IMAGE_IDS, easy, hard, scores, [0.5], None, None, random_draws=4, seed=0)[0]
    assert row["gain_vs_random"] < 0 and row["gain_lo"] < 0 and row["gain_hi"] <= 0
