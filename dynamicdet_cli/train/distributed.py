"""Training processes: this process's place among torchrun's processes, its device, and
what they share (the batch, the losses, the cores while rank 0 evaluates).

Without torchrun there is one process (Dist() with world_size 1) and every function here
is a no-op or an identity. Under torchrun: gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dynamicdet_cli.core.cpus import local_processes
from dynamicdet_cli.core.errors import DynamicDetError

PROCESS_GROUP_TIMEOUT_S = 3 * 3600  # how long a process waits at a barrier or collective


@dataclass(frozen=True)
class Dist:
    """This process's place among the training processes (one when not under torchrun)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


DEVICE_ENV = "DYNAMICDET_DEVICE"  # what --device auto means on this machine, when set


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto', 'cpu', 'cuda' or 'cuda:N' -> a device that exists, or a clear error.

    'auto' (every command's default) is $DYNAMICDET_DEVICE when that is set, else CUDA where
    there is a GPU (this process's, under torchrun), else the CPU: a user with a GPU trains on it
    without asking, and one without never meets a CUDA error."""
    asked, choices = f"--device {name}", "auto, cpu, cuda or cuda:N"
    if name == "auto" and os.environ.get(DEVICE_ENV, "").strip():
        name = os.environ[DEVICE_ENV].strip()
        asked, choices = f"{DEVICE_ENV}={name}", "cpu, cuda or cuda:N"
    elif name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not name.startswith("cuda"):
        raise DynamicDetError(f"{asked}: expected {choices}")
    if not torch.cuda.is_available():
        raise DynamicDetError(f"{asked}: CUDA is not available on this machine; use cpu")
    index = int(name.split(":")[1]) if ":" in name else local_rank
    if index >= torch.cuda.device_count():
        raise DynamicDetError(f"{asked}: only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun process group if launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    env = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name, env.local_rank)
    if env.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Rank 0 evaluates alone at the end of an epoch while the others wait at a barrier:
        # NCCL's default 10-minute timeout would end the job during a COCO-sized evaluation.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=PROCESS_GROUP_TIMEOUT_S))
    return env, device


def leave_distributed() -> None:
    """Leave the process group after a finished run (NCCL warns at exit otherwise); a no-op
    outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def process_batch_size(batch_size: int, env: Dist) -> int:
    """Images per step on this process: the recipe's batch split evenly across processes."""
    if batch_size % env.world_size:
        raise DynamicDetError(f"train.batch_size={batch_size} (images per step in all) does not split evenly "
                              f"across {env.world_size} processes; use a multiple of {env.world_size}")
    return batch_size // env.world_size


def mean_over_processes(losses: dict[str, torch.Tensor], env: Dist) -> dict[str, float]:
    """Mean of each loss part over processes, as floats (one all_reduce for all parts)."""
    keys = sorted(losses)
    values = torch.stack([losses[k].detach().float() for k in keys])
    if env.enabled:
        dist.all_reduce(values)
        values /= env.world_size
    return dict(zip(keys, values.tolist()))


@contextmanager
def evaluation_threads(env: Dist, device: torch.device):
    """Rank 0 evaluates alone while the other processes wait at the barrier: on CPU it borrows
    their threads (torchrun's LOCAL_WORLD_SIZE processes share this machine's cores)."""
    threads = torch.get_num_threads()
    borrowed = threads * local_processes() if env.enabled else threads
    if device.type == "cpu" and borrowed > threads:
        torch.set_num_threads(borrowed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
