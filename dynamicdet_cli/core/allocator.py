"""Keeping freed memory in the process: what CPU inference latency depends on most after
the model.

glibc's malloc hands large blocks (above a threshold that starts at 128 KiB) to the kernel
with mmap, and gives the top of its heap back once more than a trim threshold is free. A
detector's forward pass allocates and frees many feature maps of a few hundred KiB to a
few MiB, so with those defaults a large share of its allocations get pages the kernel must
map and zero afresh, and how many depends on which tensors happen to be alive: images
waiting for their route (speed/batcher.py) changed it. Measured on the demo model
(bench/bench_malloc.py), both routes ran faster with this setting in every process and the
processes spent a fraction of the time in the kernel; setting either threshold alone was
slower than the default (the other stops adapting); training speed moved within run-to-run
noise. Figures, command and date: docs/benchmarks.md#malloc.

So on glibc the package raises the mmap threshold to its maximum (32 MiB on 64-bit) and
keeps up to 1 GiB free at the heap's top, as jemalloc or tcmalloc would (PyTorch's CPU
tuning guide recommends those for the same reason). The price: the process keeps memory
it freed, up to its peak. DYNAMICDET_MALLOC=default leaves malloc as it is (for a process
that embeds the package and wants its own settings, or to measure against). Latencies are
stored with the setting they were measured under (regime.py), since it moves them.

Not detected: a malloc preloaded in glibc's place (LD_PRELOAD of jemalloc or tcmalloc). The
mallopt calls then still succeed on glibc's unused allocator and the setting reads
keep-freed; such an allocator keeps freed memory too, which is what the name records.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "DYNAMICDET_MALLOC"
KEEP_FREED, DEFAULT = "keep-freed", "default"
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)
_TRIM_THRESHOLD = 1024 * 1024 * 1024
_TOP_PAD = 64 * 1024 * 1024

_state = DEFAULT


def keep_freed_memory() -> str:
    """Apply the setting above, once per process, unless DYNAMICDET_MALLOC=default or the C
    library is not glibc. Returns the setting now in force (also `setting()`)."""
    global _state
    asked = os.environ.get(ENV, KEEP_FREED)
    if _state == KEEP_FREED or asked == DEFAULT:
        return _state
    if asked != KEEP_FREED:  # at start-up (the CLI's entry, api.load), where an exception would be a traceback
        sys.stderr.write(f"warning: {ENV}={asked!r} is neither {KEEP_FREED} nor {DEFAULT}; using {KEEP_FREED}\n")
    if not _is_glibc():
        return _state
    mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols, glibc's among them
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The mmap threshold first: it is the one glibc may refuse (32-bit, other limits), and
    # then nothing is changed.
    if all(mallopt(option, value) == 1 for option, value in
           ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD))):
        _state = KEEP_FREED
    return _state


def _is_glibc() -> bool:
    """Without platform.libc_ver() or ctypes.util.find_library, which read the interpreter's
    binary or start ldconfig: this runs at every start of the CLI and every api.load."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a POSIX system, or no such name
        return False


def opted_out() -> bool:
    """Whether this process was asked to leave malloc alone (DYNAMICDET_MALLOC=default)."""
    return os.environ.get(ENV) == DEFAULT


def setting() -> str:
    """"keep-freed" when keep_freed_memory() took effect in this process, else "default"."""
    return _state
