"""Peer test suites: code nobody here wrote, run the way a user runs a guest (``pykvm run``).

kvm-unit-tests' ``x86/realmode`` (tests/data/kvm-unit-tests, GPL-2.0 test data with its build
recipe) checks real-mode instructions one by one and prints PASS/FAIL lines on COM1. With QEMU's
pc-testdev (``--testdev``) it raises IRQ 11 through the 8259 for "sti inhibit" and finishes all
127 checks (QEMU 7.2 TCG passes 127/127). Without it, it runs its 69 checks up to "sti inhibit",
where it waits in ``sti; hlt`` for an IRQ that never comes: the host kernel's own emulator (no
irqchip) gets exactly as far.

test386.asm (tests/data/test386, GPL-3.0 test data with its build recipe and the patch that
skips what needs CPL 3, which PVM runs only in PVM mode) starts from the reset vector as a ROM,
tests real mode, protected mode, paging and faults, halting at the first failure, and prints the
results of ~45,000 ALU operations, which must match the reference its author captured.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
from pathlib import Path

import pytest

REALMODE = Path(__file__).parent / "data" / "kvm-unit-tests" / "realmode.flat"
CHECKS_BEFORE_THE_FIRST_INTERRUPT = 69
ALL_CHECKS = 127

pytestmark = pytest.mark.kvm


def run_pykvm(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pykvm", *args], capture_output=True, text=True,
                          timeout=timeout + 30)


def _realmode(*options: str, timeout: float):
    if not REALMODE.exists():
        pytest.skip(f"{REALMODE} is absent (see tests/data/kvm-unit-tests/README.md)")
    done = run_pykvm("run", str(REALMODE), "--timeout", str(timeout), *options, timeout=timeout)
    lines = done.stdout.splitlines()
    passed = [line for line in lines if line.startswith("PASS:")]
    failed = [line for line in lines if line.startswith("FAIL:")]
    return done, passed, failed


def test_kvm_unit_tests_realmode_passes_every_check_with_the_testdev():
    done, passed, failed = _realmode("--testdev", timeout=60)
    assert not failed, failed
    assert len(passed) == ALL_CHECKS, done.stdout[-2000:] + done.stderr
    assert "PASS: sti inhibit" in passed
    assert done.returncode == 1, done.stderr          # it wrote 0 failures to the debug-exit port
    assert "cycles/emulated jump instruction" in done.stdout


def test_kvm_unit_tests_realmode_without_the_testdev_waits_for_its_first_interrupt():
    done, passed, failed = _realmode(timeout=3)
    assert not failed, failed
    assert len(passed) == CHECKS_BEFORE_THE_FIRST_INTERRUPT, done.stdout[-2000:] + done.stderr
    assert done.returncode == 10, done.stderr         # still waiting in sti; hlt at --timeout


TEST386 = Path(__file__).parent / "data" / "test386"


def test_test386_passes_every_ring0_test_and_prints_the_reference_alu_results():
    """Every test up to POST 0xFF (it halts at the number of a failing one), then its ALU
    results line for line as the reference (flags included; undefined ones are masked)."""
    from pykvm.machine import Machine

    out = io.BytesIO()
    with Machine(serial_output=out, bios=(TEST386 / "test386.bin").read_bytes()) as machine:
        status = machine.run(timeout=600)
        machine.serial.flush()
        post = machine.platform.post.last_post_code
    assert post == 0xFF, f"test386 stopped in its test {post:#04x} (tests/data/test386/README.md)"
    assert status == 0                                 # cli; hlt after POST 0xFF
    got = out.getvalue().decode().splitlines()
    want = gzip.decompress((TEST386 / "test386-EE-reference.txt.gz").read_bytes()).decode().splitlines()
    differing = [(n, a, b) for n, (a, b) in enumerate(zip(got, want), 1) if a.rstrip() != b.rstrip()]
    assert not differing, "first differences (line, pykvm, reference): " + repr(differing[:5])
    assert len(got) == len(want) == 44926


# -- kvm-unit-tests' protected-mode and long-mode suites --------------------------------------------
KUT = REALMODE.parent


def _kvm_unit_test(path: str, timeout: float = 120):
    """Run one kvm-unit-tests binary as their own runner does on QEMU: a multiboot kernel with
    the environment (one CPU) as its initrd module, pc-testdev, the debug-exit port."""
    image = KUT / path
    if not image.exists():
        pytest.skip(f"{image} is absent (see tests/data/kvm-unit-tests/README.md)")
    done = run_pykvm("run", str(image), "--testdev", "--module", str(KUT / "env"), "--mem", "128M",
                     "--timeout", str(timeout), "--stats", timeout=timeout)
    lines = done.stdout.splitlines()
    failed = sorted(line for line in lines if line.startswith("FAIL:"))
    summary = [line for line in lines if line.startswith("SUMMARY:")]
    return done, failed, summary


@pytest.mark.parametrize("path,checks", [("i386/setjmp.flat", 10), ("i386/cmpxchg8b.flat", 1),
                                         ("i386/eventinj.flat", 15), ("i386/smap.flat", 18)])
def test_kvm_unit_tests_i386_run_whole_in_the_emulator_and_pass(path, checks):
    """32-bit paged protected mode from start to end: start-up (the local APIC, the SMP
    bring-up with one CPU), the checks, the exit. eventinj delivers exceptions, self-IPIs
    held back by the TPR, NMIs (one faulting on the IDT page, one on its IRET) and a #PF
    through a task gate while a #DE or #NP is being delivered; smap, supervisor accesses to
    user pages under SMAP and SMEP with EFLAGS.AC set and clear (QEMU TCG: the same 18)."""
    done, failed, summary = _kvm_unit_test(path)
    assert not failed, failed
    assert summary == [f"SUMMARY: {checks} tests"], done.stdout[-2000:] + done.stderr
    assert done.returncode == 1, done.stderr
    assert " 0 conversions to PVM mode" in done.stderr


def test_kvm_unit_tests_msr_fails_in_the_emulator_exactly_where_kvm_does():
    """The same 1,148 MSR checks built for i386 (every one in pykvm's emulator) and for x86_64
    (every one under KVM, in PVM mode): one processor on both sides of the conversion, so the
    same checks fail. The ones that fail are PVM's: it does not refuse guest access to
    SPEC_CTRL, PRED_CMD and FLUSH_CMD that this vCPU's CPUID does not offer (QEMU TCG is no
    oracle here: it fails 980 of them)."""
    emulated, emulated_failed, emulated_summary = _kvm_unit_test("i386/msr.flat")
    kvm, kvm_failed, kvm_summary = _kvm_unit_test("x86_64/msr.flat")
    assert emulated_summary == kvm_summary and kvm_summary, emulated.stdout[-2000:] + kvm.stdout[-2000:]
    assert emulated_failed == kvm_failed
    assert " 0 conversions to PVM mode" in emulated.stderr and " 1 conversions" in kvm.stderr


def test_kvm_unit_tests_taskswitch_prints_what_qemu_prints():
    """A #UD through a task gate: the handler task sees the back link and NT, and IRET returns
    to the faulting task. The suite reports by printing; QEMU 7.2 TCG prints these lines."""
    done, failed, _ = _kvm_unit_test("i386/taskswitch.flat")
    assert done.stdout.splitlines()[-3:] == [
        "TR=20 (interrupt) Main TSS back link 0. Intr TSS back link 80", "error code 1234", "post fault"]
    assert done.returncode == 1 and not failed, done.stderr


def test_kvm_unit_tests_taskswitch2_passes_up_to_its_virtual_8086_task():
    """Task gates in the GDT and the IDT (far CALL and JMP, INT, NMIs, IRQs and exceptions
    through them), each check as on QEMU; then it IRETs into a virtual-8086 task, user mode,
    which PVM runs only in PVM mode: the run ends there with the emulation error."""
    done, failed, _ = _kvm_unit_test("i386/taskswitch2.flat")
    passed = [line for line in done.stdout.splitlines() if line.startswith("PASS:")]
    assert not failed and len(passed) == 11, done.stdout[-2000:]
    assert passed[-1] == "PASS: PF exception"
    assert "a task switch to virtual-8086 mode" in done.stderr and done.returncode == 8


def test_kvm_unit_tests_ioapic_passes_every_check_under_kvm():
    """x86_64: long mode under KVM (PVM mode), pc-testdev's IRQ lines into the I/O APIC, its
    interrupts through the local APIC: registers, edge and level pins, masking, remote IRR and
    the EOI broadcast, TMR, and two edges taken back to back at the same RIP (QEMU TCG: the same
    19)."""
    done, failed, summary = _kvm_unit_test("x86_64/ioapic.flat")
    assert not failed, failed
    assert summary == ["SUMMARY: 19 tests"], done.stdout[-2000:] + done.stderr
    assert done.returncode == 1 and " 1 conversions" in done.stderr
