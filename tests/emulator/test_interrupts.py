"""External interrupts in the emulator: taken at instruction boundaries with IF=1, one
instruction late after STI or MOV SS, never with IF=0, waking HLT, right after the port write
that raised the request, through the IVT or the IDT with IF cleared by interrupt gates."""

from __future__ import annotations

import pytest

from pykvm.x86 import descriptors as D
from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import install_gdt, install_idt, protected_mode, real_mode, standard_gdt

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")

VECTOR = 0x20
REQUEST_PORT = 0x500      # a write of 1 raises the request, 0 withdraws it


class Controller:
    """A one-line interrupt controller: a port raises or withdraws the request, INTA takes it."""

    def __init__(self, emu, bus):
        self.emu = emu
        self.acknowledged = 0
        emu.interrupt_controller = self
        bus.pio.register(REQUEST_PORT, 1, self)

    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        self.emu.set_intr(bool(value))

    def acknowledge(self) -> int:
        self.acknowledged += 1
        self.emu.set_intr(False)
        return VECTOR


def run_real(source: str, limit: int = 1000):
    """Run real-mode ``source`` (at 0x7c00) to its HLT; the handler at 0x7e00 counts in SI and IRETs."""
    code = assemble(source + "\n.org 0x200\ninc si\niret\n", org=0x7C00)
    emu, mem, bus = real_mode(code)
    mem.write_u16(VECTOR * 4, 0x7E00)
    controller = Controller(emu, bus)
    total = 0
    while not emu.state.halted and total < limit:
        total += emu.run(limit - total)
    return emu, controller


def test_a_request_raised_by_a_port_write_is_taken_at_the_next_boundary():
    emu, controller = run_real("""
        mov dx, 0x500
        mov al, 1
        sti
        out dx, al
        mov bx, si          # 1: the interrupt ran before this instruction
        hlt
    """)
    assert emu.state.gpr[3] == 1 and controller.acknowledged == 1


def test_interrupts_wait_while_if_is_clear():
    emu, controller = run_real("""
        cli
        mov dx, 0x500
        mov al, 1
        out dx, al
        mov bx, si          # 0: IF=0
        sti
        mov cx, si          # 0: the STI shadow covers this instruction
        mov di, si          # 1
        hlt
    """)
    st = emu.state
    assert (st.gpr[3], st.gpr[1], st.gpr[7]) == (0, 0, 1)


def test_mov_ss_shadows_one_instruction():
    code = assemble("""
        xor bx, bx
        sti
        nop
        mov ss, bx
        mov cx, si          # 0: in the MOV SS shadow
        mov di, si          # 1
        hlt
        .org 0x200
        inc si
        iret
    """, org=0x7C00)
    emu, mem, bus = real_mode(code)
    mem.write_u16(VECTOR * 4, 0x7E00)
    Controller(emu, bus)
    assert emu.run(4) == 4 and emu.state.interrupt_shadow
    emu.set_intr(True)                   # the request arrives right after MOV SS
    while not emu.state.halted:
        emu.run(100)
    assert (emu.state.gpr[1], emu.state.gpr[7]) == (0, 1)


def test_hlt_sleeps_until_the_request_and_resumes_after_it():
    code = assemble("sti\nhlt\nmov bx, si\nhlt\n.org 0x200\ninc si\niret\n", org=0x7C00)
    emu, mem, bus = real_mode(code)
    mem.write_u16(VECTOR * 4, 0x7E00)
    Controller(emu, bus)
    emu.run(100)
    assert emu.state.halted and emu.run(100) == 0          # nothing pending: stays halted
    emu.set_intr(True)
    while emu.state.gpr[3] == 0 and emu.run(100) or not emu.state.halted:
        pass
    assert emu.state.gpr[3] == 1 and emu.state.rip == 0x7C00 + 4 + 1


def test_protected_mode_interrupt_gate_clears_if_and_pushes_the_boundary():
    org = 0x100000
    code = assemble("""
        sti
        mov dx, 0x500
        mov al, 1
        out dx, al
    after:
        mov ebx, esi
        hlt
        .org 0x100
        pushfd
        pop edi             # EFLAGS inside the handler: IF clear
        mov esi, [esp]      # the pushed EIP: the instruction after the OUT
        iretd
    """, 32, org)
    emu, mem, bus = protected_mode(code)
    install_gdt(emu, mem, standard_gdt())
    install_idt(emu, mem, {VECTOR: D.encode_gate(0x08, org + 0x100, D.SYS_INT_GATE32)})
    Controller(emu, bus)
    total = 0
    while not emu.state.halted and total < 100:
        total += emu.run(100)
    st = emu.state
    assert not st.gpr[7] & 0x200 and st.rflags & 0x200
    assert st.gpr[3] == org + code.index(bytes.fromhex("89f3"))      # mov ebx, esi


def test_an_interrupt_stops_a_long_rep_between_elements_and_it_resumes_after():
    """SDM (REP): an interrupt may be taken between iterations; the pushed return address is
    the string instruction itself, which resumes with the remaining count."""
    code = assemble("""
        mov ax, 0x1000
        mov es, ax
        xor di, di
        mov cx, 0xc000
        mov al, 0x5a
        sti
    rep_stos:
        rep stosb
        mov bx, si
        hlt
        .org 0x200
        inc si
        mov bp, sp
        mov dx, [bp]        # the return IP
        iret
    """, org=0x7C00)
    emu, mem, bus = real_mode(code)
    mem.write_u16(VECTOR * 4, 0x7E00)
    Controller(emu, bus)

    class RaiseOnSecondLook:
        looks = 0

        @property
        def pending(self):
            self.looks += 1
            if self.looks == 2:
                emu.set_intr(True)
            return False

    emu.events = RaiseOnSecondLook()
    while not emu.state.halted:
        emu.run(100)
    st = emu.state
    assert st.gpr[3] == 1 and st.gpr[2] == 0x7C00 + code.index(b"\xf3\xaa")   # stopped inside the REP
    assert st.gpr[1] & 0xFFFF == 0 and mem.read(0x10000, 0xC000) == b"\x5a" * 0xC000
