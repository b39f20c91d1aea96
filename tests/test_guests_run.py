"""Every guest in guests/ runs to its documented end under pykvm's userspace emulator + KVM.

Self-checking guests report each check on the serial port; a failure here shows the
guest's own FAIL and ASSERT lines, so a broken instruction is named by the guest.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import pytest

from pykvm.guests import build_guest
from pykvm.machine import Machine

pytestmark = pytest.mark.kvm


@dataclass
class GuestRun:
    status: int
    output: str
    emulated: int
    conversions: int

    def problems(self) -> str:
        lines = [line for line in self.output.splitlines() if line.startswith(("FAIL", "ASSERT FAILED"))]
        return "\n".join(lines) or self.output[-2000:]


def run_guest(name: str, mode: str | None = None, fmt: str = "auto", emulator: str = "userspace",
              memory: int = 64 << 20, timeout: float = 120) -> GuestRun:
    out = io.BytesIO()
    with Machine(memory, serial_output=out, emulator=emulator) as machine:
        machine.load(build_guest(name).read_bytes(), fmt, mode=mode)
        status = machine.run(timeout=timeout)
        return GuestRun(status, out.getvalue().decode(errors="replace"), machine.stats.emulated_instructions,
                        machine.stats.conversions)


def assert_all_checks_pass(run: GuestRun) -> None:
    summary = re.search(r"SUMMARY: (\d+) passed, (\d+) failed", run.output)
    assert summary, f"no SUMMARY line; output ends with:\n{run.output[-2000:]}"
    assert summary.group(2) == "0", run.problems()
    assert run.status == 1, run.problems()  # debug-exit with failure count 0


@pytest.mark.parametrize("name,mode,checks", [("selftest16", "real", 137), ("selftest32", "protected", 163)])
def test_instruction_self_tests_pass_under_the_userspace_emulator(name, mode, checks):
    run = run_guest(name, mode)
    assert_all_checks_pass(run)
    assert int(re.search(r"SUMMARY: (\d+) passed", run.output).group(1)) >= checks
    assert run.emulated > 10_000 and run.conversions == 0


@pytest.mark.parametrize("name,mode,instructions", [("cwork32", "protected", 1_000_000),
                                                     ("cwork16", "real", 300_000)])
def test_freestanding_c_guest_does_its_work_under_the_emulator(name, mode, instructions):
    # cwork16 is cwork32.c built with gcc -m16: 66h/67h-prefixed 32-bit code in real mode.
    run = run_guest(name, mode)
    assert_all_checks_pass(run)
    assert run.emulated > instructions and run.conversions == 0


def test_default_guest_boots_real_to_protected_to_long_to_pvm():
    run = run_guest("boot16to64", "real")
    assert run.status == 1, run.output
    lines = run.output.splitlines()
    assert [line.split("]")[0] + "]" for line in lines] == ["[real]", "[protected]", "[long]"]
    assert run.conversions == 1 and run.emulated > 100  # emulated up to long mode, then KVM_RUN


def test_boot_sector_variant():
    run = run_guest("bootsector", fmt="bootsector")
    assert run.status == 1 and "[long]" in run.output and run.conversions == 1


def test_multiboot_kernel_sees_magic_and_memory_info():
    run = run_guest("multiboot32", fmt="multiboot")
    assert run.status == 1, run.output


def test_guest_assertion_names_file_and_line():
    run = run_guest("assert32", "protected")
    assert run.status == (0x7F << 1) | 1
    assert re.search(r"ASSERT FAILED: \S+\.c:\d+: ", run.output), run.output
