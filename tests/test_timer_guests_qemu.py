"""The timer guests on a reference PC: QEMU (TCG) with SeaBIOS, through scripts/qemu_run.py.

The same flat images pykvm runs, entered in the same state by the multiboot shim
(guests/mbshim.S), must pass the same checks there. Where QEMU and pykvm legitimately
differ (SeaBIOS masks lines and runs its own PIT tick, pykvm has no firmware; TCG takes an
IRQ raised by OUT at the end of its translation block) the guests do not depend on it.
Skipped where qemu-system-x86_64 is not installed (Debian: qemu-system-x86).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from pykvm.guests import build_guest
from tests.timer_guests import COUNTED, COUNTING, GUESTS, REPO, TimedProcess

_spec = importlib.util.spec_from_file_location("pykvm_qemu_run", REPO / "scripts" / "qemu_run.py")
qemu_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qemu_run)

needs_qemu = pytest.mark.skipif(qemu_run.qemu_path() is None,
                                reason=f"needs {qemu_run.QEMU} (Debian: qemu-system-x86)")


@pytest.fixture(scope="module")
def qemu_runs(tmp_path_factory):
    """Every timer guest under QEMU, all at once."""
    started = {}
    for name, guest in GUESTS.items():
        kernel = tmp_path_factory.mktemp(name) / f"{name}.mb"
        kernel.write_bytes(qemu_run.multiboot_image(build_guest(name).read_bytes(), guest.mode))
        started[name] = TimedProcess(qemu_run.qemu_command(kernel, testdev=guest.testdev))
    return {name: process.result() for name, process in started.items()}


@needs_qemu
@pytest.mark.parametrize("name", GUESTS)
def test_timer_guest_passes_every_check_under_qemu(qemu_runs, name):
    run = qemu_runs[name]
    assert run.summary() == (GUESTS[name].checks, 0), run.problems()
    assert run.status == 1, run.stderr


@needs_qemu
@pytest.mark.parametrize("name", GUESTS)
def test_200_ticks_take_2_s_under_qemu_too(qemu_runs, name):
    run = qemu_runs[name]
    assert run.time_of(COUNTED) - run.time_of(COUNTING) >= 1.9


@pytest.mark.kvm
@pytest.mark.parametrize("name,mode,output", [
    ("boot16to64", "real", "[real]"), ("cwork32", "protected", "SUMMARY: 10 passed, 0 failed"),
    ("hello64", "long", "Hello from a 64-bit pykvm guest!")])
def test_the_shim_enters_each_mode_under_pykvm_too(tmp_path, name, mode, output):
    """pykvm boots the multiboot kernel itself (a.out kludge): the shim in the emulator, then the guest."""
    kernel = tmp_path / f"{name}.mb"
    kernel.write_bytes(qemu_run.multiboot_image(build_guest(name).read_bytes(), mode))
    run = TimedProcess([sys.executable, "-m", "pykvm", "run", str(kernel), "--timeout", "60"]).result()
    assert output in run.output and run.status == 1, run.output + run.stderr
