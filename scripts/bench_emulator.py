#!/usr/bin/env python3
"""Emulator benchmark: pykvm's userspace emulator against the host kernel's own emulator,
on the same guest, measured in one run; plus REP MOVSD/STOSD bandwidth.

1. ``guests/loop32`` (32-bit protected mode, paging off: a 14-15 instruction ALU/memory/
   branch loop, then 1 MiB REP STOSD + REP MOVSD and a printed checksum) runs under
   ``Machine(emulator="userspace")`` — what ``pykvm run`` does — and under
   ``Machine(emulator="kernel")``, where KVM_RUN makes the host kernel emulate non-PVM
   mode. Each side runs the image twice, with ``--base`` and ``--iterations`` loop counts
   (patched at ``COUNT_OFFSET``), and the rate is taken from the *difference*: the extra
   iterations' instructions over the extra time, so VM setup, the REP copies and the
   serial output cancel out (the default counts have equally many digits, so even the
   printed text is the same length). The extra instructions are counted from the loop's structure
   (14 per iteration plus the ``sub`` on iterations whose LCG state has bit 16 set,
   replayed here) and cross-checked with the userspace emulator's own count (which also
   holds the printing of the two checksums: one instruction more per hex letter); both
   sides execute exactly the same instructions. Each run's checksum is checked against
   ``loop32_checksum``. Printed: instructions/s of each side and the ratio
   userspace/kernel (the issue's target: >= 0.2).
2. REP STOSD and REP MOVSD of ``--rep-mib`` MiB (a hand-encoded snippet run directly on
   ``Emulator``, no KVM needed): bytes/s (target: >= 1 GB/s).

``--profile`` runs the userspace side of (1) under cProfile and prints the 25 functions
with the most internal time. Timings are printed, never judged: no pass/fail.

usage: python scripts/bench_emulator.py [--iterations N] [--base N] [--repeat K] [--rep-mib M] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pykvm.guests import build_guest, build_script  # noqa: E402

LOOP32_MEMORY = 16 << 20
REP_MEMORY = 64 << 20
LOOP_BODY = 14          # loop32's loop without the conditional ``sub``
LCG_MUL, LCG_ADD = 1103515245, 12345


# -- loop32 ------------------------------------------------------------------------------
def loop_instructions(iterations: int) -> int:
    """Instructions loop32's hot loop executes for ``iterations`` (replaying its LCG)."""
    state, total = 0x12345678, 0
    for _ in range(iterations):
        state = (state * LCG_MUL + LCG_ADD) & 0xFFFFFFFF
        total += LOOP_BODY + (1 if state & 0x10000 else 0)
    return total


def hex_letters(iterations: int) -> int:
    """How many of the 8 hex digits loop32 prints for its checksum are letters."""
    return sum(c in "abcdef" for c in f"{build_script().loop32_checksum(iterations):08x}")


def run_loop32(image: bytes, iterations: int, emulator: str, profiler: cProfile.Profile | None = None):
    """(seconds, instructions the userspace emulator executed or None) of one loop32 run,
    its checksum verified."""
    from pykvm.machine import Machine

    out = io.BytesIO()
    with Machine(LOOP32_MEMORY, serial_output=out, emulator=emulator) as machine:
        machine.load(build_script().with_count(image, iterations), "flat", mode="protected")
        if profiler is not None:
            profiler.enable()
        started = time.perf_counter()
        status = machine.run(timeout=3600)
        elapsed = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
        # The emulator's own total (the Machine's stats count whole 130-instruction batches
        # and miss the batch the guest's debug-exit write interrupts).
        count = machine.emulator.instructions_executed if emulator == "userspace" else None
    text = out.getvalue().decode(errors="replace")
    match = re.search(r"checksum 0x([0-9a-fA-F]+)", text)
    expected = build_script().loop32_checksum(iterations)
    if status != 1 or match is None or int(match.group(1), 16) != expected:
        raise SystemExit(f"loop32 under the {emulator} emulator went wrong: status {status}, output {text!r}, "
                         f"expected checksum {expected:#x}")
    return elapsed, count


def best_of(repeat: int, fn):
    results = [fn() for _ in range(repeat)]
    return min(results, key=lambda r: r[0])


def bench_loop32(args) -> None:
    image = build_guest("loop32").read_bytes()
    extra = loop_instructions(args.iterations) - loop_instructions(args.base)
    print(f"loop32: {args.base} vs {args.iterations} iterations -> {extra:,} extra instructions "
          f"(best of {args.repeat})")
    rates = {}
    for side in ("userspace", "kernel"):
        small = best_of(args.repeat, lambda: run_loop32(image, args.base, side))
        large = best_of(args.repeat, lambda: run_loop32(image, args.iterations, side))
        seconds = large[0] - small[0]
        if side == "userspace":
            counted = large[1] - small[1]
            # Printing the checksum costs one instruction more per hex letter than per digit.
            expected = extra + hex_letters(args.iterations) - hex_letters(args.base)
            if len(str(args.base)) != len(str(args.iterations)):
                verdict = f"not checked: {args.base} and {args.iterations} print with different numbers of digits"
            elif counted == expected:
                verdict = "as expected"
            else:
                verdict = f"expected {expected:,}: the loop model is off"
            print(f"  the emulator counted {counted:,} extra instructions ({verdict})")
        rates[side] = extra / seconds if seconds > 0 else float("inf")
        print(f"  {side:9s}: {large[0]:7.3f} s for {args.iterations} iterations, "
              f"{small[0]:7.3f} s for {args.base}  ->  {rates[side] / 1e6:6.2f} M instructions/s")
    print(f"  ratio userspace/kernel: {rates['userspace'] / rates['kernel']:.2f}x  (target >= 0.2x)")


def profile_loop32(args) -> None:
    image = build_guest("loop32").read_bytes()
    profiler = cProfile.Profile()
    run_loop32(image, args.iterations, "userspace", profiler)
    print(f"\ncProfile of the userspace emulator on loop32 ({args.iterations} iterations), top 25 by tottime:")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(25)


# -- REP MOVSD / STOSD ---------------------------------------------------------------------
def rep_snippet(op: str, dwords: int, rounds: int, src: int, dst: int) -> bytes:
    """Hand-encoded 32-bit code: ``rounds`` times REP STOSD (or MOVSD) of ``dwords``, then HLT."""
    body = b"\xbf" + struct.pack("<I", dst)                 # mov edi, dst
    body += b"\xb9" + struct.pack("<I", dwords)             # mov ecx, dwords
    if op == "stos":
        body += b"\xb8" + struct.pack("<I", 0xA5A5A5A5)     # mov eax, pattern
        body += b"\xf3\xab"                                 # rep stosd
    else:
        body += b"\xbe" + struct.pack("<I", src)            # mov esi, src
        body += b"\xf3\xa5"                                 # rep movsd
    body += b"\x4b"                                         # dec ebx
    loop = body + b"\x75" + bytes([(-(len(body) + 2)) & 0xFF])   # jnz back to the top
    return b"\xbb" + struct.pack("<I", rounds) + loop + b"\xf4"  # mov ebx, rounds; ...; hlt


def run_rep(op: str, mib: int, rounds: int) -> float:
    """Seconds the userspace emulator takes for ``rounds`` REP ``op`` of ``mib`` MiB."""
    from pykvm.devices.bus import Bus
    from pykvm.emulator import Emulator
    from pykvm.memory import GuestMemory
    from pykvm.x86 import boot

    load = 0x100000
    src, dst = 0x400000, 0x400000 + (mib << 20) + 0x1000
    with GuestMemory(REP_MEMORY) as memory:
        boot.prepare_memory("protected", memory)
        memory.write(load, rep_snippet(op, (mib << 20) // 4, rounds, src, dst))
        emulator = Emulator(boot.initial_state("protected", load), memory, Bus())
        started = time.perf_counter()
        while not emulator.state.halted:
            emulator.run(1000)
        return time.perf_counter() - started


def bench_rep(args) -> None:
    if 2 * (args.rep_mib << 20) + 0x402000 > REP_MEMORY:
        raise SystemExit(f"--rep-mib {args.rep_mib} does not fit in the {REP_MEMORY >> 20} MiB test RAM")
    rounds = 8
    print(f"REP string bandwidth through the userspace emulator ({args.rep_mib} MiB x {rounds}, best of "
          f"{args.repeat}):")
    for op, name in (("stos", "REP STOSD"), ("movs", "REP MOVSD")):
        seconds = min(run_rep(op, args.rep_mib, rounds) for _ in range(args.repeat))
        rate = rounds * (args.rep_mib << 20) / seconds
        print(f"  {name}: {rate / 1e9:6.2f} GB/s  (target >= 1 GB/s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Both defaults have five digits, so the guest prints the same number of characters in
    # both runs and the difference in executed instructions is exactly the extra loop work.
    parser.add_argument("--iterations", type=int, default=99_999, help="loop32 iterations of the long run")
    parser.add_argument("--base", type=int, default=10_000, help="loop32 iterations of the short run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (the best is kept)")
    parser.add_argument("--rep-mib", type=int, default=4, help="MiB per REP MOVSD/STOSD")
    parser.add_argument("--profile", action="store_true",
                        help="also run the userspace side under cProfile and print the top 25 by tottime")
    args = parser.parse_args(argv)
    if not 0 <= args.base < args.iterations:
        parser.error("--base must be below --iterations")
    bench_loop32(args)
    print()
    bench_rep(args)
    if args.profile:
        profile_loop32(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
