"""String instructions: REP MOVS/STOS (bulk and overlapping), CMPS/SCAS termination, DF,
16-bit wrap, INS/OUTS, a fault in the middle of REP MOVS with paging."""

from __future__ import annotations

import pytest

from pykvm.x86 import descriptors as D
from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import Recorder, install_gdt, install_idt, protected_mode, real_mode, run_until_halt, standard_gdt

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")
ORG = 0x100000


def pm_run(code: str):
    emu, mem, bus = protected_mode(assemble(code + "\nhlt", 32, ORG))
    return emu, mem, bus


def finish(emu):
    while not emu.state.halted:
        emu.run(1000)


def test_rep_stos_and_movs_bulk():
    emu, mem, _ = pm_run("""
        cld
        mov edi, 0x200000
        mov eax, 0xa1b2c3d4
        mov ecx, 5000
        rep stosd
        mov esi, 0x200000
        mov edi, 0x300001
        mov ecx, 20000
        rep movsb
    """)
    finish(emu)
    assert mem.read(0x200000, 20000) == bytes.fromhex("d4c3b2a1") * 5000
    assert mem.read(0x300001, 20000) == mem.read(0x200000, 20000)
    st = emu.state
    assert st.gpr[1] == 0 and st.gpr[6] == 0x200000 + 20000 and st.gpr[7] == 0x300001 + 20000


def test_overlapping_forward_movs_replicates_like_a_cpu():
    emu, mem, _ = pm_run("""
        cld
        mov esi, 0x200000
        lea edi, [esi + 3]
        mov ecx, 30
        rep movsb
    """)
    mem.write(0x200000, b"abc")
    finish(emu)
    assert mem.read(0x200000, 33) == b"abc" * 11


def test_backward_movs_with_std():
    emu, mem, _ = pm_run("""
        std
        mov esi, 0x20000c
        mov edi, 0x30000c
        mov ecx, 4
        rep movsd
        cld
    """)
    mem.write(0x200000, bytes(range(16)))
    finish(emu)
    assert mem.read(0x300000, 16) == bytes(range(16))
    assert emu.state.gpr[6] == 0x1FFFFC and emu.state.gpr[7] == 0x2FFFFC


def test_repe_cmps_and_repne_scas():
    emu, mem, _ = pm_run("""
        cld
        mov esi, 0x200000
        mov edi, 0x200100
        mov ecx, 16
        repe cmpsb
        mov ebx, ecx
        mov ebp, esi
        mov edi, 0x200000
        mov al, 'x'
        mov ecx, 100
        repne scasb
    """)
    mem.write(0x200000, b"hello, world! xyz")
    mem.write(0x200100, b"hello, there")
    finish(emu)
    st = emu.state
    assert st.gpr[3] == 16 - 8 and st.gpr[5] == 0x200008        # stopped after 'w' != 't'
    assert st.gpr[7] == 0x200000 + 15 and st.rflags & 0x40       # found 'x' at offset 14


def test_rep_with_zero_count_does_nothing():
    emu, mem, _ = pm_run("xor ecx, ecx\nmov edi, 0x200000\nmov al, 1\nrep stosb")
    finish(emu)
    assert mem.read_u8(0x200000) == 0 and emu.state.gpr[7] == 0x200000


def test_16bit_addressing_wraps_si_and_di():
    code = assemble("""
        mov si, 0xfffe
        mov di, 0x100
        mov cx, 4
        rep movsb
        hlt
    """, org=0x7C00)
    emu, mem, _ = real_mode(code)
    mem.write(0xFFFE, b"ab")
    mem.write(0x0, b"cd")
    finish(emu)
    assert mem.read(0x100, 4) == b"abcd" and emu.state.gpr[6] == 2


def test_ins_and_outs():
    emu, mem, bus = pm_run("""
        cld
        mov dx, 0x700
        mov esi, 0x200000
        mov ecx, 3
        rep outsw
        mov edi, 0x200100
        mov ecx, 2
        rep insb
    """)
    dev = Recorder(0x5A)
    bus.pio.register(0x700, 2, dev)
    mem.write(0x200000, bytes.fromhex("010002000300"))
    finish(emu)
    assert dev.writes == [(0, 2, 1), (0, 2, 2), (0, 2, 3)]
    assert mem.read(0x200100, 2) == b"\x5a\x5a"


def test_fault_in_the_middle_of_rep_movs_is_restartable():
    code = """
        mov eax, 0x10000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        cld
        mov esi, 0x200000
        mov edi, 0x3ff000
        mov ecx, 0x2000
        rep movsb
        hlt
        .org 0x800
        pop eax
        mov ebx, cr2
        hlt
    """
    emu, mem, _ = protected_mode(assemble(code, 32, ORG))
    install_gdt(emu, mem, standard_gdt())
    install_idt(emu, mem, {14: D.encode_gate(0x08, ORG + 0x800)})
    mem.write_u32(0x10000, 0x11003)                 # identity 0..4 MiB except page 0x400000+
    for i in range(1024):
        mem.write_u32(0x11000 + 4 * i, (i << 12) | 3 if i < 0x3FF + 1 else 0)
    mem.write_u32(0x10004, 0)                       # nothing mapped at 4 MiB
    mem.write(0x200000, bytes(range(256)) * 32)
    finish(emu)
    st = emu.state
    assert st.gpr[3] == 0x400000 and st.gpr[0] == 0x2
    # 0x1000 bytes were copied before the fault, and the registers say so: the pushed EIP is the
    # REP MOVSB itself, so returning from the handler would resume the copy where it stopped.
    assert mem.read(0x3FF000, 0x1000) == (bytes(range(256)) * 16)
    assert (st.gpr[1], st.gpr[6], st.gpr[7]) == (0x1000, 0x201000, 0x400000)
    assert mem.read_u32(st.gpr[4]) == ORG + 0x23     # pushed EIP: the faulting REP MOVSB


def test_fault_in_repe_cmps_restores_eflags():
    # SDM REP: a fault during REPE/REPNE CMPS/SCAS restores EFLAGS to their value before the
    # instruction; ESI/EDI/ECX keep the iterations that completed.
    code = """
        mov esi, 0x3fe
        mov edi, 0x200000
        mov ecx, 4
        stc
        repe cmpsb
        hlt
        .org 0x800
        pushfd
        pop ebx
        hlt
    """
    emu, mem, _ = protected_mode(assemble(code, 32, ORG))
    install_gdt(emu, mem, standard_gdt() + [D.encode_descriptor(0x300000, 0x3FF, 0x2, db=1)])
    install_idt(emu, mem, {13: D.encode_gate(0x08, ORG + 0x800)})
    emu.state.seg[3] = emu.state.seg[3].copy()
    emu.state.seg[3].base, emu.state.seg[3].limit = 0x300000, 0x3FF
    emu.sync()
    finish(emu)
    st = emu.state
    flags = mem.read_u32(st.gpr[4] + 12)                  # EFLAGS image in the #GP frame
    assert flags & 1 and not flags & 0x40                  # CF from STC, not ZF from the compares
    assert (st.gpr[1], st.gpr[6]) == (2, 0x400)            # two bytes compared before the fault


class _Pending:
    """A pvm.Events stand-in that has a request on its ``polls``-th look only (the run loop
    handles it and clears it)."""

    def __init__(self, polls: int):
        self.polls = polls

    @property
    def pending(self) -> bool:
        self.polls -= 1
        return self.polls == 0


@pytest.mark.parametrize("code", ["rep stosb", "rep lodsb", "repe cmpsb", "rep movsb"])
def test_a_long_rep_stops_between_elements_for_an_event_and_resumes(code):
    """Element-wise (LODS, CMPS) and bulk (STOS, MOVS) REPs both stop when the run loop has
    an event, leaving RIP on the instruction and ECX/ESI/EDI describing the work done."""
    from pykvm.emulator.strings import PREEMPT_CHECK

    source = f"mov ecx, 0x30000\nmov esi, 0x200000\nmov edi, 0x240000\n{code}\nhlt"
    reference, _, _ = protected_mode(assemble(source, 32, 0x100000))
    run_until_halt(reference)
    emu, _, _ = protected_mode(assemble(source, 32, 0x100000))
    emu.events = _Pending(polls=2)
    emu.run(100)
    rep_rip = 0x100000 + 15
    assert emu.state.rip == rep_rip and 0 < emu.state.gpr[1] < 0x30000, "it ran to the end"
    assert emu.state.gpr[1] >= 0x30000 - 3 * max(PREEMPT_CHECK, 0x1000)
    run_until_halt(emu)
    assert emu.state.gpr == reference.state.gpr and emu.state.rip == reference.state.rip
