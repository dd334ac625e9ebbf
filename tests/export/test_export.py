"""export: the ONNX graphs (run by examples/onnx_predict.py under onnxruntime) and the TorchScript
module against the PyTorch model, on a batch that mixes routes and image sizes; the CLI and its errors."""

import importlib.util
from types import SimpleNamespace
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_error_line
from PIL import Image
from typer.testing import CliRunner

from dynamicdet_cli.checkpoint.store import new_checkpoint, router_state, save_checkpoint
from dynamicdet_cli.checkpoint.types import OperatingPoint
from dynamicdet_cli.cli.app import typer_app
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.export.exporter import META_FILE, TORCHSCRIPT_FILE, check_exportable, export_checkpoint
from dynamicdet_cli.model.build import build_model
from dynamicdet_cli.config.recipe import with_overrides

# torch 2.9+ marks torch.jit (TorchScript) deprecated in favour of torch.export; it still works.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["circle", "square", "triangle", "star", "cross"]
BOX_TOL, SCORE_TOL = 1e-3, 1e-4  # what the export promises against the PyTorch model


def _onnx_example():
    """examples/onnx_predict.py as a module: the tests run what users run."""
    spec = importlib.util.spec_from_file_location("onnx_predict", REPO / "examples" / "onnx_predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ckpt_and_model(tiny_recipe):
    """The tiny recipe's model (64 px, 5 classes, seed 0) and its checkpoint, with a stored point."""
    torch.manual_seed(0)
    model = build_model(tiny_recipe.model).eval()
    ckpt = replace(new_checkpoint(tiny_recipe, CLASSES, [3, 4, 5, 6, 7], model), router=router_state(model),
                   operating_points={"default": OperatingPoint(tau=0.45, hard_ratio=0.5)})
    return ckpt, model


# The exports are traced on one 64x64 image (padded 64x64). "mixed": seven images of three
# sizes, all padded to 64x64 (PyTorch runs them as one batch, the ONNX runtime as one graph-1
# batch per size); "small": images padded to 32x64, a size the tracing never saw.
BATCHES = {"mixed": [(64, 64)] * 4 + [(48, 64)] * 2 + [(96, 128)],  # 96x128 is resized to 48x64
           "small": [(32, 64)] * 2 + [(20, 64)] * 2}


@pytest.fixture(scope="module")
def batches(ckpt_and_model):
    """name -> (images, tau, PyTorch's detections): tau lies halfway between two middle
    difficulties of the batch, so the batch mixes routes with a margin."""
    _, model = ckpt_and_model
    g = torch.Generator().manual_seed(1)
    out = {}
    with torch.inference_mode():
        for name, sizes in BATCHES.items():
            images = [torch.rand(3, h, w, generator=g) for h, w in sizes]
            phi = sorted(float(d["difficulty"]) for d in model.detect(images, "easy"))
            mid = len(phi) // 2
            assert phi[mid] - phi[mid - 1] > 1e-4, "difficulties too close to split the batch reliably"
            tau = (phi[mid - 1] + phi[mid]) / 2
            reference = model.detect(images, tau)
            assert {d["route"] for d in reference} == {"easy", "hard"}
            out[name] = images, tau, reference
    return out


def _assert_same(expected: list[dict], got: list[dict]) -> None:
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert g["route"] == e["route"], f"image {i}"
        assert abs(float(g["difficulty"]) - float(e["difficulty"])) < 1e-5, f"image {i}"
        assert len(e["boxes"]) > 0, "nothing to compare: the model found no box"
        assert np.asarray(g["boxes"]).shape == tuple(e["boxes"].shape), f"image {i}"
        np.testing.assert_array_equal(np.asarray(g["labels"]), e["labels"].numpy())
        np.testing.assert_allclose(np.asarray(g["boxes"]), e["boxes"].numpy(), rtol=0, atol=BOX_TOL)
        np.testing.assert_allclose(np.asarray(g["scores"]), e["scores"].numpy(), rtol=0, atol=SCORE_TOL)


# ----------------------------------------------------------------------------- ONNX

@pytest.fixture(scope="module")
def onnx_dir(ckpt_and_model, tmp_path_factory):
    pytest.importorskip("onnx", reason="ONNX export needs the export extra: pip install 'dynamicdet[export]'")
    pytest.importorskip("onnxruntime", reason="running the graphs needs the export extra: pip install 'dynamicdet[export]'")
    ckpt, model = ckpt_and_model
    out = tmp_path_factory.mktemp("onnx")
    result = export_checkpoint(ckpt, model, "onnx", out)
    assert sorted(p.name for p in result.files) == sorted(
        ["backbone1_router.onnx", "easy_detector1.onnx", "hard_backbone2_detector2.onnx", META_FILE])
    return out


@pytest.mark.parametrize("batch", BATCHES)
def test_onnx_matches_pytorch_on_a_batch_that_mixes_routes(onnx_dir, batches, batch, one_thread):
    images, tau, reference = batches[batch]
    runtime = _onnx_example().DynamicDetONNX(onnx_dir, threads=1)
    # batch size 3: the four 64 px images run graph 1 as a batch of 3 and one of 1
    got = runtime.detect([im.numpy() for im in images], tau, batch_size=3)
    _assert_same(reference, got)


def test_onnx_graphs_declare_their_batch_and_free_image_sizes(onnx_dir):
    import onnx
    meta = json.loads((onnx_dir / META_FILE).read_text())

    def dims(name: str, tensor: str) -> list:
        graph = onnx.load(str(onnx_dir / meta["onnx"]["graphs"][name]["file"])).graph
        value = next(v for v in graph.input if v.name == tensor)
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    batch, _, h, w = dims("backbone1_router", "images")
    assert isinstance(batch, str) and isinstance(h, str) and isinstance(w, str)  # symbolic: any batch, any size
    for route in ("easy", "hard"):
        batch, _, h, w = dims(route, "image")
        assert batch == 1 and isinstance(h, str) and isinstance(w, str)
        assert meta["onnx"]["graphs"][route]["batch"] == 1


def test_onnx_json_holds_classes_transform_and_operating_points(onnx_dir, ckpt_and_model):
    ckpt, _ = ckpt_and_model
    meta = json.loads((onnx_dir / META_FILE).read_text())
    assert meta["classes"] == CLASSES and meta["category_ids"] == [3, 4, 5, 6, 7]
    assert meta["transform"]["min_size"] == 64 and meta["transform"]["max_size"] == 64
    assert meta["transform"]["image_mean"] == list(ckpt.recipe.model.transform.image_mean)
    assert meta["operating_points"]["default"]["tau"] == 0.45 and meta["default_point"] == "default"
    assert meta["onnx"]["graphs"]["easy"]["inputs"] == ["image", "image_size", "original_size", "f1_2", "f1_3", "f1_4"]


def test_onnx_example_script_prints_routed_detections(onnx_dir, tmp_path, capsys):
    files = []
    for i, (h, w) in enumerate([(64, 64), (48, 64)]):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(files[-1])
    example = _onnx_example()
    assert example.main([str(onnx_dir), *map(str, files), "--point", "hard", "--conf", "0", "--threads", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(f) for f in files]
    assert all(line["route"] == "hard" and line["detections"] for line in lines)
    assert {d["label"] for line in lines for d in line["detections"]} <= set(CLASSES)
    with pytest.raises(SystemExit, match="no operating point 'fast'"):
        example.main([str(onnx_dir), str(files[0]), "--point", "fast"])
    with pytest.raises(SystemExit, match="has no dynamicdet.json"):
        example.main([str(tmp_path), str(files[0])])


# ----------------------------------------------------------------------------- TorchScript

@pytest.fixture(scope="module")
def scripted(ckpt_and_model, tmp_path_factory):
    ckpt, model = ckpt_and_model
    out = tmp_path_factory.mktemp("torchscript")
    export_checkpoint(ckpt, model, "torchscript", out)
    extra = {"dynamicdet.json": ""}
    module = torch.jit.load(str(out / TORCHSCRIPT_FILE), _extra_files=extra)
    return module, json.loads(extra["dynamicdet.json"])


@pytest.mark.parametrize("batch", BATCHES)
def test_torchscript_matches_pytorch_on_a_batch_that_mixes_routes(scripted, batches, batch, one_thread):
    module, _ = scripted
    images, tau, reference = batches[batch]
    with torch.inference_mode():
        dets, routes = module(images, tau)
    _assert_same(reference, [dict(d, route=r) for d, r in zip(dets, routes)])


def test_torchscript_tau_outside_0_1_routes_every_image_one_way(scripted, batches, one_thread):
    module, _ = scripted
    images = batches["mixed"][0]
    with torch.inference_mode():
        assert module(images[:3], -1.0)[1] == ["hard"] * 3
        assert module(images[:3], 1.0)[1] == ["easy"] * 3


def test_torchscript_module_carries_the_json(scripted):
    _, meta = scripted
    assert meta["classes"] == CLASSES and meta["torchscript"]["file"] == TORCHSCRIPT_FILE
    assert meta["operating_points"]["default"]["tau"] == 0.45


# ----------------------------------------------------------------------------- CLI and errors

def _cli(*args):
    return CliRunner().invoke(typer_app, [str(a) for a in args])


def test_cli_exports_torchscript_and_refuses_bad_requests(ckpt_and_model, tmp_path):
    ckpt, _ = ckpt_and_model
    path = save_checkpoint(ckpt, tmp_path / "m.pt")
    before = path.read_bytes()
    result = _cli("export", path, "--format", "torchscript", "-o", tmp_path / "ts")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ts" / TORCHSCRIPT_FILE).is_file() and (tmp_path / "ts" / META_FILE).is_file()
    one_error_line(_cli("export", path, "--format", "tflite", "-o", tmp_path / "x"), "--format")
    one_error_line(_cli("export", path, "--format", "torchscript", "-o", path), "is a file")
    assert path.read_bytes() == before  # the checkpoint given as output folder is left alone
    one_error_line(_cli("export", path, "--format", "onnx", "-o", tmp_path / "ts"), "holds a torchscript export")
    one_error_line(_cli("export", tmp_path / "missing.pt", "--format", "onnx", "-o", tmp_path / "x"), "not found")


def test_other_families_are_refused_with_one_line(ckpt_and_model):
    ckpt, _ = ckpt_and_model
    other = replace(ckpt, recipe=with_overrides(ckpt.recipe, ["model.family=retinanet"]))
    with pytest.raises(DynamicDetError, match="export --format torchscript supports faster_rcnn only; .* retinanet"):
        check_exportable(other, "torchscript")


def test_onnx_without_the_extra_says_how_to_install_it(ckpt_and_model, monkeypatch):
    ckpt, _ = ckpt_and_model
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(DynamicDetError, match=r"pip install 'dynamicdet\[export\]'"):
        check_exportable(ckpt, "onnx")


def test_the_onnx_example_reads_a_sixteen_bit_png_as_predict_does(tmp_path):
    """PIL's convert("RGB") clips 16-bit values at 255: the example scales them as load_rgb does."""
    import numpy as np
    from PIL import Image

    from dynamicdet_cli.data.coco import load_rgb
    gray = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300)
    path = tmp_path / "sixteen.png"
    Image.fromarray(gray).save(path)
    read = _onnx_example().read_image(path)  # 3,H,W float32 in [0, 1]
    want = load_rgb(path).float() / 65535
    assert read.shape == (3, 12, 16) and float(read.max()) > 0.8  # allclose below tells it from a clipped read (1.0 almost everywhere)
    np.testing.assert_allclose(read, want.numpy(), atol=1e-6)


def test_an_export_without_a_stored_point_records_predicts_fallback(ckpt_and_model):
    """predict routes a trained router with no stored point at 50% hard on the validation images;
    the export writes that point down, so the ONNX example routes as predict does."""
    from dynamicdet_cli.checkpoint.types import ValidationScores
    from dynamicdet_cli.export.exporter import export_meta
    from dynamicdet_cli.speed.routing import resolve_route
    ckpt, _ = ckpt_and_model
    scores = torch.linspace(0.1, 0.9, 9)
    bare = replace(ckpt, operating_points={}, validation=ValidationScores(tuple(range(9)), scores))
    meta = export_meta(bare)
    tau, _ = resolve_route(bare)
    assert meta["default_point"] == "default" and meta["operating_points"]["default"]["tau"] == pytest.approx(tau)
    assert "50%" in meta["operating_points"]["default"]["note"]
    example = _onnx_example().DynamicDetONNX
    assert example.tau_for(SimpleNamespace(meta=meta)) == pytest.approx(tau)  # the example's default
    assert export_meta(replace(bare, router=None))["default_point"] == "hard"
    assert export_meta(ckpt)["operating_points"]["default"]["tau"] == 0.45  # a stored point stays as it is
