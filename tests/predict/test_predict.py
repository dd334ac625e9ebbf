"""predict: bad and odd image files, mixed routes under a threshold, glob inputs, the outputs."""

import json
from dataclasses import replace
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from torchvision.io import decode_png, read_file
from torchvision.transforms.v2 import functional as F

from dynamicdet_cli.core.errors import DynamicDetError
from helpers import detector_keeping_everything
from dynamicdet_cli.checkpoint.types import LatencyRecord
from dynamicdet_cli.data.images import list_images
from dynamicdet_cli.predict import CAPTION_HEIGHT, PredictSummary, predict, summary_table

# torchvision 0.29 deprecates its image codecs (in favour of torchcodec) on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning",
                                        "ignore:The image encoding:DeprecationWarning")

CLASSES = ["circle", "square", "triangle"]
CAT_IDS = [3, 7, 9]  # not 1..3, so a label/category mix-up shows


@pytest.fixture(scope="module")
def model():
    """The tiny recipe at 64 px, 3 classes, keeping every detection (untrained scores are low)."""
    return detector_keeping_everything(3)


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Good: an RGB PNG, a grayscale PNG, an RGB JPEG. Bad: a truncated PNG, a text file."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_noise(48, 64, 0)).save(folder / "a_rgb.png")
    Image.fromarray(_noise(40, 40, 1)[..., 0], mode="L").save(folder / "b_gray.png")
    Image.fromarray(_noise(64, 32, 2)).save(folder / "c_photo.jpg", quality=90)
    good = (folder / "a_rgb.png").read_bytes()
    (folder / "d_corrupt.png").write_bytes(good[:60])  # a PNG header and then nothing
    (folder / "e_notes.txt").write_text("not an image\n")
    return folder


def _run(model, paths, out, route="hard", **kw):
    kw = {"conf": 0.0, "progress": False, **kw}
    return predict(model, paths, route, out, CLASSES, CAT_IDS, **kw)


def test_good_images_written_bad_ones_skipped(model, mixed_folder, tmp_path):
    assert "e_notes.txt" not in [p.name for p in list_images([str(mixed_folder)])]  # a folder: its images
    paths = list_images([str(mixed_folder), str(mixed_folder / "e_notes.txt")])  # a file named: tried
    assert [p.name for p in paths] == ["a_rgb.png", "b_gray.png", "c_photo.jpg", "d_corrupt.png", "e_notes.txt"]
    out = tmp_path / "out"
    summary = _run(model, paths, out, batch_size=2)

    assert (summary.n_images, summary.n_skipped) == (3, 2)
    assert {p.name for p, _ in summary.skipped} == {"d_corrupt.png", "e_notes.txt"}
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(line["file"]).name for line in lines] == ["a_rgb.png", "b_gray.png", "c_photo.jpg"]
    assert [(line["width"], line["height"]) for line in lines] == [(64, 48), (40, 40), (32, 64)]
    assert all(line["route"] == "hard" for line in lines) and summary.n_hard == 3
    dets = [d for line in lines for d in line["detections"]]
    assert dets, "score_thresh 0 and conf 0 keep the untrained model's detections"
    assert summary.n_detections == len(dets)
    for d in dets:
        assert d["label"] in CLASSES and d["category_id"] == CAT_IDS[CLASSES.index(d["label"])]
        x1, y1, x2, y2 = d["box"]
        assert x1 <= x2 and y1 <= y2

    coco = json.loads((out / "predictions_coco.json").read_text())
    assert len(coco) == len(dets) and {r["image_id"] for r in coco} <= {0, 1, 2}
    images = json.loads((out / "images.json").read_text())
    assert [i["id"] for i in images["images"]] == [0, 1, 2]  # position among all the files
    assert images["categories"] == [{"id": c, "name": n} for c, n in zip(CAT_IDS, CLASSES)]

    renders = sorted(p.name for p in (out / "render").iterdir())
    assert renders == ["a_rgb.png", "b_gray.png", "c_photo.png"]  # no temporary files left
    drawn = decode_png(read_file(str(out / "render" / "b_gray.png")))
    assert drawn.shape == (3, CAPTION_HEIGHT + 512, 512)  # 40 px scaled up, under its caption
    assert set(summary.latency_ms) == {"easy", "hard"} and summary.latency_ms["easy"] is None
    assert summary.latency_ms["hard"] > 0
    assert summary_table(summary).row_count >= 5


def test_a_small_image_renders_large_with_a_caption(model, tmp_path):
    """A 128 px image's render is 512 px on its longer side, under a caption strip: with no
    detection drawn (conf 1) the picture part is the plain upscaled image, the caption is
    text (not a blank strip), and it says the route: easy and hard captions differ."""
    Image.fromarray(_noise(128, 96, 3)).save(tmp_path / "small.png")
    drawn = {}
    for route in ("easy", "hard"):
        out = tmp_path / route
        _run(model, [tmp_path / "small.png"], out, route=route, conf=1.0)
        drawn[route] = decode_png(read_file(str(out / "render" / "small.png")))
    image = torch.from_numpy(_noise(128, 96, 3)).permute(2, 0, 1)
    plain = F.resize(image, [512, 384], antialias=True)
    for picture in drawn.values():
        assert picture.shape == (3, CAPTION_HEIGHT + 512, 384)
        assert torch.equal(picture[:, CAPTION_HEIGHT:], plain)
        caption = picture[:, :CAPTION_HEIGHT]
        assert (caption != plain[:, :CAPTION_HEIGHT]).any()
        assert len(torch.unique(caption.reshape(3, -1), dim=1).T) > 10  # anti-aliased text, not a flat band
    assert not torch.equal(drawn["easy"][:, :CAPTION_HEIGHT], drawn["hard"][:, :CAPTION_HEIGHT])


def test_a_narrow_images_caption_fits_its_width(model, tmp_path):
    """A 25x100 image renders 128 px wide: the caption's text shrinks to fit, so its last
    columns are the strip's plain background, not text cut at the edge."""
    Image.fromarray(_noise(100, 25, 4)).save(tmp_path / "thin.png")
    _run(model, [tmp_path / "thin.png"], tmp_path / "out", conf=1.0)
    caption = decode_png(read_file(str(tmp_path / "out" / "render" / "thin.png")))[:, :CAPTION_HEIGHT]
    assert caption.shape[-1] == 128
    background = torch.tensor([0x20, 0x20, 0x20], dtype=torch.uint8)[:, None, None]
    assert torch.equal(caption[:, :, -4:], background.expand(3, CAPTION_HEIGHT, 4))
    assert len(torch.unique(caption.reshape(3, -1), dim=1).T) > 10  # still text


def test_boxes_scale_with_the_render(model, tmp_path):
    """A detection at the top-left quarter of a 64 px image is drawn in that quarter of the
    512 px render: its box colour shows there and nowhere in the bottom-right quarter."""
    from dynamicdet_cli.predict import PALETTE, _render
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    det = {"boxes": torch.tensor([[4.0, 4.0, 28.0, 28.0]]), "labels": torch.tensor([1]),
           "scores": torch.tensor([0.9]), "difficulty": 0.25, "route": "easy"}
    picture = decode_png(read_file(str(_render(image, det, CLASSES, tmp_path / "r.png"))))[:, CAPTION_HEIGHT:]
    red = torch.tensor([int(PALETTE[0][i:i + 2], 16) for i in (1, 3, 5)]).view(3, 1, 1)
    hits = (picture == red).all(dim=0).nonzero()  # y,x of the box outline
    assert len(hits) > 0
    assert hits.min() >= 4 * 8 - 2 and hits[:, 0].max() <= 28 * 8 + 2 and hits[:, 1].max() <= 28 * 8 + 2


def test_conf_filters_json_and_no_render(model, mixed_folder, tmp_path):
    out = tmp_path / "out"
    summary = _run(model, list_images([str(mixed_folder / "*.png")]), out, conf=1.0, render=False)
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(line["detections"] == [] for line in lines)
    assert json.loads((out / "predictions_coco.json").read_text()) == []
    assert not (out / "render").exists() and summary.renders == []


def test_only_bad_files_raise(model, mixed_folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("d_corrupt.png", "e_notes.txt"):
        (bad / name).write_bytes((mixed_folder / name).read_bytes())
    with pytest.raises(DynamicDetError, match="no readable images among 2 files"):
        _run(model, list_images([str(bad), str(bad / "e_notes.txt")]), tmp_path / "out")
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def test_threshold_route_follows_difficulty(model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(_noise(56, 56, 10 + i) // (1 + i)).save(folder / f"img{i}.png")  # darker and darker
    paths = list_images([str(folder)])
    _run(model, paths, tmp_path / "probe", route="easy", render=False)
    probe = (tmp_path / "probe" / "predictions.jsonl").read_text().splitlines()
    phi = sorted(json.loads(line)["difficulty"] for line in probe)
    assert phi[0] < phi[-1], "the images need different difficulties for this test"
    tau = (phi[2] + phi[3]) / 2

    summary = _run(model, paths, tmp_path / "out", route=tau, batch_size=4, render=False)
    lines = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [line["route"] for line in lines] == ["hard" if line["difficulty"] > tau else "easy" for line in lines]
    assert summary.n_hard == 3
    assert summary.latency_ms["easy"] > 0 and summary.latency_ms["hard"] > 0


def test_outputs_and_render_names_keep_input_order_when_routes_finish_out_of_it(model, tmp_path):
    """Routes run on full batches, so results come out of input order: at batch 2 with input
    batches [hard, easy], [easy, hard] the easy pair finishes first. The JSON lines, and the
    render names of two files called x.png, still follow the input order."""
    arrays = [_noise(48, 48, 30 + i) // (1 + 2 * i) for i in range(4)]
    with torch.inference_mode():
        phi = [float(model.detect([F.to_dtype(torch.from_numpy(a).permute(2, 0, 1), torch.float32, scale=True)],
                                  route="easy")[0]["difficulty"]) for a in arrays]
    order = sorted(range(4), key=lambda i: phi[i])  # lowest phi first
    assert phi[order[1]] < phi[order[2]], "the images need different difficulties for this test"
    tau = (phi[order[1]] + phi[order[2]]) / 2
    hard1, easy1, easy2, hard2 = order[3], order[0], order[1], order[2]
    files = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "c.png", tmp_path / "d.png"]
    for path, i in zip(files, (hard1, easy1, easy2, hard2)):
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(arrays[i]).save(path)

    out = tmp_path / "out"
    summary = _run(model, files, out, route=tau, batch_size=2, conf=1.0, regroup=True)  # conf 1: nothing drawn
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(line["image_id"], line["file"], line["route"]) for line in lines] == [
        (0, str(files[0]), "hard"), (1, str(files[1]), "easy"), (2, str(files[2]), "easy"), (3, str(files[3]), "hard")]
    images = json.loads((out / "images.json").read_text())["images"]
    assert [m["id"] for m in images] == [0, 1, 2, 3]
    assert [p.name for p in summary.renders] == ["x.png", "x-1.png", "c.png", "d.png"]
    # render/x.png pictures a/x.png (the hard one), though b/x.png finished first
    picture = decode_png(read_file(str(out / "render" / "x.png")))[:, CAPTION_HEIGHT:].float()
    scaled = [F.resize(torch.from_numpy(arrays[i]).permute(2, 0, 1), list(picture.shape[-2:]), antialias=True).float()
              for i in (hard1, easy1)]
    assert (picture - scaled[0]).abs().mean() < (picture - scaled[1]).abs().mean()


def test_list_images_globs_files_and_errors(mixed_folder, tmp_path):
    assert [p.name for p in list_images([str(mixed_folder / "*.png")])] == ["a_rgb.png", "b_gray.png", "d_corrupt.png"]
    # a file named twice (directly and through a folder) is listed once, in first-seen order
    both = list_images([str(mixed_folder / "c_photo.jpg"), str(mixed_folder)])
    assert both[0].name == "c_photo.jpg" and len(both) == 4  # the folder's images: not e_notes.txt
    with pytest.raises(DynamicDetError, match="no file matches"):
        list_images([str(tmp_path / "nothing*.png")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DynamicDetError, match="no files"):
        list_images([str(empty)])
    (empty / "sub").mkdir()
    (empty / "sub" / "x.png").write_bytes((mixed_folder / "a_rgb.png").read_bytes())
    (empty / "top.JPG").write_bytes((mixed_folder / "c_photo.jpg").read_bytes())
    from dynamicdet_cli.core.errors import set_warning_sink
    said = []
    set_warning_sink(said.append)
    try:
        assert [p.name for p in list_images([str(empty)])] == ["top.JPG"]  # suffixes in any case
    finally:
        set_warning_sink(None)
    assert said == [f"{empty}: 1 subfolder(s) not read; name them too (or a pattern such as {empty}/*/*.jpg) "
                    "to read their images"]


def test_bad_arguments(model, mixed_folder, tmp_path):
    paths = list_images([str(mixed_folder)])
    with pytest.raises(DynamicDetError, match="confidence"):
        _run(model, paths, tmp_path / "o", conf=2.0)
    with pytest.raises(DynamicDetError, match="route"):
        _run(model, paths, tmp_path / "o", route="medium")


def test_the_summary_holds_the_run_against_its_calibration():
    summary = PredictSummary(n_images=4, skipped=[], n_hard=1, n_detections=0,
                             latency_ms={"easy": 10.0, "hard": 20.0}, batch_size=2, out_dir=Path("."))
    assert summary.mean_ms == 12.5
    assert summary.calibration_gap() is None  # nothing to hold it against
    summary.calibration = LatencyRecord("cpu", 8, 64, 2, easy_ms=5.0, hard_ms=15.0, time="2026-01-01T00:00:00+00:00")
    expected, gap = summary.calibration_gap()  # the straight line at 25% hard: 7.5 ms
    assert expected == 7.5 and abs(gap - (12.5 / 7.5 - 1)) < 1e-12
    summary.calibration = replace(summary.calibration, curve_ms=((0.25, 10.0),))  # a measured mixed-batch point at 25% hard
    assert summary.calibration_gap() == (10.0, 0.25)
    rendered = Console(width=200, record=True)
    rendered.print(summary_table(summary))
    assert "12.5 ms/image here; 10.0 expected at 25% hard by calibrate (2026-01-01" in rendered.export_text()
    assert "warm-up" not in rendered.export_text()
    summary.warm_routes = ("hard",)  # the hard route's only call was its first
    rendered = Console(width=300, record=True)
    rendered.print(summary_table(summary))
    text = rendered.export_text()
    assert "20.0 ms/image (model only, batch 2), warm-up included" in text
    assert "(hard route: warm-up included)" in text


def test_the_first_batch_is_left_out_of_the_latency_when_later_ones_ran(model, tmp_path):
    """The first batch carries one-time warm-up: a 2 s stall in it (in backbone 1, which runs
    once per input batch) must not reach the figures."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_noise(40, 40, 20 + i)).save(folder / f"img{i}.png")
    calls = []

    def stall_once(*_):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(2.0)

    handle = model.backbone1.register_forward_pre_hook(stall_once)
    try:
        summary = _run(model, list_images([str(folder)]), tmp_path / "out", route="easy", batch_size=1, render=False)
    finally:
        handle.remove()
    assert len(calls) == 3 and summary.n_images == 3
    assert summary.latency_ms["easy"] < 600  # the two later batches only; with the first, >= 667 ms
    assert not summary.warm_routes


def _phi_of(model, arrays) -> list[float]:
    with torch.inference_mode():
        return [float(model.detect([F.to_dtype(torch.from_numpy(a).permute(2, 0, 1), torch.float32, scale=True)],
                                   route="easy")[0]["difficulty"]) for a in arrays]


@pytest.fixture
def sixteen(model, tmp_path):
    """16 images of spread difficulty, their paths and the median of their phi."""
    arrays = [_noise(48, 48, 40 + i) // (1 + i % 5) for i in range(16)]
    paths = []
    for i, a in enumerate(arrays):
        paths.append(tmp_path / f"s{i:02d}.png")
        Image.fromarray(a).save(paths[-1])
    phi = sorted(_phi_of(model, arrays))
    assert phi[7] < phi[8], "the images need different difficulties for this test"
    return paths, (phi[7] + phi[8]) / 2


def test_the_fixed_threshold_routes_exactly_by_phi_over_tau(model, sixteen, tmp_path):
    """Without a held target every image is routed at the one tau (today's behaviour): the
    routes are phi > tau image by image, the same on a second run and regrouped or not."""
    paths, tau = sixteen
    runs = []
    for i, regroup in enumerate((True, True, False)):
        _run(model, paths, tmp_path / f"out{i}", route=tau, batch_size=4, render=False, regroup=regroup)
        runs.append([json.loads(line) for line in (tmp_path / f"out{i}" / "predictions.jsonl").read_text().splitlines()])
    routes = [[line["route"] for line in lines] for lines in runs]
    assert routes[0] == ["hard" if line["difficulty"] > tau else "easy" for line in runs[0]]
    assert routes[0].count("hard") == 8
    assert routes[0] == routes[1] == routes[2]


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_held_target_sends_fewer_images_hard_when_the_hard_route_grows_dearer(model, sixteen, tmp_path):
    """Calibrated at 10 / 20 ms per image, the run's fake clock charges 10 ms per image for
    backbone 1 and 30 more for backbone 2: the hard route now costs 40 ms. Held at 15 ms, the
    controller starts at the calibrated tau (half hard) and sends fewer images hard than the
    fixed threshold's 8 of 16; the summary reports the held run."""
    from dynamicdet_cli.speed.hold import LatencyHold

    paths, tau = sixteen
    clock = _FakeClock()

    def charge(ms):
        def hook(_module, args, _output):
            clock.now += ms / 1000.0 * args[0].shape[0]  # per image in the call
        return hook

    handles = [model.backbone1.register_forward_hook(charge(10.0)), model.backbone2.register_forward_hook(charge(30.0))]
    try:
        hold = LatencyHold(15.0, 10.0, 20.0, tau, clock=clock)
        summary = _run(model, paths, tmp_path / "held", route=tau, batch_size=2, render=False, regroup=False, hold=hold)
    finally:
        for handle in handles:
            handle.remove()
    lines = [json.loads(line) for line in (tmp_path / "held" / "predictions.jsonl").read_text().splitlines()]
    assert summary.n_hard == sum(line["route"] == "hard" for line in lines) < 8
    report = summary.hold
    assert report is not None and report.target_ms == 15.0 and report.tau_start == tau
    assert report.tau_end > tau and 0.0 <= report.tau_min <= report.tau_max <= 1.0
    assert report.hard_share == summary.n_hard / 16
    # batches with warm-up are left out: the first, and the one holding the hard route's first call
    assert 12 <= report.images <= len(summary.image_ms) <= 14
    assert report.hard_ms > 20.0  # it measured the dearer hard route
    rendered = Console(width=300, record=True)
    rendered.print(summary_table(summary))
    text = rendered.export_text()
    assert "held target" in text and f"tau {tau:.4f} -> {report.tau_end:.4f}" in text


def test_a_second_run_into_the_same_folder_replaces_the_first_runs_pictures(model, mixed_folder, tmp_path):
    from dynamicdet_cli.core.errors import set_warning_sink
    out = tmp_path / "out"
    _run(model, list_images([str(mixed_folder)]), out)
    assert len(list((out / "render").glob("*.png"))) == 3
    said = []
    set_warning_sink(said.append)
    try:
        _run(model, [mixed_folder / "a_rgb.png"], out)
        assert sorted(p.name for p in (out / "render").iterdir()) == ["a_rgb.png"]  # matches predictions.jsonl
        assert said == [f"{out / 'render'}: removed 3 picture(s) of an earlier predict run"]
        # pictures read as inputs are never removed
        _run(model, [out / "render" / "a_rgb.png"], out, render=False)
        assert (out / "render" / "a_rgb.png").is_file()
    finally:
        set_warning_sink(None)
