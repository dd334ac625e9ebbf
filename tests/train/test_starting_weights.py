"""Starting weights by name (torchvision:NAME) and by file, through torchvision's weights API and
the torch.hub cache in TORCH_HOME. No test touches the network: torch.hub's download function
is replaced in every test, by one that fails or one that writes a local file.

The cached files are small ResNet-18 state dicts (random weights) under the name torchvision
expects (resnet18-f37072fd.pth for ResNet18_Weights.IMAGENET1K_V1). torch.hub checks the hash
prefix in that name only when it downloads (torchvision's builders pass check_hash=True, and
so do we); a file already in the cache is loaded as it is.
"""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from dynamicdet_cli.cli.app import typer_app
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.model.build import build_model
from dynamicdet_cli.config.recipe import load_recipe
from dynamicdet_cli.train.starting_weights import cached_file, load_init_weights, torchvision_weights
from helpers import one_error_line

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY = RECIPES / "shapes-tiny.yaml"
R18 = ["--set", "model.backbone.kind=resnet", "--set", "model.backbone.depth=18",
       "--set", "model.transform.min_size=64", "--set", "model.transform.max_size=64"]
R18_NAME = "torchvision:ResNet18_Weights.IMAGENET1K_V1"
pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*args):
    return CliRunner().invoke(typer_app, [str(a) for a in args])


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty TORCH_HOME, with downloads recorded and failing as a blocked network does."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    calls = []

    def blocked(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        raise URLError("network blocked by the test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", blocked)
    return home / "hub" / "checkpoints", calls


def resnet18_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return torchvision.models.resnet18().state_dict()


def test_names_resolve_through_torchvision():
    detector = torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1
    assert torchvision_weights("torchvision:fasterrcnn_resnet50_fpn") is detector  # model name: its DEFAULT
    assert torchvision_weights("torchvision:FasterRCNN_ResNet50_FPN_Weights.COCO_V1") is detector
    assert torchvision_weights("torchvision:ResNet50_Weights.IMAGENET1K_V2") is torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    with pytest.raises(DynamicDetError, match="did you mean torchvision:resnet50"):
        torchvision_weights("torchvision:resnet5O")
    with pytest.raises(DynamicDetError, match="not a torchvision weights name"):
        torchvision_weights("torchvision:ResNet50_Weights.IMAGENET9K")


def test_cached_file_works_offline(hub, tmp_path):
    cache, calls = hub
    cache.mkdir(parents=True)
    weights = resnet18_state()
    torch.save(weights, cache / "resnet18-f37072fd.pth")  # its hash is not f37072fd...: not checked when cached
    out = tmp_path / "m.pt"
    result = cli("build", TINY, "-o", out, *R18, "--backbone-weights", R18_NAME)
    assert result.exit_code == 0, result.output
    assert calls == []  # no download tried
    assert f"backbones initialised from {R18_NAME}" in result.output
    built = torch.load(out, weights_only=True)["detector"]
    assert torch.equal(built["backbone1.stem.0.weight"], weights["conv1.weight"])
    assert torch.equal(built["backbone2.stages.4.1.conv2.weight"], weights["layer4.1.conv2.weight"])


def test_offline_without_the_file_names_it_and_the_cache_folder(hub, tmp_path):
    cache, calls = hub
    result = cli("build", TINY, "-o", tmp_path / "m.pt", *R18, "--backbone-weights", "torchvision:resnet18")
    line = one_error_line(result, "torchvision:resnet18", "cannot download", "network blocked by the test",
                          "resnet18-f37072fd.pth", str(cache))
    assert len(line) < 400, line
    assert calls == [(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url, "f37072fd")]  # hash checked on download
    assert not (tmp_path / "m.pt").exists()


def test_a_download_lands_in_the_cache_and_is_used(hub, tmp_path, monkeypatch):
    cache, _ = hub
    weights = resnet18_state(seed=1)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append(hash_prefix)
        torch.save(weights, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    recipe = load_recipe(TINY, [s for s in R18 if s != "--set"])
    model = build_model(recipe.model)
    note = load_init_weights(model, "torchvision:resnet18", recipe.model.backbone)
    assert calls == ["f37072fd"] and (cache / "resnet18-f37072fd.pth").is_file()
    assert "torchvision ResNet state dict (into both backbones) torchvision:resnet18" in note
    assert torch.equal(model.backbone2.stem[0].weight, weights["conv1.weight"])
    load_init_weights(model, "torchvision:resnet18", recipe.model.backbone)
    assert calls == ["f37072fd"]  # the second time from the cache


def test_a_damaged_cached_file_says_delete_it(hub, tmp_path):
    cache, _ = hub
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_bytes(b"not a torch file")
    result = cli("build", TINY, "-o", tmp_path / "m.pt", *R18, "--backbone-weights", R18_NAME)
    one_error_line(result, str(cache / "resnet18-f37072fd.pth"), "damaged", "delete it")


def test_weights_that_cannot_fit_are_refused_before_any_download(hub, tmp_path):
    _, calls = hub
    result = cli("build", TINY, "-o", tmp_path / "m.pt", *R18, "--backbone-weights", "torchvision:ResNet50_Weights.IMAGENET1K_V2")
    one_error_line(result, "weights for a ResNet-50", "ResNet-18")
    result = cli("build", TINY, "-o", tmp_path / "m.pt", *R18, "--backbone-weights", "torchvision:fasterrcnn_resnet50_fpn")
    one_error_line(result, "FasterRCNN_ResNet50_FPN_Weights do not fit", "ResNet weights")
    result = cli("build", TINY, "-o", tmp_path / "m.pt", "--set", "model.backbone.weights=torchvision:resnet18")
    one_error_line(result, "model.backbone.weights", "regnet")
    assert calls == []


def test_the_recipe_key_is_used_by_build_and_training(hub, tmp_path):
    cache, calls = hub
    cache.mkdir(parents=True)
    weights = resnet18_state(seed=2)
    torch.save(weights, cache / "resnet18-f37072fd.pth")
    out = tmp_path / "m.pt"
    result = cli("build", TINY, "-o", out, *R18, "--set", f"model.backbone.weights={R18_NAME}")
    assert result.exit_code == 0, result.output
    built = torch.load(out, weights_only=True)
    assert built["recipe"]["model"]["backbone"]["weights"] == R18_NAME
    assert torch.equal(built["detector"]["backbone2.stem.0.weight"], weights["conv1.weight"])
    assert calls == []

    # training a fresh run from the recipe alone (no --init) starts from the same weights
    from dynamicdet_cli.data.shapes import make_shapes
    data = make_shapes(tmp_path / "data", n_train=2, n_val=1, size=64, seed=0).parent
    result = cli("train-detectors", TINY, "--train-ann", data / "train.json", "--train-images", data / "train",
                 "--out", tmp_path / "run", "--no-progress", *R18, "--set", f"model.backbone.weights={R18_NAME}",
                 "--set", "train.batch_size=2", "--set", "train.workers=0", "--epochs", 1, "--lr", 0)
    assert result.exit_code == 0, result.output
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["detector"]
    for backbone in ("backbone1", "backbone2"):
        assert torch.equal(trained[f"{backbone}.stages.2.0.conv1.weight"], weights["layer2.0.conv1.weight"])
    assert calls == []


def test_a_coco_detector_by_name_goes_into_both_detectors(hub):
    """torchvision's Faster R-CNN R50-FPN (random weights, saved under the COCO file's name) into
    the R50 recipe: backbone, FPN, RPN and RoI heads of both detectors, nothing skipped."""
    cache, calls = hub
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    source = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    name = Path(cached_file(torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1)).name
    torch.save(source, cache / name)
    recipe = load_recipe(RECIPES / "dy-faster-rcnn-r50-fpn.yaml", ["model.num_classes=90"])
    model = build_model(recipe.model)
    note = load_init_weights(model, "torchvision:FasterRCNN_ResNet50_FPN_Weights.COCO_V1", recipe.model.backbone)
    assert "torchvision detector state dict (into both detectors)" in note and "skipped" not in note, note
    assert calls == []
    own = model.state_dict()
    for head, backbone in (("head1", "backbone1"), ("head2", "backbone2")):
        assert torch.equal(own[f"{backbone}.stages.3.5.conv2.weight"], source["backbone.body.layer3.5.conv2.weight"])
        assert torch.equal(own[f"{head}.neck.layer_blocks.0.0.weight"], source["backbone.fpn.layer_blocks.0.0.weight"])
        assert torch.equal(own[f"{head}.rpn.head.conv.0.0.weight"], source["rpn.head.conv.0.0.weight"])
        assert torch.equal(own[f"{head}.roi_heads.box_predictor.cls_score.weight"],
                           source["roi_heads.box_predictor.cls_score.weight"])


def test_init_by_name_through_training(hub, tmp_path):
    from dynamicdet_cli.data.shapes import make_shapes
    cache, calls = hub
    cache.mkdir(parents=True)
    weights = resnet18_state(seed=3)
    torch.save(weights, cache / "resnet18-f37072fd.pth")
    data = make_shapes(tmp_path / "data", n_train=2, n_val=1, size=64, seed=0).parent
    run = tmp_path / "run"
    result = cli("train-detectors", TINY, "--train-ann", data / "train.json", "--train-images", data / "train",
                 "--out", run, "--no-progress", *R18, "--set", "train.batch_size=2", "--set", "train.workers=0",
                 "--epochs", 1, "--lr", 0, "--init", "torchvision:resnet18")
    assert result.exit_code == 0, result.output
    assert calls == []
    trained = torch.load(run / "last.pt", weights_only=True)["detector"]
    assert torch.equal(trained["backbone1.stages.2.0.conv1.weight"], weights["layer2.0.conv1.weight"])
