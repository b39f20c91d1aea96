"""Privilege levels: IRET to ring 3, I/O and privileged instructions faulting there, interrupt
delivery back to ring 0 through the TSS stack, far RET to an outer level; external interrupt
injection; exceptions in IA-32e compatibility mode (64-bit IDT)."""

from __future__ import annotations

import pytest

from pykvm.x86 import descriptors as D
from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import install_gdt, install_idt, protected_mode, real_mode

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")
ORG = 0x100000
TSS = 0x5000

GDT = [0, D.flat_descriptor(True), D.flat_descriptor(False),
       D.flat_descriptor(True, dpl=3), D.flat_descriptor(False, dpl=3),          # 0x18 / 0x20 user
       D.encode_descriptor(TSS, 0x67, D.SYS_TSS32_AVAIL, s=0)]                    # 0x28 TSS


def setup(code: str, handler_vectors=(13,)):
    emu, mem, _ = protected_mode(assemble(code, 32, ORG))
    install_gdt(emu, mem, GDT)
    gates = {v: D.encode_gate(0x08, ORG + 0x800 + 0x20 * v) for v in handler_vectors}
    gates[0x80] = D.encode_gate(0x08, ORG + 0x700, D.SYS_INT_GATE32, dpl=3)
    install_idt(emu, mem, gates)
    mem.write_u32(TSS + 4, 0x70000)      # ESP0
    mem.write_u32(TSS + 8, 0x10)         # SS0
    return emu, mem


def finish(emu, limit=10_000):
    total = 0
    while not emu.state.halted and total < limit:
        total += emu.run(limit - total)


TO_RING3 = """
    mov ax, 0x28
    ltr ax
    push 0x23           # SS
    push 0x60000        # ESP
    pushfd
    push 0x1b           # CS
    push offset user
    iretd
user:
"""

HANDLERS = """
    .org 0x700
    mov esi, [esp + 4]  # the CS the interrupt came from
    mov edi, esp
    mov ebx, 0x80
    hlt
    .org 0x800 + 0x20 * 13
    pop eax             # error code
    mov esi, [esp + 4]
    mov edi, esp
    mov ebx, 13
    hlt
"""


def test_iret_to_ring3_and_int_back_through_the_tss():
    emu, mem = setup(TO_RING3 + "mov ecx, 7\nint 0x80\n" + HANDLERS)
    finish(emu)
    st = emu.state
    assert st.gpr[3] == 0x80 and st.gpr[1] == 7
    assert st.gpr[6] == 0x1B                       # came from ring 3
    assert st.gpr[7] == 0x70000 - 20               # ring-0 stack from the TSS: SS, ESP, EFLAGS, CS, EIP
    assert mem.read_u32(0x70000 - 4) == 0x23 and mem.read_u32(0x70000 - 8) == 0x60000
    assert st.cpl == 0 and st.seg[2].selector == 0x10
    assert mem.read_u64(0x1028) >> 41 & 1          # the TSS descriptor is now busy


@pytest.mark.parametrize("insn", ["out 0x80, al", "cli", "hlt", "mov eax, cr0", "lgdt [0]", "wrmsr"])
def test_privileged_instructions_fault_in_ring3(insn):
    emu, mem = setup(TO_RING3 + insn + "\nmov ebx, 0xff\nhlt\n" + HANDLERS)
    finish(emu)
    st = emu.state
    assert (st.gpr[3], st.gpr[0], st.gpr[6]) == (13, 0, 0x1B)


def test_io_allowed_in_ring3_when_iopl_is_3():
    code = TO_RING3.replace("pushfd", "pushfd\nor dword ptr [esp], 0x3000") + "out 0x80, al\nint 0x80\n" + HANDLERS
    emu, mem = setup(code)
    finish(emu)
    assert emu.state.gpr[3] == 0x80


def test_software_int_needs_gate_dpl():
    emu, mem = setup(TO_RING3 + "int 0x81\n" + HANDLERS)
    install_idt(emu, mem, {13: D.encode_gate(0x08, ORG + 0x800 + 0x20 * 13),
                           0x81: D.encode_gate(0x08, ORG + 0x700, dpl=0)})
    finish(emu)
    assert (emu.state.gpr[3], emu.state.gpr[0]) == (13, 0x81 * 8 + 2)


def test_far_ret_to_an_outer_level_nulls_inner_data_segments():
    code = """
        push 0x23
        push 0x60000
        push 0x1b
        push offset user
        retf
    user:
        mov ebx, 3
        hlt
    """
    emu, mem = setup(code)
    assert emu.run(100) == 5
    st = emu.state
    assert st.cpl == 3 and st.seg[1].selector == 0x1B and st.seg[2].selector == 0x23
    assert st.gpr[4] == 0x60000 and st.rip == ORG + 2 + 5 + 2 + 5 + 1
    # DS/ES/FS/GS held DPL-0 data segments: not usable at CPL 3, so RETF nulled them.
    assert all(st.seg[i].unusable for i in (0, 3, 4, 5))


class OneInterrupt:
    """An interrupt controller with one request pending: INTA returns ``vector`` and drops INTR."""

    def __init__(self, emu, vector: int):
        self.emu, self.vector = emu, vector
        emu.interrupt_controller = self
        emu.set_intr(True)

    def acknowledge(self) -> int:
        self.emu.set_intr(False)
        return self.vector


def test_external_interrupt_real_mode():
    code = assemble("sti\n1: jmp 1b\n.org 0x100\nmov bx, 0x99\nhlt", org=0x7C00)
    emu, mem, _ = real_mode(code)
    mem.write_u16(0x20 * 4, 0x7D00)
    emu.run(10)
    OneInterrupt(emu, 0x20)
    assert emu.run(1) == 0                    # the delivery is the step: no instruction ran
    assert emu.state.rip == 0x7D00 and not emu.state.rflags & 0x200
    assert emu.interrupts_delivered == 1
    finish(emu)
    assert emu.state.gpr[3] == 0x99


def test_exception_in_compatibility_mode_uses_the_64bit_idt():
    code = """
        ud2
        .org 0x400
        hlt
    """
    emu, mem, _ = protected_mode(assemble(code, 32, ORG))
    gdt = [0, D.flat_descriptor(True), D.flat_descriptor(False), D.flat_descriptor(True, l=1)]
    install_gdt(emu, mem, gdt)
    st = emu.state
    # Long mode already on (as right after enabling paging with LME), running 32-bit compat code.
    mem.write_u64(0x10000, 0x11003)
    mem.write_u64(0x11000, 0x12003)
    for i in range(4):
        mem.write_u64(0x12000 + 8 * i, (i << 21) | 0x83)
    st.cr3, st.cr4, st.efer = 0x10000, 0x20, 0x500
    st.cr0 |= 0x80000000
    idt = 0x3000
    gate = D.encode_gate(0x18, ORG + 0x400, D.SYS_INT_GATE32)
    mem.write_u64(idt + 16 * 6, gate)
    mem.write_u64(idt + 16 * 6 + 8, 0)
    st.idt.base, st.idt.limit = idt, 16 * 32 - 1
    st.gpr[4] = 0x90008
    emu.run(10)
    assert emu.bitness == 64 and st.rip == ORG + 0x400 and st.seg[1].selector == 0x18
    assert st.gpr[4] == 0x90000 - 40                 # 16-byte aligned, then SS, RSP, RFLAGS, CS, RIP
    assert mem.read_u64(0x90000 - 40) == ORG       # the faulting UD2
