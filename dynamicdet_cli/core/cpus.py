"""The CPU cores this process may use, how many data-loader workers fit on them, and this
process's place among the ones torchrun started (read from its environment: no torch import)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def is_rank_zero() -> bool:
    """Whether this is torchrun's rank 0 (or no torchrun): the process that talks and writes."""
    return os.environ.get("RANK", "0") in ("", "0")


def local_processes() -> int:
    """How many training processes torchrun started on this machine (LOCAL_WORLD_SIZE; 1 without)."""
    return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)


def loader_workers(requested: int) -> int:
    """The recipe's `workers`, at most this process's share of the cores: the usable cores divided
    among the processes torchrun started on this machine (LOCAL_WORLD_SIZE; 1 without torchrun).
    More worker processes than cores only queue for them (and torch warns that they may freeze);
    a recipe written for a GPU server's cores still runs on a laptop."""
    return max(0, min(requested, usable_cores() // local_processes()))
