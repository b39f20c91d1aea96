#!/usr/bin/env python3
"""Emulator speed when stores land on pages holding translated code (issue 15, item 7).

Three real-mode workloads, each run for ``--seconds`` of wall time in a ``Machine`` (the
userspace emulator), reported as instructions/s of CPU time:

* reference: a register-only loop (no stores at all);
* data next to code: a loop incrementing a counter in the same 64-byte line as its own code,
  on a page that also holds 200 other translated blocks. Before issue 15 every such store
  rescanned every block on the page; now it looks at the blocks of the line it touches;
* random code: random bytes at 0x7c00 with the rest of guest RAM zero (the issue's case). The
  guest soon runs into zeroes (``add [bx+si], al``: a store per instruction, often into the
  code it runs), faults through an empty IVT to 0000:0000 and runs the zeroes there.

usage: python scripts/bench_random_code.py [--seeds N] [--seconds S] [--size BYTES]
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pykvm.errors import PykvmError  # noqa: E402
from pykvm.machine import Machine  # noqa: E402

# A register-only loop at 0x7c00 (inc ax; dec bx; xor cx, ax; jmp short back): the reference.
REGISTER_LOOP = b"\x40\x4b\x31\xc1\xeb\xfa"
# 200 one-instruction blocks (jmp short $+2), then at 0x7d90: inc word [0x7d96]; jmp short
# back; the counter at 0x7d96 shares the loop's 64-byte line (and the page of all 201 blocks).
DATA_NEXT_TO_CODE = b"\xeb\x00" * 200 + b"\xff\x06\x96\x7d\xeb\xfa" + b"\0\0"


def measure(image: bytes, seconds: float, memory: int) -> tuple[int, float, str]:
    """(instructions emulated, CPU seconds, how the run ended) for one image."""
    with Machine(memory, serial_output=io.BytesIO()) as machine:
        machine.load(image, "flat", mode="real")
        cpu = time.process_time()
        try:
            ending = f"status {machine.run(timeout=seconds)}"
        except PykvmError as e:
            ending = type(e).__name__
        return machine.stats.emulated_instructions, time.process_time() - cpu, ending


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8, help="random images to run (default 8)")
    parser.add_argument("--seconds", type=float, default=2.0, help="wall time per image (default 2)")
    parser.add_argument("--size", type=int, default=256, help="random bytes per image (default 256)")
    parser.add_argument("--mem", type=int, default=1 << 20, help="guest RAM in bytes (default 1 MiB)")
    args = parser.parse_args()

    count, cpu, _ = measure(REGISTER_LOOP, args.seconds, args.mem)
    reference = count / cpu
    print(f"reference (register loop, no stores): {reference / 1e6:.2f} M instructions/s")
    count, cpu, _ = measure(DATA_NEXT_TO_CODE, args.seconds, args.mem)
    print(f"data next to code (a store per 2 instructions into a line with code): "
          f"{count / cpu / 1e6:.2f} M instructions/s")
    rates = []
    for seed in range(args.seeds):
        image = random.Random(seed).randbytes(args.size)
        count, cpu, ending = measure(image, args.seconds, args.mem)
        rate = count / cpu if cpu else 0.0
        if cpu >= args.seconds / 2:       # a guest that faults out at once measures nothing
            rates.append(rate)
        print(f"seed {seed:3}: {count:>10,} instructions in {cpu:5.2f}s CPU = {rate / 1e3:9.1f} k/s  ({ending})")
    if rates:
        print(f"random code, the {len(rates)} runs that lasted: min {min(rates) / 1e3:.1f} k/s, median "
              f"{statistics.median(rates) / 1e3:.1f} k/s, max {max(rates) / 1e3:.1f} k/s")


if __name__ == "__main__":
    main()
