"""The emulator's exact-fault, self-modifying-code, string, interrupt and breakpoint tests, and
the differential tests of faults and self-modifying code, again with every block compiled at its
first run (``PYKVM_EMU_TIER=eager``): the compiled tier must pass what the per-instruction path
passes. (The whole of tests/emulator and tests/differential run that way with the variable set
by hand: see README, "Emulator speed".)"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.emulator.asm import HAVE_AS

SUBSET = [
    "tests/emulator/test_smc.py",
    "tests/emulator/test_exceptions.py",
    "tests/emulator/test_strings.py",
    "tests/emulator/test_interrupts.py",
    "tests/emulator/test_breakpoints.py",
    "tests/emulator/test_guests.py",
    "tests/differential/test_self_modifying.py",
    "tests/differential/test_kernel_exceptions.py",
]


def test_the_compiled_tier_passes_the_exact_fault_and_smc_tests():
    if not HAVE_AS:
        import pytest

        pytest.skip("GNU as/ld not installed")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUBSET],
                          cwd=root, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYKVM_EMU_TIER": "eager"})
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary
