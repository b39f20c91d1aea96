"""Running images on pykvm and on the reference PC, QEMU 7.2's TCG (``scripts/qemu_run.py``),
for the tests that compare the two. QEMU tests skip with the reason where it is not installed."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from pykvm.guests import REPO_ROOT

_spec = importlib.util.spec_from_file_location("pykvm_qemu_run", REPO_ROOT / "scripts" / "qemu_run.py")
qemu_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qemu_run)

needs_qemu = pytest.mark.skipif(qemu_run.qemu_path() is None,
                                reason=f"needs {qemu_run.QEMU} (Debian: qemu-system-x86)")

# The lines that must be the same on both: checks, summaries, results; not "info:" lines,
# which say what differs between the platforms (memory maps, boot loader names, addresses).
COMPARED = re.compile(r"^(PASS|FAIL|SUMMARY|ASSERT FAILED|module \d+:|\[(real|protected|long)\] |Hello|loop32:|idle:)")


@dataclass
class Run:
    status: int | None          # None: still running at the timeout
    output: str
    stderr: str = ""

    @property
    def compared(self) -> list[str]:
        return [line for line in self.output.splitlines() if COMPARED.match(line)]


def _run(command: list[str], timeout: float, cwd=None, env=None) -> Run:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env=None if env is None else {**os.environ, **env})
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return Run(None, out)
    return Run(done.returncode, done.stdout, done.stderr)


def pykvm(*args: str, timeout: float = 120, cwd=None, env: dict | None = None) -> Run:
    """``pykvm run ARGS`` as a process (from the checkout, or ``cwd``; ``env`` added to ours)."""
    return _run([sys.executable, "-m", "pykvm", "run", *args], timeout, cwd=cwd or REPO_ROOT, env=env)


def qemu(command: list[str], timeout: float = 60, cwd=None) -> Run:
    run = _run(command, timeout, cwd=cwd)
    run.output = qemu_run.guest_output(run.output)
    return run
