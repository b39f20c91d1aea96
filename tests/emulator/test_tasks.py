"""Task switches in the emulator, checked field by field against the SDM (vol. 3, 8.3-8.4):
what goes into the old TSS, what comes from the new one, the busy bits, the back link and
EFLAGS.NT, and the faults of a bad TSS. kvm-unit-tests' taskswitch, taskswitch2 and eventinj
(tests/test_peer_suites.py) run the same code as an independent check."""

from __future__ import annotations

import pytest

from pykvm.emulator import control
from pykvm.emulator.faults import CpuFault
from pykvm.x86 import descriptors as D
from pykvm.x86.bits import CR0_TS, EXC_GP, EXC_TS, FLAG_NT
from pykvm.x86.state import TR, Segment
from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import install_gdt, install_idt, protected_mode, run_until_halt, standard_gdt

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")

ORG = 0x100000
MAIN_TSS, TASK_TSS = 0x20000, 0x21000
MAIN_SEL, TASK_SEL, GATE_SEL = 0x18, 0x20, 0x28
TASK_EIP = ORG + 0x100


def tss_descriptor(base: int, busy: bool = False, limit: int = 0x67) -> int:
    return D.encode_descriptor(base, limit, D.SYS_TSS32_BUSY if busy else D.SYS_TSS32_AVAIL, s=0)


def machine(code: str, task_limit: int = 0x67):
    """The main task (TR = MAIN_SEL, busy) runs ``code`` at ORG; the other task's TSS starts it
    at ORG + 0x100 with its own registers; a task gate in the GDT names it."""
    emu, mem, bus = protected_mode(assemble(code, bits=32, org=ORG))
    gdt = standard_gdt() + [tss_descriptor(MAIN_TSS, busy=True), tss_descriptor(TASK_TSS, limit=task_limit),
                            D.encode_gate(TASK_SEL, 0, D.SYS_TASK_GATE)]
    install_gdt(emu, mem, gdt)
    st = emu.state
    st.seg[TR] = Segment(selector=MAIN_SEL, base=MAIN_TSS, limit=0x67, type=D.SYS_TSS32_BUSY, present=1, dpl=0,
                         db=0, s=0, l=0, g=0, avl=0, unusable=0)
    words = {0x20: TASK_EIP, 0x24: 0x2, 0x28: 0x11, 0x2C: 0x22, 0x30: 0x33, 0x34: 0x44, 0x38: 0x8F000,
             0x3C: 0x66, 0x40: 0x77, 0x44: 0x88, 0x48: 0x10, 0x4C: 0x08, 0x50: 0x10, 0x54: 0x10, 0x58: 0x10,
             0x5C: 0x10}
    for off, value in words.items():
        mem.write_u32(TASK_TSS + off, value)
    emu.sync()
    return emu, mem


def busy(mem, selector: int) -> bool:
    return bool(mem.read(0x1000 + selector + 5, 1)[0] & 2)


@pytest.mark.parametrize("how", ["call 0x20:0", "call 0x28:0"])
def test_call_saves_the_old_task_links_the_new_one_and_iret_returns(how):
    emu, mem = machine(f"""
        mov eax, 0xAAAA
        mov esi, 0x5151
        {how}
    back:
        mov ebx, eax            # EAX as the main task left it: restored from its TSS
        hlt
        .org 0x100
        mov [0x30000], eax      # 0x11: the new task's own EAX
        pushfd
        pop dword ptr [0x30004] # its EFLAGS: NT set by the CALL
        mov ecx, cr0
        mov [0x30008], ecx      # TS set by the switch
        jmp 1f
        .org 0x140
    1:  iretd                   # NT: back to the main task
    """)
    run_until_halt(emu)
    st = emu.state
    assert emu.R[3] == 0xAAAA and mem.read_u32(0x30000) == 0x11
    assert mem.read_u32(0x30004) & FLAG_NT and mem.read_u32(0x30008) & CR0_TS
    assert mem.read_u32(MAIN_TSS + 0x40) == 0x5151                    # ESI saved in the old TSS
    assert mem.read_u32(MAIN_TSS + 0x20) == ORG + 5 + 5 + 7            # EIP after the CALL
    assert mem.read(TASK_TSS, 2) == MAIN_SEL.to_bytes(2, "little")    # back link
    # The IRET saved the nested task (EIP after its IRET, NT clear) and freed it.
    assert mem.read_u32(TASK_TSS + 0x20) == ORG + 0x141
    assert not mem.read_u32(TASK_TSS + 0x24) & FLAG_NT and not busy(mem, TASK_SEL)
    assert st.seg[TR].selector == MAIN_SEL and busy(mem, MAIN_SEL)
    assert not st.rflags & FLAG_NT


def test_jmp_frees_the_old_task_and_links_nothing():
    emu, mem = machine("""
        jmp 0x20:0
        .org 0x100
        pushfd
        pop ebp
        hlt
    """)
    run_until_halt(emu)
    assert not busy(mem, MAIN_SEL) and busy(mem, TASK_SEL) and emu.state.seg[TR].selector == TASK_SEL
    assert not emu.R[5] & FLAG_NT and mem.read(TASK_TSS, 2) == b"\0\0"
    assert emu.R[4] == 0x8F000                                         # its own stack


def test_an_exception_through_a_task_gate_pushes_its_error_code_on_the_new_tasks_stack():
    emu, mem = machine("""
        mov eax, 0x10
        mov ds, ax
        mov ax, 0x33            # beyond the GDT: #GP(0x30)
        mov ds, ax
        hlt
        .org 0x100
        pop edx                 # the error code
        hlt
    """)
    install_idt(emu, mem, {EXC_GP: D.encode_gate(TASK_SEL, 0, D.SYS_TASK_GATE)})
    run_until_halt(emu)
    assert emu.R[2] == 0x30 and emu.state.seg[TR].selector == TASK_SEL
    assert mem.read_u32(MAIN_TSS + 0x20) == ORG + 5 + 2 + 4            # the faulting MOV DS


@pytest.mark.parametrize("limit,selector,fault", [
    (0x66, TASK_SEL, (EXC_TS, TASK_SEL)),      # too short for a 32-bit TSS
    (0x67, MAIN_SEL, (EXC_GP, MAIN_SEL)),      # a busy TSS: CALL is #GP(selector)
])
def test_bad_tss_faults_in_the_old_task(limit, selector, fault):
    emu, mem = machine("hlt\n", task_limit=limit)
    with pytest.raises(CpuFault) as info:
        control.far_call(emu, selector, 0, 4, ORG + 7)
    assert (info.value.vector, info.value.error_code) == fault
    assert emu.state.seg[TR].selector == MAIN_SEL
    assert mem.read_u32(MAIN_TSS + 0x20) == 0                         # nothing saved
