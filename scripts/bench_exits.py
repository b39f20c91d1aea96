#!/usr/bin/env python3
"""Exit throughput: pykvm's KVM_RUN loop against the same loop in C, measured in one run.

The guest (``guests/exits64.S``) executes N ``out`` instructions in 64-bit mode, so
each one is a KVM_EXIT_IO. ``bench_exits.c`` (compiled here with the host's cc) sets up
the vCPU exactly as pykvm's long-mode loader does and loops on KVM_RUN; pykvm runs the
same image through ``Machine``. Each side runs ``--repeat`` times; the best run of each
is compared, and the ratio pykvm/C is printed (the target is >= 0.7).

usage: python scripts/bench_exits.py [--exits N] [--repeat K]
"""

from __future__ import annotations

import argparse
import io
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pykvm.guests import build_guest, build_script  # noqa: E402
from pykvm.machine import Machine  # noqa: E402
from pykvm.x86 import boot  # noqa: E402

MEMORY = 64 << 20


def image_with_count(n: int) -> bytes:
    """exits64 with its iteration count patched in at the documented offset."""
    data = bytearray(build_guest("exits64").read_bytes())
    struct.pack_into("<Q", data, build_script().COUNT_OFFSET, n)
    return bytes(data)


def run_pykvm(image: bytes) -> tuple[int, float]:
    with Machine(MEMORY, serial_output=io.BytesIO()) as machine:
        machine.load(image, "flat", mode="long")
        started = time.perf_counter()
        status = machine.run(timeout=600)
        elapsed = time.perf_counter() - started
        if status != 0:
            raise SystemExit(f"pykvm run ended with status {status}")
        return machine.stats.kvm_exits, elapsed


def build_c(workdir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("no C compiler (cc) on PATH: the reference loop cannot be built")
    exe = workdir / "bench_exits"
    subprocess.run([cc, "-O2", "-o", str(exe), str(REPO / "scripts" / "bench_exits.c")], check=True)
    return exe


def run_c(exe: Path, image: bytes, workdir: Path) -> tuple[int, float]:
    path = workdir / "exits64.bin"
    path.write_bytes(image)
    out = subprocess.run([str(exe), str(path), str(MEMORY)], check=True, capture_output=True, text=True).stdout
    exits, seconds, _ = out.split()
    return int(exits), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exits", type=int, default=100_000, help="out instructions in the guest")
    parser.add_argument("--repeat", type=int, default=5, help="runs per side; the best counts")
    args = parser.parse_args()
    image = image_with_count(args.exits)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        exe = build_c(workdir)
        best = {"pykvm": 0.0, "C": 0.0}
        for _ in range(args.repeat):  # interleaved, so drift in machine load hits both sides alike
            for name, runner in (("pykvm", lambda: run_pykvm(image)), ("C", lambda: run_c(exe, image, workdir))):
                exits, seconds = runner()
                best[name] = max(best[name], exits / seconds)
    print(f"guest: exits64, {args.exits} port-I/O exits, best of {args.repeat}")
    print(f"pykvm  : {best['pykvm']:>10,.0f} exits/s  ({1e6 / best['pykvm']:.2f} us/exit)")
    print(f"C loop : {best['C']:>10,.0f} exits/s  ({1e6 / best['C']:.2f} us/exit)")
    print(f"ratio pykvm/C: {best['pykvm'] / best['C']:.2f}  (target >= 0.70)")


if __name__ == "__main__":
    main()
