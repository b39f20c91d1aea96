"""Guest-level oracle: the self-checking and mode-switching guests under pykvm's userspace
emulator and under the host kernel's emulator must print the same serial output and end
with the same status.

Where the kernel cannot run a guest to the end (selftest32 reaches a protected-mode IRET,
which the kernel's non-PVM emulation refuses with KVM_EXIT_INTERNAL_ERROR, see
../shared/PVM.md), everything the kernel printed before stopping must be a prefix of the
emulator's output, and the emulator must finish the guest with every check passed.
"""

from __future__ import annotations

import io

import pytest

from pykvm.errors import EmulationError
from pykvm.guests import build_guest, build_script
from pykvm.machine import Machine

pytestmark = pytest.mark.kvm

TIMEOUT = 120
MEMORY = 16 << 20


def run_guest(name: str, emulator: str, fmt: str = "flat", mode: str | None = None, count: int | None = None):
    """(status or the EmulationError text, serial output) of guest ``name`` under ``emulator``."""
    data = build_guest(name).read_bytes()
    if count is not None:
        data = build_script().with_count(data, count)
    out = io.BytesIO()
    with Machine(memory_size=MEMORY, serial_output=out, emulator=emulator) as machine:
        machine.load(data, fmt, mode=mode)
        try:
            status = machine.run(timeout=TIMEOUT)
        except EmulationError as e:
            status = f"emulation error: {e}"
        return status, out.getvalue()


GUESTS = {
    # name: (load format, mode, count)
    "boot16to64": ("flat", "real", None),
    "bootsector": ("bootsector", None, None),
    "selftest16": ("flat", "real", None),
    "cwork32": ("flat", "protected", None),
    "cwork16": ("flat", "real", None),
    "assert32": ("flat", "protected", None),
    "loop32": ("flat", "protected", 3000),
    "multiboot32": ("multiboot", None, None),
}


@pytest.mark.parametrize("name", GUESTS)
def test_guest_runs_alike_under_both_emulators(name):
    fmt, mode, count = GUESTS[name]
    kernel = run_guest(name, "kernel", fmt, mode, count)
    userspace = run_guest(name, "userspace", fmt, mode, count)
    assert isinstance(kernel[0], int), kernel[0]
    assert userspace == kernel


def test_selftests_pass_under_the_emulator():
    """Not vacuous: the self-checking guests really ran their checks, and all passed."""
    for name, fmt, mode in (("selftest16", "flat", "real"), ("selftest32", "flat", "protected")):
        status, output = run_guest(name, "userspace", fmt, mode)
        assert b"SUMMARY:" in output and b" 0 failed" in output, output.decode(errors="replace")[-2000:]
        assert status == 1


def test_loop32_checksum_is_the_model_value():
    status, output = run_guest("loop32", "userspace", "flat", "protected", 3000)
    assert f"checksum {build_script().loop32_checksum(3000):#x}".encode() in output.lower()
    assert status == 1


def test_selftest32_agrees_with_the_kernel_until_the_kernel_stops():
    kernel_status, kernel_output = run_guest("selftest32", "kernel", "flat", "protected")
    status, output = run_guest("selftest32", "userspace", "flat", "protected")
    assert status == 1
    if isinstance(kernel_status, int):        # a kernel that can IRET in protected mode
        assert (kernel_status, kernel_output) == (status, output)
    else:
        assert "emulation" in kernel_status
        assert kernel_output and output.startswith(kernel_output)
