#!/usr/bin/env python3
"""Exit throughput: pykvm's KVM_RUN loop against the same loop in C, measured in one run.

The guest (``guests/exits64.S``) executes N ``out`` instructions to port 0x80 in 64-bit mode.
``bench_exits.c`` (compiled here with the host's cc) sets up the vCPU exactly as pykvm's
long-mode loader does and loops on KVM_RUN; pykvm runs the same image. Three figures, each
side ``--repeat`` times alternately, the best run of each in wall time and in CPU time (user
+ system: the exits are mostly the kernel's time):

1. in-process: ``Machine.run`` against the C loop (both timed around the loop), every OUT an
   exit (coalescing off, as in C). Issue 17's target: pykvm/C >= 0.9.
2. whole process: ``pykvm run IMAGE --mode long`` (start-up and teardown included, coalescing
   off with PYKVM_COALESCE=0) against the C program's whole process. Target: >= 0.85.
3. coalesced: what ``pykvm run`` does by default, port 0x80 coalesced by KVM
   (KVM_CAP_COALESCED_PIO) and replayed at the next exit: the guest's time against the C loop's
   (which exits for every OUT). Printed for information.

usage: python scripts/bench_exits.py [--exits N] [--repeat K]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
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

MEMORY = 64 << 20


def image_with_count(n: int) -> bytes:
    """exits64 with its iteration count patched in at the documented offset."""
    data = bytearray(build_guest("exits64").read_bytes())
    struct.pack_into("<Q", data, build_script().COUNT_OFFSET, n)
    return bytes(data)


def run_pykvm(image: bytes, coalesce: bool = False) -> tuple[int, float, float]:
    """(exits, wall seconds, CPU seconds) of ``Machine.run``."""
    from pykvm.machine import Machine

    with Machine(MEMORY, serial_output=io.BytesIO(), coalesce=coalesce) as machine:
        machine.load(image, "flat", mode="long")
        started, cpu = time.perf_counter(), time.process_time()
        status = machine.run(timeout=600)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        if status != 0:
            raise SystemExit(f"pykvm run ended with status {status}")
        return machine.stats.kvm_exits, elapsed, cpu


def build_c(workdir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("no C compiler (cc) on PATH: the reference loop cannot be built")
    exe = workdir / "bench_exits"
    subprocess.run([cc, "-O2", "-o", str(exe), str(REPO / "scripts" / "bench_exits.c")], check=True)
    return exe


def run_c(exe: Path, path: Path) -> tuple[int, float, float]:
    """(exits, wall seconds, CPU seconds) of the C loop, as it times itself."""
    out = subprocess.run([str(exe), str(path), str(MEMORY)], check=True, capture_output=True, text=True).stdout
    exits, seconds, _, cpu = out.split()
    return int(exits), float(seconds), float(cpu)


def run_process(command: list[str], env=None) -> tuple[float, float]:
    """(wall, CPU) seconds of a whole process (CPU from the children's rusage)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def pykvm_command() -> list[str]:
    script = Path(sys.executable).with_name("pykvm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pykvm"]


def best(runs):
    return min(r[0] for r in runs), min(r[1] for r in runs)


def measure(exits: int, repeat: int) -> dict:
    """Every figure: {name: ((wall, CPU) of pykvm, (wall, CPU) of C)}, plus the exit counts."""
    image = image_with_count(exits)
    # The .pyc files a non-editable install has (PYTHONDONTWRITEBYTECODE would make every
    # process compile pykvm's modules again).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        exe = build_c(workdir)
        path = workdir / "exits64.bin"
        path.write_bytes(image)
        process = pykvm_command() + ["run", str(path), "--mode", "long"]
        subprocess.run(process, env=env, check=True, stdout=subprocess.DEVNULL)     # warm .pyc
        env_no_coalesce = {**env, "PYKVM_COALESCE": "0"}
        runs = {"in-process": ([], []), "whole process": ([], []), "coalesced": ([], [])}
        counts = {}
        for _ in range(repeat):      # interleaved, so drift in machine load hits both sides alike
            n, wall, cpu = run_pykvm(image)
            counts["pykvm"] = n
            runs["in-process"][0].append((wall, cpu))
            n, wall, cpu = run_c(exe, path)
            counts["C"] = n
            runs["in-process"][1].append((wall, cpu))
            runs["coalesced"][1].append((wall, cpu))
            n, wall, cpu = run_pykvm(image, coalesce=True)
            counts["coalesced"] = n
            runs["coalesced"][0].append((wall, cpu))
            runs["whole process"][0].append(run_process(process, env_no_coalesce))
            runs["whole process"][1].append(run_process([str(exe), str(path), str(MEMORY)]))
    return {name: (best(ours), best(theirs)) for name, (ours, theirs) in runs.items()} | {"counts": counts}


def report(exits: int, repeat: int):
    """The lines to print (and, last, {figure: (ratio wall, ratio CPU)} for bench_targets.py)."""
    figures = measure(exits, repeat)
    counts = figures.pop("counts")
    load = os.getloadavg()[0]
    yield (f"guest: exits64, {exits} OUTs to port 0x80 ({counts['pykvm']} exits; coalesced: {counts['coalesced']}),"
           f" best of {repeat} (load average {load:.2f}, {os.cpu_count()} CPUs)")
    yield f"{'figure':14} {'pykvm wall':>11} {'CPU':>8} {'C wall':>9} {'CPU':>8} {'ratio wall':>10} {'CPU':>6}"
    ratios = {}
    for name, ((wall, cpu), (cwall, ccpu)) in figures.items():
        ratio = (cwall / wall, ccpu / cpu)
        ratios[name] = ratio
        yield (f"{name:14} {wall * 1e3:9.1f}ms {cpu * 1e3:6.1f}ms {cwall * 1e3:7.1f}ms {ccpu * 1e3:6.1f}ms "
               f"{ratio[0]:10.2f} {ratio[1]:6.2f}")
    (wall, cpu), _ = figures["in-process"]
    yield f"pykvm in-process: {counts['pykvm'] / wall:,.0f} exits/s wall ({wall / counts['pykvm'] * 1e6:.2f} us/exit)"
    yield "targets (issue 17): in-process >= 0.9, whole process >= 0.85 (ratio = C time / pykvm time)"
    yield ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exits", type=int, default=100_000, help="out instructions in the guest")
    parser.add_argument("--repeat", type=int, default=5, help="runs per side; the best counts")
    args = parser.parse_args()
    for line in report(args.exits, args.repeat):
        if isinstance(line, str):
            print(line, flush=True)


if __name__ == "__main__":
    main()
