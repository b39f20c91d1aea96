#!/usr/bin/env python3
"""Issue 17's four figures in one run, each a same-run ratio, best of several, wall and CPU time.

1. compiled C in the emulator (``cwork32``, ~2 M instructions) against the host kernel's
   emulator: target >= 3x (``bench_emulator_micro.py``; in this process, and cold: a fresh
   process per run, translation and compilation included);
2. ``pykvm run`` of a one-byte 64-bit HLT guest against the same venv's ``python -c pass``:
   target <= 3x (``bench_startup.py``);
3. port-I/O exits/s against the same loop in C, in-process: target >= 0.9 (``bench_exits.py``);
4. the same as whole processes, start-up included, 100k exits: target >= 0.85.

A target is judged on CPU time (a shared machine's neighbours show in wall time first); both
are printed, with the load average.

usage: python scripts/bench_targets.py [--repeat K]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_emulator_micro  # noqa: E402
import bench_exits  # noqa: E402
import bench_startup  # noqa: E402


def collect(generator, echo: bool):
    """Print a report's lines as they come; return its last item (the ratios)."""
    last = None
    for item in generator:
        if isinstance(item, str):
            if echo:
                print("  " + item, flush=True)
        else:
            last = item
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each side; the best counts")
    parser.add_argument("--quiet", action="store_true", help="only the summary table")
    args = parser.parse_args()
    echo = not args.quiet
    print(f"load average at the start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)

    print("1. emulator: cwork32 vs the kernel's emulator", flush=True)
    emulator = collect(bench_emulator_micro.report(["cwork32"], 0, args.repeat, cold=True), echo)
    print("2. start-up: pykvm run (HLT) vs python -c pass", flush=True)
    best = bench_startup.measure(max(args.repeat * 4, 20))
    (ours, base) = best["pykvm run"], best["python -c pass"]
    if echo:
        for name, (wall, cpu) in best.items():
            print(f"  {name:16}: {wall * 1e3:6.1f} ms wall  {cpu * 1e3:6.1f} ms CPU", flush=True)
    print("3./4. exits: pykvm vs the C loop", flush=True)
    exits = collect(bench_exits.report(100_000, args.repeat), echo)

    rows = [
        ("cwork32 in the emulator vs the kernel's (x)", emulator["cwork32"], ">= 3", lambda r: r >= 3),
        ("  the same, cold (a fresh process)", emulator["cwork32 (cold)"], ">= 3", lambda r: r >= 3),
        ("pykvm run (HLT) vs python -c pass (x)", (ours[0] / base[0], ours[1] / base[1]), "<= 3", lambda r: r <= 3),
        ("port-I/O exits vs C, in-process", exits["in-process"], ">= 0.9", lambda r: r >= 0.9),
        ("the same, whole process, 100k exits", exits["whole process"], ">= 0.85", lambda r: r >= 0.85),
    ]
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    print(f"{'figure':46} {'wall':>6} {'CPU':>6}  target  (CPU)")
    for name, (wall, cpu), target, holds in rows:
        print(f"{name:46} {wall:6.2f} {cpu:6.2f}  {target:6}  {'met' if holds(cpu) else 'NOT MET'}")


if __name__ == "__main__":
    main()
