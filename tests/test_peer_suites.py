"""Peer test suites: code nobody here wrote, run the way a user runs a guest (``pykvm run``).

kvm-unit-tests' ``x86/realmode`` (tests/data/kvm-unit-tests, GPL-2.0 test data with its build
recipe) checks real-mode instructions one by one and prints PASS/FAIL lines on COM1. Without
an interrupt source it runs its 69 checks up to "sti inhibit", where it waits in ``sti; hlt``
for an IRQ; the host kernel's own emulator gets exactly as far.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REALMODE = Path(__file__).parent / "data" / "kvm-unit-tests" / "realmode.flat"
CHECKS_BEFORE_THE_FIRST_INTERRUPT = 69

pytestmark = pytest.mark.kvm


def run_pykvm(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pykvm", *args], capture_output=True, text=True,
                          timeout=timeout + 30)


def test_kvm_unit_tests_realmode_passes_every_check_before_it_needs_an_interrupt():
    if not REALMODE.exists():
        pytest.skip(f"{REALMODE} is absent (see tests/data/kvm-unit-tests/README.md)")
    done = run_pykvm("run", str(REALMODE), "--timeout", "3", timeout=3)
    lines = done.stdout.splitlines()
    passed = [line for line in lines if line.startswith("PASS:")]
    failed = [line for line in lines if line.startswith("FAIL:")]
    assert not failed, failed
    assert len(passed) >= CHECKS_BEFORE_THE_FIRST_INTERRUPT, done.stdout[-2000:] + done.stderr
    # Either it waits for the interrupt until --timeout (status 10), or it got one and finished.
    assert done.returncode in (10, 1), done.stderr
