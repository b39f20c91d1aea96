#!/usr/bin/env python3
"""Start-up: ``pykvm run`` of a one-byte 64-bit guest (HLT) against the same venv's ``python -c pass``.

Both are started as processes the way a user starts them (the ``pykvm`` console script next
to this interpreter), alternately, ``--repeat`` times; the best run of each counts, in wall
time and in CPU time (user + system, from the children's rusage), and the ratio
pykvm / python is printed for both (the target is <= 3). The load average is printed too:
on a shared machine a busy neighbour shows in the wall times first.

usage: python scripts/bench_startup.py [--repeat K]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``command``; it must exit with status 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} ended with status {done.returncode}: {done.stderr.decode()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def pykvm_command() -> list[str]:
    script = Path(sys.executable).with_name("pykvm")
    if not script.exists():
        raise SystemExit(f"no pykvm console script next to {sys.executable}: install pykvm in this venv")
    return [str(script)]


def measure(repeat: int) -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "hlt.bin")
        with open(image, "wb") as f:
            f.write(b"\xf4")
        commands = {"pykvm run": pykvm_command() + ["run", image, "--mode", "long"],
                    "python -c pass": [sys.executable, "-c", "pass"]}
        # Warm the page cache and let Python write the .pyc files a non-editable install has
        # (PYTHONDONTWRITEBYTECODE would otherwise make every run compile pykvm's modules).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        for command in commands.values():
            subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        best = {name: (float("inf"), float("inf")) for name in commands}
        for _ in range(repeat):                  # interleaved: drifting load hits both alike
            for name, command in commands.items():
                wall, cpu = timed(command)
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="runs of each; the best counts")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    best = measure(args.repeat)
    ours, base = best["pykvm run"], best["python -c pass"]
    print(f"start-up, best of {args.repeat} (load average {load:.2f}, {os.cpu_count()} CPUs)")
    for name, (wall, cpu) in best.items():
        print(f"{name:16}: {wall * 1e3:6.1f} ms wall  {cpu * 1e3:6.1f} ms CPU")
    print(f"ratio pykvm/python: {ours[0] / base[0]:.2f} wall, {ours[1] / base[1]:.2f} CPU  (target <= 3)")


if __name__ == "__main__":
    main()
