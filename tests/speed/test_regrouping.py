"""RouteBatcher (speed/batcher.py): each route runs on full batches across input batches,
and every image gets what model.detect gives it."""

from __future__ import annotations

import math
import time

import pytest
import torch

from dynamicdet_cli.core import allocator
from dynamicdet_cli.speed.batcher import RouteBatcher, route_stream
from dynamicdet_cli.speed.hold import LatencyHold


def _phi(model, images) -> torch.Tensor:
    with torch.inference_mode():
        return torch.stack([r["difficulty"] for r in model.detect(images, route="easy")])


def _run(model, batches, route, batch_size, regroup=True):
    """Every Done of a stream of (images, keys) batches, and the batcher."""
    batcher = RouteBatcher(model, route, batch_size, regroup)
    done = []
    with torch.inference_mode():
        for images, keys in batches:
            done += batcher.add(images, keys)
        done += batcher.finish()
    return done, batcher


def _same_detection(a: dict, b: dict) -> None:
    assert a["route"] == b["route"]
    assert float(a["difficulty"]) == pytest.approx(float(b["difficulty"]), abs=1e-6)
    assert a["boxes"].shape == b["boxes"].shape
    torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=1e-4)
    assert torch.equal(a["labels"], b["labels"])


@pytest.mark.parametrize("regroup", [True, False])
def test_mixed_sizes_get_what_each_image_gets_alone(tiny_model, regroup):
    """Input batches that mix padded shapes: every image's phi, route and detections are its
    own alone (backbone 1 runs per shape), and the hold controller's scores stay in input order."""
    g = torch.Generator().manual_seed(5)
    sizes = [(64, 64), (32, 64), (64, 32), (32, 64), (64, 64), (64, 32), (32, 64), (64, 64)]
    images = [torch.rand(3, h, w, generator=g) for h, w in sizes]
    with torch.inference_mode():
        alone_phi = torch.stack([tiny_model.detect([im], route="easy")[0]["difficulty"] for im in images])
    tau = float(alone_phi.median())
    batcher = RouteBatcher(tiny_model, tau, 2, regroup)
    done = []
    with torch.inference_mode():
        for i in (0, 4):
            done += batcher.add(images[i:i + 4], range(i, i + 4))
            torch.testing.assert_close(batcher.last_phi, alone_phi[i:i + 4])
        done += batcher.finish()
    assert sorted(d.key for d in done) == list(range(len(images)))
    with torch.inference_mode():
        for d in done:
            _same_detection(d.detection, tiny_model.detect([images[d.key]], route=tau)[0])


def test_regrouped_results_match_detect_and_each_route_runs_full_batches(tiny_model, make_images):
    images = make_images(11, seed=3)
    phi = _phi(tiny_model, images)
    tau = float(phi.median())
    n_hard = int((phi > tau).sum())
    assert 0 < n_hard < len(images)  # the routes mix: otherwise nothing is regrouped
    # input batches of 4, 4, 3; route calls of 3 images
    batches = [(images[i:i + 4], range(i, min(i + 4, len(images)))) for i in range(0, len(images), 4)]
    done, batcher = _run(tiny_model, batches, tau, batch_size=3)

    assert sorted(d.key for d in done) == list(range(len(images)))  # each image exactly once
    with torch.inference_mode():
        for d in done:
            _same_detection(d.detection, tiny_model.detect([images[d.key]], route=tau)[0])
    # each route called ceil(n / 3) times: every call but the last ran 3 images
    assert batcher.calls == {"easy": math.ceil((len(images) - n_hard) / 3), "hard": math.ceil(n_hard / 3)}
    assert batcher.waiting == {}


def test_a_full_batch_comes_out_of_add_and_the_rest_waits_for_finish(tiny_model, make_images):
    images = make_images(8, seed=4)
    phi = _phi(tiny_model, images)
    tau = float(phi.sort().values[3])  # 4 easy, 4 hard
    batcher = RouteBatcher(tiny_model, tau, batch_size=4, regroup=True)
    with torch.inference_mode():
        first = batcher.add(images[:4], range(4))
        second = batcher.add(images[4:], range(4, 8))
        rest = batcher.finish()
    routes = ["hard" if p > tau else "easy" for p in phi.tolist()]
    # a route's images come out as soon as 4 of them wait, never before
    for upto, out in ((4, first), (8, first + second)):
        seen = routes[:upto]
        full = {r for r in ("easy", "hard") if seen.count(r) >= 4}
        assert {d.detection["route"] for d in out} == full
    assert len(first) + len(second) + len(rest) == 8
    assert all(d.detection["route"] == routes[d.key] for d in first + second + rest)


def test_images_of_different_padded_shapes_are_never_stacked(tiny_model, make_images):
    """Wide and tall images pad to different batch shapes: each waits in its own group, and
    the results still match model.detect's."""
    wide = [torch.rand(3, 32, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    tall = [torch.rand(3, 64, 32, generator=torch.Generator().manual_seed(10 + i)) for i in range(3)]
    done, batcher = _run(tiny_model, [(wide, range(3)), (tall, range(3, 6))], "hard", batch_size=4)
    assert batcher.calls["hard"] == 2  # 3 + 3 images, never one call of 4 across the two shapes
    images = wide + tall
    with torch.inference_mode():
        for d in done:
            _same_detection(d.detection, tiny_model.detect([images[d.key]], route="hard")[0])


def test_times_are_shared_out_and_warmup_is_marked(tiny_model, make_images):
    images = make_images(8, seed=5)
    batches = [(images[:4], range(4)), (images[4:], range(4, 8))]
    done, _ = _run(tiny_model, batches, "easy", batch_size=4)
    assert all(d.ms > 0 for d in done)
    warm = {d.key for d in done if d.warmup}
    assert warm == {0, 1, 2, 3}  # the first input batch, which was also the route's first call


def test_a_whole_route_runs_each_input_batch_at_once(tiny_model, make_images):
    """'easy' and 'hard' need no regrouping: each full input batch is one route call."""
    images = make_images(6, seed=6)
    done, batcher = _run(tiny_model, [(images[:3], range(3)), (images[3:], range(3, 6))], "hard", batch_size=3)
    assert batcher.calls == {"easy": 0, "hard": 2}
    assert {d.detection["route"] for d in done} == {"hard"}


def test_bad_arguments(tiny_model, make_images):
    with pytest.raises(ValueError, match="batch size"):
        RouteBatcher(tiny_model, "easy", 0)
    with pytest.raises(ValueError, match="keys"), torch.inference_mode():
        RouteBatcher(tiny_model, "easy", 2).add(make_images(2), [0])


def test_fewer_than_a_batch_waits_per_route_whatever_the_shapes(tiny_model):
    """Each input batch pads to its own shape: no group fills, and still fewer than
    batch_size images wait per route (the oldest group runs as it is)."""
    sizes = [(32, 64), (64, 32), (32, 32), (64, 64), (32, 64), (64, 32)]
    batcher = RouteBatcher(tiny_model, "hard", batch_size=3, regroup=True)
    done = []
    with torch.inference_mode():
        for i, (h, w) in enumerate(sizes):
            images = [torch.rand(3, h, w, generator=torch.Generator().manual_seed(10 * i + j)) for j in range(2)]
            done += batcher.add(images, [(i, 0), (i, 1)])
            assert sum(len(p) for parts in batcher.waiting.values() for p in parts) < 3
        done += batcher.finish()
    assert sorted(d.key for d in done) == [(i, j) for i in range(len(sizes)) for j in range(2)]


def test_the_image_times_add_up_to_the_time_spent(tiny_model, make_images):
    images = make_images(10, seed=7)
    tau = float(_phi(tiny_model, images).median())
    batcher = RouteBatcher(tiny_model, tau, batch_size=4, regroup=True)
    done = []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, 10, 4):
            done += batcher.add(images[i:i + 4], range(i, min(i + 4, 10)))
        done += batcher.finish()
    spent = 1000 * (time.perf_counter() - start)
    total = sum(d.ms for d in done)
    assert total <= spent and total > 0.5 * spent  # only the bookkeeping between timed spans is left out


def test_a_routes_first_call_is_warmup_even_in_a_later_batch(tiny_model, make_images):
    """Warm-up: the first input batch, and each route's first call wherever it falls; a batch
    can also take its own route (add's `route`)."""
    images = make_images(6, seed=8)
    batcher = RouteBatcher(tiny_model, "easy", batch_size=2, regroup=True)
    with torch.inference_mode():
        first = batcher.add(images[:2], [0, 1])                    # easy, first batch
        second = batcher.add(images[2:4], [2, 3])                  # easy, a later call
        third = batcher.add(images[4:], [4, 5], route="hard")      # hard's first call
    assert [d.warmup for d in first] == [True, True]
    assert [d.warmup for d in second] == [False, False]
    assert [d.warmup for d in third] == [True, True]
    assert {d.detection["route"] for d in third} == {"hard"}


def test_without_regrouping_each_input_batch_runs_at_once(tiny_model, make_images):
    images = make_images(8, seed=9)
    phi = _phi(tiny_model, images)
    tau = float(phi.median())
    batcher = RouteBatcher(tiny_model, tau, batch_size=4, regroup=False)
    with torch.inference_mode():
        first = batcher.add(images[:4], range(4))
        assert sorted(d.key for d in first) == [0, 1, 2, 3] and batcher.waiting == {}
        for d in first:
            _same_detection(d.detection, tiny_model.detect([images[d.key]], route=tau)[0])
        assert len(batcher.add(images[4:], range(4, 8))) == 4 and batcher.finish() == []


@pytest.mark.parametrize("malloc, threads, regroups", [
    ("keep-freed", 1, True), ("keep-freed", 2, True), ("default", 1, False), ("default", 2, True),
])
def test_regrouping_is_the_default_where_it_was_measured_to_pay(tiny_model, monkeypatch, malloc, threads, regroups):
    """On the CPU it pays at any thread count when malloc keeps freed memory; under glibc's
    default malloc only with more than one thread (regrouping.py's figures)."""
    monkeypatch.setattr(allocator, "_state", malloc)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert RouteBatcher(tiny_model, "easy", 8).regroup is regroups
        assert RouteBatcher(tiny_model, "easy", 8, regroup=False).regroup is False
    finally:
        torch.set_num_threads(before)


def test_images_waiting_for_the_easy_route_keep_no_pixels(tiny_model, make_images):
    """Detector 1 reads the batch's shape only: easy images wait with their features alone,
    hard ones (backbone 2 reads the pixels) with their pixels too."""
    images = make_images(4, seed=5)
    phi = _phi(tiny_model, images)
    tau = float(phi.median())
    batcher = RouteBatcher(tiny_model, tau, batch_size=8, regroup=True)
    with torch.inference_mode():
        assert batcher.add(images, range(4)) == []  # fewer than 8 per route: everything waits
    waiting = {route: parts[0] for (route, _), parts in batcher.waiting.items()}
    easy, hard = waiting["easy"], waiting["hard"]
    assert easy.tensors.shape == (len(easy), *hard.tensors.shape[1:])
    assert easy.tensors.untyped_storage().nbytes() == easy.tensors.element_size()  # one zero
    assert hard.tensors.untyped_storage().nbytes() >= hard.tensors.numel() * hard.tensors.element_size()
    with torch.inference_mode():
        done = batcher.finish()
        for d in done:
            _same_detection(d.detection, tiny_model.detect([images[d.key]], route=tau)[0])


def test_route_stream_times_the_batchers_work_only_and_tells_the_hold_every_image(tiny_model, make_images):
    """predict and the API share route_stream: with a held target the controller is told of
    every image once, and the caller's own work between batches (reading, writing) is not
    charged to the model. The clock moves only in the caller's work here, so whatever the
    controller counted cost nothing."""
    images = make_images(24, seed=5)
    now = [0.0]
    tau = float(_phi(tiny_model, images).median())
    hold = LatencyHold(15.0, 10.0, 20.0, tau, clock=lambda: now[0])
    batcher = RouteBatcher(tiny_model, tau, 4, regroup=True)
    batches = [(images[i:i + 4], list(range(i, i + 4))) for i in range(0, 24, 4)]
    keys = []
    with torch.inference_mode():
        for done in route_stream(batcher, batches, hold):
            keys += [d.key for d in done]
            now[0] += 5.0  # the caller's work: 5 s after every step
    assert sorted(keys) == list(range(24))
    assert hold.finished == 24
    report = hold.report()
    assert report.images > 0 and report.achieved_ms == 0.0

    # without a controller: every image once, routed at the batcher's threshold
    with torch.inference_mode():
        done = [d for step in route_stream(RouteBatcher(tiny_model, tau, 4), batches) for d in step]
    assert sorted(d.key for d in done) == list(range(24))
    assert all((d.detection["route"] == "hard") == (float(d.detection["difficulty"]) > tau) for d in done)
