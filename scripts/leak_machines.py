#!/usr/bin/env python3
"""Leak check: build, run and drop many Machines, closed and never closed; fds and RSS must stay flat.

Each round makes one Machine that is closed (``with``) and one that is only dropped (its
finalizer closes it when it is collected, with a ResourceWarning, silenced here); both run a
short real-mode guest that prints a line and halts, so the emulator, the UART and KVM are all
involved. After a warm-up round the open fds and the resident set size are sampled; they
must come back to the same fd count and stay within ``--rss-slack`` MiB.

``tests/test_leaks.py`` runs this at a CI-friendly size; the default here is the full size.

usage: python scripts/leak_machines.py [--rounds N] [--rss-slack MIB]
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import resource
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pykvm.machine import Machine  # noqa: E402

# mov dx, 0x3f8; mov al, 'k'; out dx, al; mov al, 10; out dx, al; cli; hlt (real mode)
GUEST = b"\xba\xf8\x03\xb0\x6b\xee\xb0\x0a\xee\xfa\xf4"
MEMORY = 1 << 20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / (1 << 20)


def one_machine(close: bool) -> None:
    out = io.BytesIO()
    machine = Machine(MEMORY, serial_output=out)
    machine.load(GUEST, "flat", mode="real")
    assert machine.run(timeout=30) == 0 and out.getvalue() == b"k\n"
    if close:
        machine.close()


def rounds(count: int, report=None) -> tuple[int, float]:
    """Run ``count`` rounds after one warm-up; returns (fds gained, RSS MiB gained)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        one_machine(True)
        one_machine(False)
        gc.collect()
        fds, rss = open_fds(), rss_mib()
        for i in range(1, count + 1):
            one_machine(True)
            one_machine(False)
            if report is not None and i % report == 0:
                gc.collect()
                print(f"{i:6} rounds: {open_fds() - fds:+d} fds, {rss_mib() - rss:+.1f} MiB RSS")
        gc.collect()
    return open_fds() - fds, rss_mib() - rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1000, help="closed + dropped Machines (default 1000 each)")
    parser.add_argument("--rss-slack", type=float, default=16.0, help="RSS growth allowed, MiB (default 16)")
    args = parser.parse_args()
    fds, rss = rounds(args.rounds, report=max(1, args.rounds // 10))
    verdict = "ok" if fds == 0 and rss <= args.rss_slack else "LEAK"
    print(f"{args.rounds} closed + {args.rounds} dropped Machines: {fds:+d} fds, {rss:+.1f} MiB RSS: {verdict}")
    sys.exit(0 if verdict == "ok" else 1)


if __name__ == "__main__":
    main()
