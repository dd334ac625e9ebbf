"""The checkpoint format: round trip, refusal of unsafe or damaged files, atomic writes."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from dynamicdet_cli.checkpoint import store as ckpt_mod
from dataclasses import FrozenInstanceError, replace

from dynamicdet_cli.checkpoint.store import (
    FORMAT_VERSION,
    load_checkpoint,
    model_from_checkpoint,
    new_checkpoint,
    router_state,
    save_checkpoint,
    write_checkpoint_dict,
)
from dynamicdet_cli.checkpoint.types import Checkpoint, LatencyRecord, OperatingPoint
from dynamicdet_cli.config.recipe import Recipe
from dynamicdet_cli.core.errors import DynamicDetError

CLASSES = ["circle", "square", "triangle", "star", "cross"]


class NotWeights:
    """Any class outside torch's weights-only allowlist: loading it would run its module's code."""


@pytest.fixture
def ckpt(tiny_recipe, tiny_model) -> Checkpoint:
    c = new_checkpoint(tiny_recipe, CLASSES, [1, 2, 3, 4, 5], tiny_model)
    return replace(c, router=router_state(tiny_model))


@pytest.fixture
def saved(ckpt, tmp_path):
    return save_checkpoint(ckpt, tmp_path / "m.pt")


def test_round_trip_is_bit_identical(tiny_model, saved, images):
    loaded = load_checkpoint(saved)
    assert isinstance(loaded, Checkpoint) and isinstance(loaded.recipe, Recipe) and loaded.classes == tuple(CLASSES)
    assert torch.load(saved, weights_only=True)["version"] == FORMAT_VERSION
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
    c = new_checkpoint(tiny_recipe, CLASSES, [1, 2, 3, 4, 5], tiny_model)
    assert c.router is None
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
    with pytest.raises(DynamicDetError, match=r"junk.pt: truncated or corrupt checkpoint \(not a torch zip archive\)"):
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
    path = write_checkpoint_dict(dict(ckpt.to_dict(), version=FORMAT_VERSION + 1), tmp_path / "future.pt")
    with pytest.raises(DynamicDetError, match="newer.*upgrade"):
        load_checkpoint(path)


def test_missing_keys_are_refused(ckpt, tmp_path):
    damaged = {k: v for k, v in ckpt.to_dict().items() if k != "operating_points"}
    path = write_checkpoint_dict(damaged, tmp_path / "damaged.pt")
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
        save_checkpoint(replace(ckpt, classes=("other",) * 5), saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]
    monkeypatch.undo()
    assert load_checkpoint(saved).classes == tuple(CLASSES)


def test_save_creates_missing_folders(ckpt, tmp_path):
    path = save_checkpoint(ckpt, tmp_path / "a" / "b" / "m.pt")
    assert torch.load(path, weights_only=True)["format"] == ckpt_mod.FORMAT_NAME and load_checkpoint(path).classes


def test_the_checkpoint_is_typed_frozen_data_that_round_trips(ckpt, tmp_path):
    measured = LatencyRecord("cpu", 8, 64, 2, 10.0, 20.0, curve_ms=((0.5, 15.0),), repeats=3, spread_pct=2.0)
    point = OperatingPoint(0.4, 0.5, 15.0, 15.0, **{k: getattr(measured, k) for k in
                                                    ("device", "batch_size", "image_size", "threads", "dtype", "malloc")})
    full = replace(ckpt, latency=(measured,), operating_points={"default": point, "half": OperatingPoint(0.3, 0.5)})
    with pytest.raises(FrozenInstanceError):
        full.classes = ("x",)  # a change is a new value, never an edit in place
    loaded = load_checkpoint(save_checkpoint(full, tmp_path / "full.pt"))
    assert loaded.latency == (measured,) and loaded.operating_points == full.operating_points
    assert loaded.recipe == ckpt.recipe and loaded.category_ids == (1, 2, 3, 4, 5)
    assert loaded.operating_points["half"].has_regime is False and point.has_regime


def test_an_older_file_without_dtype_or_malloc_takes_the_one_default(ckpt, tmp_path):
    """Defaults live in types.py only: a latency record written before dtype and malloc were
    stored reads as float32 and malloc default, without a second default where it is read."""
    raw = ckpt.to_dict()
    raw["latency"] = [{"device": "cpu", "batch_size": 8, "image_size": 64, "threads": 2, "easy_ms": 1.0, "hard_ms": 2.0}]
    loaded = load_checkpoint(write_checkpoint_dict(raw, tmp_path / "old.pt"))
    (record,) = loaded.latency
    assert (record.dtype, record.malloc, record.curve_ms, record.spread_pct) == ("float32", "default", (), None)
