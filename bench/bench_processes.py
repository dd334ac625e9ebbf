"""Joint training on a multi-core CPU: one process with T threads, or T torchrun processes of
one thread each?

On a small model most operators are too short for torch's intra-op threads to pay (figures:
docs/benchmarks.md#training-speed), while separate processes each keep a core busy and only meet for the gradient
all-reduce. This runs `dynamicdet train-detectors` for one epoch both ways on the same shapes
images with the same recipe (train.batch_size is the batch of all processes, so both take the
same optimizer steps), alternating A B B A to cancel drift, and prints each run's training
images/s (from metrics.jsonl: the epoch's steps only, no start-up or evaluation) and the ratio.

    .venv/bin/python bench/bench_processes.py [--recipe recipes/shapes-tiny.yaml] [--images 512] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynamicdet_cli.data.shapes import make_shapes  # noqa: E402
from dynamicdet_cli.core.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the CLI and dynamicdet_cli.load do: latencies are measured and promised under it


def one_epoch(recipe: str, data: Path, run: Path, cores: int, processes: int) -> float:
    """Training images/s of one epoch of train-detectors with `processes` processes."""
    threads = cores // processes
    cli = ["-m", "dynamicdet_cli", "train-detectors", recipe, "--train-ann", str(data / "train.json"),
           "--train-images", str(data / "train"), "--out", str(run), "--epochs", "1", "--no-progress"]
    if processes == 1:
        command = [sys.executable, *cli, "--threads", str(threads)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(processes), *cli]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    return record["images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/shapes-tiny.yaml")
    ap.add_argument("--images", type=int, default=512, help="training images (one epoch each run)")
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_shapes(data, n_train=args.images, n_val=0, size=128, seed=0)
        rates: dict[int, list[float]] = {1: [], args.cores: []}
        for i, processes in enumerate([1, args.cores, args.cores, 1]):  # A B B A
            rate = one_epoch(args.recipe, data, Path(tmp) / f"run{i}", args.cores, processes)
            rates[processes].append(rate)
            print(f"  run {i + 1}: {processes} process(es) x {args.cores // processes} thread(s)  "
                  f"{rate:6.1f} images/s", flush=True)
    single, several = statistics.mean(rates[1]), statistics.mean(rates[args.cores])
    print(f"1 process x {args.cores} threads        {single:6.1f} images/s (mean of 2 epochs)")
    print(f"{args.cores} processes x 1 thread         {several:6.1f} images/s (mean of 2 epochs)")
    print(f"ratio (processes / threads)       {several / single:6.2f}")


if __name__ == "__main__":
    main()
