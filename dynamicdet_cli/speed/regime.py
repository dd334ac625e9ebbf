"""The regime a latency holds in, and finding the measurement of a run's regime.

A route's latency per image is a property of how the model runs, not of the model alone:
the device, the batch size (a batch of 8 costs far less than 8 batches of 1), the input size
(the recipe's test size, which every image is resized to), the CPU thread count, the dtype,
and on the CPU how malloc treats freed memory (allocator.py: under glibc's default the demo
model's routes take markedly longer, docs/benchmarks.md#malloc). A measurement, and every operating point derived
from it, holds for its regime only.
So `predict` / `evaluate --latency` look up the measurement of the regime they run in, and
when none is stored they say which are and how to measure this one: never another's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynamicdet_cli.core import allocator
from dynamicdet_cli.checkpoint.types import REGIME_KEYS, Checkpoint, LatencyRecord, OperatingPoint


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


@dataclass(frozen=True)
class Regime:
    """The conditions a latency is measured or used under.

    device: device_name(), "cpu" or "cuda:<GPU name>"; image_size: the model's test input
    side (transform.min_size[-1]); threads: torch.get_num_threads(), None when unknown (a
    point stored without it); dtype: the model's parameter dtype; malloc: allocator.setting(),
    "default" for records stored before it was (they were measured so). device_arg is how
    `--device` asks for this device; it is not part of the regime's identity.
    """

    device: str
    batch_size: int
    image_size: int
    threads: int | None
    dtype: str = "float32"
    malloc: str = allocator.DEFAULT
    device_arg: str = field(default="cpu", compare=False)

    @classmethod
    def of_run(cls, model: torch.nn.Module, device: torch.device, batch_size: int) -> Regime:
        """The regime `model` runs in on `device` at `batch_size`, with the current thread count."""
        dtype = next(model.parameters()).dtype
        return cls(device_name(device), int(batch_size), int(model.transform.min_size[-1]),
                   torch.get_num_threads(), str(dtype).removeprefix("torch."), allocator.setting(), str(device))

    @classmethod
    def of_record(cls, record: LatencyRecord | OperatingPoint) -> Regime:
        """The regime of a stored measurement, or of a point stored with one. Records written
        before the dtype was stored are float32: inference had no other dtype then."""
        device = record.device
        return cls(device, int(record.batch_size), int(record.image_size), record.threads,
                   record.dtype or "float32", record.malloc or allocator.DEFAULT,
                   "cpu" if device == "cpu" else "cuda")

    def record(self) -> dict:
        """The keys stored with a measurement or a latency-bound operating point."""
        return {k: getattr(self, k) for k in REGIME_KEYS}

    def key(self) -> tuple:
        """What must be equal for a latency to carry over. Threads and malloc count on the CPU
        only: on a GPU they run the little host-side work, not the model."""
        cpu = self.device == "cpu"
        return (self.device, self.batch_size, self.image_size, self.threads if cpu else None, self.dtype,
                self.malloc if cpu else None)

    def matches(self, record: LatencyRecord | OperatingPoint) -> bool:
        if isinstance(record, OperatingPoint) and not record.has_regime:
            return False
        return Regime.of_record(record).key() == self.key()

    def describe(self) -> str:
        threads = "? threads" if self.threads is None else f"{self.threads} thread{'s' * (self.threads != 1)}"
        malloc = f", malloc {self.malloc}" if self.device == "cpu" else ""
        return f"{self.device}, batch {self.batch_size}, {self.image_size} px, {threads}, {self.dtype}{malloc}"

    def calibrate_command(self, checkpoint: str) -> str:
        """The `calibrate` command that measures this regime (and stores only the measurement)."""
        threads = f" --threads {self.threads}" if self.threads else ""
        dtype = "" if self.dtype == "float32" else f"  # in {self.dtype}"
        env = f"{allocator.ENV}={allocator.DEFAULT} " if self.device == "cpu" and allocator.opted_out() else ""
        return (f"{env}dynamicdet calibrate {checkpoint} --device {self.device_arg} "
                f"--batch-size {self.batch_size}{threads}{dtype}")


def find_latency(ckpt: Checkpoint, regime: Regime) -> LatencyRecord | None:
    """The latest measurement stored for `regime`, or None."""
    for record in reversed(ckpt.latency):
        if regime.matches(record):
            return record
    return None


def stored_regimes(ckpt: Checkpoint) -> str:
    """The regimes of the stored measurements, '; '-separated ('none' when there are none)."""
    described = dict.fromkeys(Regime.of_record(m).describe() for m in ckpt.latency)
    return "; ".join(described) or "none"


def missing_latency(ckpt: Checkpoint, regime: Regime, checkpoint: str) -> str:
    """One line: no latency for this run's regime, which are stored, and how to measure it."""
    return (f"no latency measured for this run ({regime.describe()}); stored: {stored_regimes(ckpt)}. "
            f"Measure this one with `{regime.calibrate_command(checkpoint)}`")
