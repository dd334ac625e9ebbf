"""Data-loader workers fit the cores: a recipe written for a GPU server's cores runs on a laptop."""

from __future__ import annotations

import torch

from dynamicdet_cli.core import cpus
from dynamicdet_cli.config.recipe import TrainConfig
from dynamicdet_cli.train import loop
from dynamicdet_cli.train.distributed import Dist


def test_workers_are_at_most_this_process_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(cpus, "usable_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert [cpus.loader_workers(n) for n in (0, 2, 8, 64)] == [0, 2, 8, 16]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's processes on this machine share its cores
    assert [cpus.loader_workers(n) for n in (0, 2, 8)] == [0, 2, 4]
    monkeypatch.setattr(cpus, "usable_cores", lambda: 2)
    assert cpus.loader_workers(8) == 0  # half a core each: the process loads its own data


def test_the_training_loader_of_a_many_worker_recipe_fits_this_machine(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    dataset = torch.utils.data.TensorDataset(torch.zeros(4, 1))
    loader = loop._train_loader(dataset, TrainConfig(workers=64), Dist(), epoch=0)
    # torch warns, once the loader starts, that more workers than cores may freeze
    assert 0 < loader.num_workers == min(64, cpus.usable_cores())
