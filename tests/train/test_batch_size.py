"""train.batch_size: what its help text and the base recipe say is what the training loader does.

The key once read "images per step per process" in the recipe's help and the base recipe while
the code split it across processes; these tests hold the words to the behaviour.
"""

from __future__ import annotations

import re
from pathlib import Path

from dynamicdet_cli.config.keys_doc import recipe_keys
from dynamicdet_cli.config.recipe import load_recipe
from dynamicdet_cli.train.distributed import Dist
from dynamicdet_cli.train.loop import _train_loader

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _base_recipe_comment(key: str) -> str:
    """The comment on `key`'s line in the base recipe (a leaf key of the train section)."""
    text = (RECIPES / "dy-faster-rcnn-r50-fpn.yaml").read_text(encoding="utf-8")
    section = text.split("\ntrain:", 1)[1]
    return re.search(rf"^  {key}:[^#\n]*#(.*)$", section, re.M).group(1)


def test_the_help_text_says_the_batch_is_all_processes_together():
    help_text = {k.key: k.help for k in recipe_keys()}["train.batch_size"]
    for words in (help_text, _base_recipe_comment("batch_size")):
        assert "all torchrun processes together" in words, words
        assert "per process" not in words, words


def test_two_processes_each_load_half_the_recipe_batch_and_take_the_same_steps():
    cfg = load_recipe(RECIPES / "shapes-tiny.yaml").train  # batch_size 8
    dataset = list(range(64))
    alone = _train_loader(dataset, cfg, Dist(), epoch=0)
    ranks = [_train_loader(dataset, cfg, Dist(rank=r, world_size=2), epoch=0) for r in (0, 1)]
    assert alone.batch_size == cfg.batch_size
    assert [loader.batch_size for loader in ranks] == [cfg.batch_size // 2] * 2
    # images of one optimizer step over both processes = the recipe's batch, so the epoch has
    # as many steps (and the learning rate means the same) as on one process
    assert sum(loader.batch_size for loader in ranks) == cfg.batch_size
    assert [len(loader) for loader in ranks] == [len(alone)] * 2


def test_each_process_draws_its_own_augmentation_and_rank_0_draws_a_single_processs():
    """Two processes seeded alike would flip and jitter their i-th images alike; rank 0 keeps the
    single process's seed, so a one-process run (and its resume) draws what it did."""
    cfg = load_recipe(RECIPES / "shapes-tiny.yaml").train
    dataset = list(range(64))
    alone = _train_loader(dataset, cfg, Dist(), epoch=3)
    ranks = [_train_loader(dataset, cfg, Dist(rank=r, world_size=2), epoch=3) for r in (0, 1)]
    seeds = [loader.generator.initial_seed() for loader in (alone, *ranks)]
    assert seeds[0] == seeds[1] != seeds[2]
    assert _train_loader(dataset, cfg, Dist(), epoch=4).generator.initial_seed() != seeds[0]
