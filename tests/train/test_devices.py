"""The device handling of a training step, checked without a GPU (issue 12, class 11).

No machine of this project has CUDA, so a training step always runs on the CPU, where a
forgotten `.to(device)` goes unnoticed. Here `Tensor.to` is spied on: every tensor it
returns remembers the device it was sent to, and a model double refuses any image or target
tensor that was not sent to the step's device. The step under test is the real
`train_one_epoch`, with the same autocast and GradScaler calls as on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynamicdet_cli.train.distributed import Dist
from dynamicdet_cli.train.loop import train_one_epoch


class DeviceCheckingModel(nn.Module):
    """Returns a loss dict like DynamicDetector's, after checking where each input was sent."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.weight = nn.Parameter(torch.ones(()))
        self.seen = 0

    def forward(self, images, targets):
        for tensor in [*images, *(v for t in targets for v in t.values() if torch.is_tensor(v))]:
            assert getattr(tensor, "sent_to", None) == self.device, "a tensor reached the model unmoved"
        self.seen += len(images)
        loss = self.weight * sum(im.float().mean() for im in images)
        return {"loss": loss, "d1/total": loss.detach(), "d2/total": loss.detach()}


@pytest.fixture
def spy_to(monkeypatch):
    real = torch.Tensor.to

    def to(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        device = kwargs.get("device", args[0] if args else None)
        if isinstance(device, (str, torch.device)):
            out.sent_to = torch.device(device)
        return out

    monkeypatch.setattr(torch.Tensor, "to", to)


@pytest.mark.parametrize("amp", [False, True])
def test_every_tensor_of_a_step_is_sent_to_the_device(spy_to, amp):
    device = torch.device("cpu")
    model = DeviceCheckingModel(device)
    batch = ([torch.rand(3, 8, 8), torch.rand(3, 8, 8)],
             [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([1]), "image_id": 1},
              {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 2}])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = train_one_epoch(model, [batch, batch], optimizer, scheduler, scaler, device, 0, Dist(), amp=amp,
                            grad_clip=1.0)
    assert stats["complete"] and stats["steps"] == 2 and model.seen == 4
    assert model.weight.item() != 1.0  # the step reached the optimizer


# ----------------------------------------------------------------------------- --device auto

def test_auto_is_a_gpu_where_there_is_one_else_the_cpu(monkeypatch):
    """Every command's default: a user with a GPU trains on it without asking; one without
    gets the CPU, never a CUDA error. $DYNAMICDET_DEVICE, when set, says what auto means."""
    from dynamicdet_cli.train.distributed import DEVICE_ENV, resolve_device
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)  # torchrun's second process
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # a device named outright is not overridden


def test_auto_names_what_went_wrong(monkeypatch):
    from dynamicdet_cli.core.errors import DynamicDetError
    from dynamicdet_cli.train.distributed import DEVICE_ENV, resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(DynamicDetError, match=f"{DEVICE_ENV}=cuda: CUDA is not available"):
        resolve_device("auto")
    for wrong in ("auto", "gpu"):
        monkeypatch.setenv(DEVICE_ENV, wrong)
        with pytest.raises(DynamicDetError, match=f"{DEVICE_ENV}={wrong}: expected cpu, cuda or cuda:N"):
            resolve_device("auto")
    monkeypatch.delenv(DEVICE_ENV)
    with pytest.raises(DynamicDetError, match="--device gpu: expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
