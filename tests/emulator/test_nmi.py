"""NMIs in the emulator (SDM vol. 3, 6.7.1 and 6.8.1): taken at the next instruction boundary
whatever IF says, through vector 2; blocked from their delivery until the next IRET, with one
more latched meanwhile and any further ones lost; ahead of INTR; waking HLT; held for one
instruction by the MOV SS shadow. kvm-unit-tests' eventinj (tests/test_peer_suites.py) sends
NMIs through the local APIC to this same code."""

from __future__ import annotations

import pytest

from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import real_mode
from tests.emulator.test_interrupts import VECTOR as INTR_VECTOR
from tests.emulator.test_interrupts import Controller

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")

NMI_PORT = 0x501          # each write sends one NMI, beside test_interrupts' INTR port 0x500


class Signals(Controller):
    """test_interrupts' one-line interrupt controller (port 0x500 raises or withdraws INTR,
    vector 0x20), and an NMI port beside it."""

    class NmiPort:
        def __init__(self, emu):
            self.emu = emu

        def read(self, offset, size):
            return 0

        def write(self, offset, size, value):
            self.emu.raise_nmi()

    def __init__(self, emu, bus):
        super().__init__(emu, bus)
        bus.pio.register(NMI_PORT, 1, self.NmiPort(emu))


# The NMI handler (0x7e00) counts in SI and, the first time, sends NMIs from inside itself
# (BP of them); the INTR handler (0x7f00) records SI (NMIs so far) in DI.
HANDLERS = """
    .org 0x200
    inc si
    cmp si, 1
    jne 2f
    mov cx, bp
    mov dx, 0x501
1:  jcxz 2f
    out dx, al
    dec cx
    jmp 1b
2:  mov ax, si
    iret
    .org 0x300
    mov di, si
    or di, 0x100
    iret
"""


def run(source: str, limit: int = 2000):
    code = assemble(source + HANDLERS, org=0x7C00)
    emu, mem, bus = real_mode(code)
    mem.write_u16(2 * 4, 0x7E00)
    mem.write_u16(INTR_VECTOR * 4, 0x7F00)
    signals = Signals(emu, bus)
    total = 0
    while not emu.state.halted and total < limit:
        total += emu.run(limit - total)
    return emu, signals


def test_an_nmi_is_taken_at_the_next_boundary_with_interrupts_off():
    emu, _ = run("""
        cli
        mov dx, 0x501
        out dx, al
        mov bx, si          # 1: delivered right after the OUT
        pushf
        pop cx              # IF still clear: the NMI did not need it
        hlt
    """)
    st = emu.state
    assert st.gpr[3] == 1 and not st.gpr[1] & 0x200
    assert not st.nmi_pending and not st.nmi_blocked     # IRET ended the blocking


@pytest.mark.parametrize("inside,delivered", [(1, 2), (5, 2)])
def test_nmis_inside_the_handler_are_latched_once_and_taken_after_iret(inside, delivered):
    """One NMI arriving while the handler runs waits for its IRET; more than one are one."""
    emu, _ = run(f"""
        cli
        mov bp, {inside}
        mov dx, 0x501
        out dx, al
        mov bx, si
        hlt
    """)
    assert emu.state.gpr[3] == delivered


def test_an_nmi_goes_before_intr_and_intr_waits_for_if():
    emu, signals = run("""
        mov dx, 0x500
        mov al, 1
        out dx, al          # INTR up, IF = 0
        mov dx, 0x501
        out dx, al          # NMI
        mov bx, si          # 1: the NMI was taken, INTR was not
        sti
        nop
        hlt
    """)
    st = emu.state
    assert st.gpr[3] == 1 and signals.acknowledged == 1 and st.gpr[7] == 0x101


def test_an_nmi_wakes_hlt_with_interrupts_off():
    code = assemble("cli\nhlt\nmov bx, si\nhlt\n" + HANDLERS, org=0x7C00)
    emu, mem, bus = real_mode(code)
    mem.write_u16(2 * 4, 0x7E00)
    Signals(emu, bus)
    emu.run(100)
    assert emu.state.halted and emu.run(100) == 0
    emu.raise_nmi()
    while emu.state.gpr[3] == 0 and emu.run(100) or not emu.state.halted:
        pass
    assert emu.state.gpr[3] == 1 and emu.state.rip == 0x7C00 + 5


def test_mov_ss_holds_an_nmi_for_one_instruction():
    code = assemble("xor bx, bx\nnop\nmov ss, bx\nmov cx, si\nmov di, si\nhlt\n" + HANDLERS, org=0x7C00)
    emu, mem, bus = real_mode(code)
    mem.write_u16(2 * 4, 0x7E00)
    Signals(emu, bus)
    assert emu.run(3) == 3 and emu.state.interrupt_shadow
    emu.raise_nmi()
    while not emu.state.halted:
        emu.run(100)
    assert (emu.state.gpr[1], emu.state.gpr[7]) == (0, 1)
