"""The checkpoint format: round trip, refusal of unsafe or damaged files, atomic writes."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from dynamicdet_cli.checkpoint import store as ckpt_mod
from dynamicdet_cli.checkpoint.store import (
    FORMAT_VERSION,
    load_checkpoint,
    model_from_checkpoint,
    new_checkpoint,
    save_checkpoint,
    store_router,
)
from dynamicdet_cli.core.errors import DynamicDetError
from dynamicdet_cli.config.recipe import recipe_to_dict

CLASSES = ["circle", "square", "triangle", "star", "cross"]


class NotWeights:
    """Any class outside torch's weights-only allowlist: loading it would run its module's code."""


@pytest.fixture
def ckpt(tiny_recipe, tiny_model) -> dict:
    c = new_checkpoint(recipe_to_dict(tiny_recipe), CLASSES, [1, 2, 3, 4, 5], tiny_model)
    store_router(c, tiny_model)
    return c


@pytest.fixture
def saved(ckpt, tmp_path):
    return save_checkpoint(ckpt, tmp_path / "m.pt")


def test_round_trip_is_bit_identical(tiny_model, saved, images):
    loaded = load_checkpoint(saved)
    assert loaded["version"] == FORMAT_VERSION and loaded["classes"] == CLASSES
    model = model_from_checkpoint(loaded).eval()
    want, got = tiny_model.state_dict(), model.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    with torch.no_grad():
        for a, b in zip(model.detect(images[:2], route=0.5), tiny_model.detect(images[:2], route=0.5)):
            assert a["route"] == b["route"]
            for key in ("boxes", "scores", "labels", "difficulty"):
                assert_close(a[key], b[key], rtol=0, atol=0)


def test_fresh_checkpoint_without_router_loads(tiny_recipe, tiny_model, tmp_path):
    c = new_checkpoint(recipe_to_dict(tiny_recipe), CLASSES, [1, 2, 3, 4, 5], tiny_model)
    assert c["router"] is None
    model = model_from_checkpoint(load_checkpoint(save_checkpoint(c, tmp_path / "fresh.pt")))
    want = tiny_model.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("router."):
            assert torch.equal(value, want[key]), key


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "dynamicdet", "version": 1, "payload": NotWeights()}, path)
    with pytest.raises(DynamicDetError, match="pickled"):
        load_checkpoint(path)


def test_loader_uses_weights_only(saved, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(saved)
    assert calls == [True]


def test_truncated_file_is_refused(saved, tmp_path):
    data = saved.read_bytes()
    half = tmp_path / "half.pt"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(DynamicDetError, match="truncated or corrupt"):
        load_checkpoint(half)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n" * 10])
def test_garbage_file_is_refused(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    # Not pinned to "truncated or corrupt": a non-zip text file currently reads as "pickled".
    with pytest.raises(DynamicDetError, match="junk.pt: "):
        load_checkpoint(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(DynamicDetError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_other_torch_file_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(DynamicDetError, match="not a dynamicdet checkpoint"):
        load_checkpoint(path)


def test_newer_format_is_refused(ckpt, tmp_path):
    path = save_checkpoint(dict(ckpt, version=FORMAT_VERSION + 1), tmp_path / "future.pt")
    with pytest.raises(DynamicDetError, match="newer.*upgrade"):
        load_checkpoint(path)


def test_missing_keys_are_refused(ckpt, tmp_path):
    damaged = {k: v for k, v in ckpt.items() if k != "operating_points"}
    path = save_checkpoint(damaged, tmp_path / "damaged.pt")
    with pytest.raises(DynamicDetError, match="missing operating_points"):
        load_checkpoint(path)


def test_save_is_atomic(ckpt, saved, monkeypatch):
    before = saved.read_bytes()

    def broken_save(obj, target, *args, **kwargs):  # writes half a file, then fails
        with open(target, "wb") as fh:
            fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(dict(ckpt, classes=["other"] * 5), saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]
    monkeypatch.undo()
    assert load_checkpoint(saved)["classes"] == CLASSES


def test_save_creates_missing_folders(ckpt, tmp_path):
    path = save_checkpoint(ckpt, tmp_path / "a" / "b" / "m.pt")
    assert load_checkpoint(path)["format"] == ckpt_mod.FORMAT_NAME
