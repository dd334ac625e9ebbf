"""Cost of refusing NaN/inf weights on load: `load_checkpoint` against its finite check alone.

Every command checks that each floating tensor of a checkpoint is finite when it loads it
(checkpoint.first_non_finite). This times, on one checkpoint, the whole `load_checkpoint`
(read, checksum, field checks, finite check) and the finite check alone, alternated, after
one warm-up load (the file in the page cache, as on a second run).

    dynamicdet build recipes/dy-faster-rcnn-r50-fpn.yaml -o /tmp/r50.pt --backbone-weights ''
    .venv/bin/python bench/bench_finite_check.py /tmp/r50.pt [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dynamicdet_cli.checkpoint.store import first_non_finite, load_checkpoint
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    n = sum(t.numel() for t in ckpt.detector.values())
    loads, checks = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ckpt = load_checkpoint(args.checkpoint)
        loads.append(time.perf_counter() - start)
        start = time.perf_counter()
        assert first_non_finite(ckpt) is None
        checks.append(time.perf_counter() - start)
    for name, xs in (("load_checkpoint (with the check)", loads), ("finite check alone", checks)):
        print(f"{name}: median {statistics.median(xs):.3f} s, min {min(xs):.3f} s, max {max(xs):.3f} s")
    print(f"{n / 1e6:.1f} M detector weights, {torch.get_num_threads()} thread(s); the check is "
          f"{100 * statistics.median(checks) / statistics.median(loads):.0f}% of the median load")


if __name__ == "__main__":
    main()
