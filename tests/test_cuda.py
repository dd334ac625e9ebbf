"""The CUDA path: tests that run only where a CUDA device is present (bench/gpu_check.py runs
them on the GPU machine); elsewhere every test here is skipped with the reason.

- mixed-route batches on CUDA give each image what it gets alone;
- one AMP training step (the trainer's own train_one_epoch) runs its forward in float16,
  gives finite losses and backpropagates a loss scaled by a GradScaler scale above 1;
- the route timing that calibrate uses synchronises with the device before every clock read
  that ends a span of GPU work (CUDA kernels run asynchronously: without it only their
  launches would be timed).
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch.testing import assert_close
from torch.utils.data import DataLoader

from dynamicdet_cli.data.coco import collate
from dynamicdet_cli.train.distributed import Dist
from dynamicdet_cli.speed.latency import measure_routes
from dynamicdet_cli.train.loop import build_optimizer, train_one_epoch
from helpers import routed_at_median

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")

CUDA = torch.device("cuda")


@pytest.fixture
def exact_float32():
    """Full float32 convolutions: with TF32 (torch's default for cuDNN convolutions; matmuls
    are full float32 by default) results move with the batch size by more than float rounding."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yield


def test_mixed_route_batch_on_cuda_matches_each_image_alone(make_model, images, exact_float32):
    model = make_model().to(CUDA)
    mixed, alone, _, _ = routed_at_median(model, [im.to(CUDA) for im in images])
    for got, want in zip(mixed, alone):
        assert got["boxes"].device.type == "cuda"
        assert got["boxes"].shape[0] > 0, "the test needs some detections to compare"
        assert_close(got["difficulty"], want["difficulty"], rtol=1e-4, atol=1e-5)
        for key in ("boxes", "scores", "labels"):
            assert_close(got[key], want[key], rtol=1e-4, atol=1e-3)


class RecordingScaler(torch.amp.GradScaler):
    """A GradScaler that records each loss it scales and the scaled value."""

    def __init__(self, init_scale: float = 2.0 ** 10):
        # Below torch's 65536: with fresh weights a gradient times 65536 can pass float16's
        # range, and the scaler then (rightly) skips the step this test checks was taken.
        super().__init__("cuda", init_scale=init_scale)
        self.scaled: list[tuple[float, float]] = []

    def scale(self, outputs):
        scaled = super().scale(outputs)
        self.scaled.append((float(outputs.detach()), float(scaled.detach())))
        return scaled


def test_amp_training_step_on_cuda_is_finite_and_scaled(make_model, shapes):
    train_set, _ = shapes
    model = make_model().to(CUDA).train()
    model.router.requires_grad_(False)  # as train-detectors: step 1 trains the detectors only
    dtypes = []
    model.backbone1.register_forward_hook(lambda m, i, out: dtypes.extend(v.dtype for v in out.values()))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = RecordingScaler()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loader = DataLoader(train_set, batch_size=4, collate_fn=collate)
    stats = train_one_epoch(model, loader, optimizer, scheduler, scaler, CUDA, epoch=0, env=Dist(),
                            amp=True, max_steps=1)
    assert stats["steps"] == 1
    assert torch.float16 in dtypes, f"backbone 1 ran in {set(dtypes)}, not float16"
    assert len(scaler.scaled) == 1
    loss, scaled = scaler.scaled[0]
    assert math.isfinite(loss) and loss > 0
    assert scaler.get_scale() > 1
    assert scaled == pytest.approx(loss * 1024.0, rel=1e-3)  # the scaler's initial scale
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert moved, "the optimizer step was skipped (non-finite gradients)"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_amp_optimizer_of_the_recipe_on_cuda(make_model, shapes, tiny_recipe):
    """The recipe's own optimizer (build_optimizer) through two AMP steps: finite losses."""
    train_set, _ = shapes
    model = make_model().to(CUDA).train()
    model.router.requires_grad_(False)
    optimizer = build_optimizer(model, tiny_recipe.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    loader = DataLoader(train_set, batch_size=4, collate_fn=collate)
    stats = train_one_epoch(model, loader, optimizer, scheduler, torch.amp.GradScaler("cuda"), CUDA, epoch=0,
                            env=Dist(), amp=True)
    assert stats["steps"] == 3
    assert all(math.isfinite(v) for k, v in stats.items() if k.startswith(("d1/", "d2/", "loss")))


def test_route_timing_on_cuda_synchronises_before_reading_the_clock(make_model, make_images, monkeypatch):
    model = make_model().to(CUDA)
    events: list[str] = []
    real_sync, real_clock = torch.cuda.synchronize, time.perf_counter

    def sync(*args, **kwargs):
        events.append("sync")
        return real_sync(*args, **kwargs)

    def clock():
        events.append("clock")
        return real_clock()

    for part in (model.backbone1, model.router, model.head1, model.head2, model.composite):
        part.register_forward_pre_hook(lambda *_: events.append("work"))
    monkeypatch.setattr(torch.cuda, "synchronize", sync)
    monkeypatch.setattr(time, "perf_counter", clock)
    images = [im.to(CUDA) for im in make_images(6)]
    measured = measure_routes(model, CUDA, images, batch_size=2, warmup=1, repeats=2, mixed_taus=[0.5])
    monkeypatch.undo()

    assert measured.easy_ms > 0 and measured.hard_ms > 0
    # the spans were read through time.perf_counter (else the order below would check nothing)
    assert events.count("work") > 0 and events.count("sync") > 0 and events.count("clock") >= 2
    for i, event in enumerate(events):
        if event == "clock":
            previous = [e for e in events[:i] if e != "clock"]
            assert not previous or previous[-1] == "sync", f"clock read {i} follows GPU work without a synchronize"
