"""Bad inputs, second round (issue 25): COCO files as real tools write them, weights that went
bad with a valid checksum, writers that collide, extreme image shapes, misleading messages.

One test per class, through the `dynamicdet` console-script entry point (`cli.main`), each
asserting exit status 2, exactly one `error:` line on stderr, no traceback, and every input
byte-identical afterwards (test_bad_inputs.Cli.fails). Tiny recipe, shapes at 64 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynamicdet_cli.data.shapes import make_shapes
from dynamicdet_cli.recipe import load_recipe
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
    data = tmp_path / name
    make_shapes(data, n_train=1, n_val=2, size=64, seed=0)
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
