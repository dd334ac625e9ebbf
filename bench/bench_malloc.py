"""Bench: CPU inference with glibc's default malloc against the package's setting
(allocator.py: freed memory kept in the process).

    python bench/bench_malloc.py CKPT [--threads 2] [--rounds 2] [--repeats 4]

Runs bench_mixed_cost.py on CKPT in fresh processes, DYNAMICDET_MALLOC=default and
keep-freed taking turns (A B B A per round, so drift hits both alike), and prints for each
way of running the validation images (all easy, all hard, half hard regrouped or split per
batch, ...) the median ms per image under each setting and their ratio, then the CPU time
the processes spent in the kernel and in user space (page faults show in the former).
The setting applies on glibc only; elsewhere both runs are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = ("default", "keep-freed")


def run_once(setting: str, args, out: Path) -> tuple[dict, float, float]:
    """One bench_mixed_cost process: its medians, and its kernel and user CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, str(HERE / "bench_mixed_cost.py"), str(args.checkpoint), "--threads",
                    str(args.threads), "--repeats", str(args.repeats), "--json", str(out)],
                   env={**os.environ, "DYNAMICDET_MALLOC": setting}, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return json.loads(out.read_text()), after.ru_stime - before.ru_stime, after.ru_utime - before.ru_utime


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="A B B A rounds")
    ap.add_argument("--repeats", type=int, default=4, help="passes per bench_mixed_cost run")
    args = ap.parse_args(argv)
    ms = {s: [] for s in SETTINGS}
    cpu = {s: [0.0, 0.0] for s in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for setting in SETTINGS + SETTINGS[::-1]:
                medians, sys_s, user_s = run_once(setting, args, Path(tmp) / "out.json")
                ms[setting].append(medians)
                cpu[setting][0] += sys_s
                cpu[setting][1] += user_s
                print(f"  {setting:10s} all easy {medians['all easy']:.2f}, all hard {medians['all hard']:.2f} ms "
                      f"per image; {sys_s:.1f} s kernel, {user_s:.1f} s user", flush=True)
    runs = len(ms["default"])
    print(f"\n{args.checkpoint}: {args.threads} threads, {runs} runs of each setting "
          f"({args.repeats} passes each); median over runs, ms per image")
    print(f"   {'':16s} {'default':>8s} {'keep-freed':>10s}   ratio")
    for name in ms["default"][0]:
        a, b = (statistics.median(r[name] for r in ms[s]) for s in SETTINGS)
        print(f"   {name:16s} {a:8.2f} {b:10.2f}   {b / a:.3f}")
    for s in SETTINGS:
        print(f"   CPU time with {s}: {cpu[s][0]:.1f} s kernel, {cpu[s][1]:.1f} s user")
    print("   'vs the line': each mixed way against (all easy + all hard) / 2 of the same setting")
    for s in SETTINGS:
        med = {name: statistics.median(r[name] for r in ms[s]) for name in ms[s][0]}
        line = (med["all easy"] + med["all hard"]) / 2
        print(f"   {s:10s} " + ", ".join(f"{name} {100 * (med[name] / line - 1):+.1f}%"
                                         for name in med if name not in ("all easy", "all hard")))


if __name__ == "__main__":
    main()
