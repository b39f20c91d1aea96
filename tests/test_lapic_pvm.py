"""The local APIC from a 64-bit guest in PVM mode (KVM runs it; every access to the APIC page is an
MMIO exit pykvm's LocalApic answers): a self-IPI, the one-shot timer, an NMI sent to itself while
IF = 0, and TPR = CR8 (MOV CR8 under KVM, read back through the page). tests/devices/test_lapic.py
checks the register model; kvm-unit-tests' x86_64 start-up code drives it too
(tests/test_peer_suites.py)."""

from __future__ import annotations

import io

import pytest

from pykvm.machine import Machine
from tests.asm import assemble

pytestmark = pytest.mark.kvm

APIC = 0xFEE00000
GUEST = f"""
    mov rsp, 0x80000
    lea rdi, [rip + idt]
    lea rax, [rip + on_ipi]
    mov ebx, 0x40
    call gate
    lea rax, [rip + on_timer]
    mov ebx, 0x41
    call gate
    lea rax, [rip + on_nmi]
    mov ebx, 2
    call gate
    lidt [rip + idtr]
    mov rsi, {APIC:#x}                      # the APIC page (identity-mapped by the boot)
    xor r12, r12                            # IPIs taken
    xor r13, r13                            # timer interrupts taken
    xor r14, r14                            # NMIs taken
    mov dword ptr [rsi + 0xf0], 0x1ff # SVR: enabled
    sti
    mov dword ptr [rsi + 0x300], 0x40040   # ICR: fixed, vector 0x40, to itself
    nop
    mov r8, r12                             # 1: taken right after the ICR write
    mov dword ptr [rsi + 0x3e0], 0xb  # timer: divide by 1, one-shot, vector 0x41
    mov dword ptr [rsi + 0x320], 0x41
    mov dword ptr [rsi + 0x380], 200000    # 200 us at 1 GHz
1:  hlt                                     # until the timer's interrupt
    test r13, r13
    jz 1b
    mov r9d, dword ptr [rsi + 0x390]  # current count: 0, one-shot
    cli
    mov dword ptr [rsi + 0x300], 0x40400   # NMI to itself: IF = 0 does not hold it
    nop
    mov r10, r14                            # 1
    mov eax, 5
    mov cr8, rax                            # TPR[7:4]
    mov r11d, dword ptr [rsi + 0x80]  # 0x50
    mov eax, dword ptr [rsi + 0xb0]   # (EOI reads as 0: nothing to retire)
    mov dx, 0x2100                          # report
    mov rax, r8
    out dx, eax
    mov rax, r13
    out dx, eax
    mov rax, r9
    out dx, eax
    mov rax, r10
    out dx, eax
    mov rax, r11
    out dx, eax
    hlt
gate:                                       # IDT[ebx] = interrupt gate to rax
    shl ebx, 4
    mov word ptr [rdi + rbx], ax
    mov word ptr [rdi + rbx + 2], cs
    mov word ptr [rdi + rbx + 4], 0x8e00
    shr rax, 16
    mov word ptr [rdi + rbx + 6], ax
    shr rax, 16
    mov dword ptr [rdi + rbx + 8], eax
    ret
on_ipi:
    inc r12
    mov dword ptr [rsi + 0xb0], 0     # EOI
    iretq
on_timer:
    inc r13
    mov dword ptr [rsi + 0xb0], 0
    iretq
on_nmi:
    inc r14
    iretq
    .balign 8
idtr: .word 4095
    .quad idt
    .balign 16
idt: .space 4096
"""


class Report:
    def __init__(self):
        self.values = []

    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        self.values.append(value)


def test_ipi_timer_nmi_and_tpr_from_pvm_mode():
    report = Report()
    with Machine(64 << 20, serial_output=io.BytesIO()) as machine:
        machine.bus.pio.register(0x2100, 4, report)
        machine.load(assemble(GUEST, bits=64, org=0x100000), "flat", mode="long")
        assert machine.run(timeout=20) == 0                  # its final HLT with IF = 0
        stats = machine.stats
    # IPIs after the ICR write, timer interrupts, the timer's count after it, NMIs, TPR.
    assert report.values == [1, 1, 0, 1, 0x50]
    assert stats.conversions == 1 and stats.interrupts_injected == 2
