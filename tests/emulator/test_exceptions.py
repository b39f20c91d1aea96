"""Exception delivery: real-mode IVT, protected-mode IDT gates with error codes, #PF with
CR2, #DF escalation, triple fault, INT n / IRET, precise faults."""

from __future__ import annotations

import pytest

from pykvm.emulator import TripleFault
from pykvm.x86 import descriptors as D
from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import install_gdt, install_idt, protected_mode, real_mode, standard_gdt

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")

ORG = 0x100000


def run_all(emu, limit=10_000):
    total = 0
    while not emu.state.halted and total < limit:
        total += emu.run(limit - total)
    return total


def pm(code: str, extra_gdt=(), gates=None):
    emu, mem, bus = protected_mode(assemble(code, 32, ORG))
    install_gdt(emu, mem, standard_gdt() + list(extra_gdt))
    if gates is not None:
        install_idt(emu, mem, {v: D.encode_gate(0x08, ORG + off, t) for v, (off, t) in gates.items()})
    return emu, mem, bus


INT32 = D.SYS_INT_GATE32
TRAP32 = D.SYS_TRAP_GATE32


def test_real_mode_divide_error_through_the_ivt():
    code = assemble("""
        sti
        mov ax, 0x1234
        xor cl, cl
        div cl
        hlt
        .org 0x80
        mov bx, 0xbeef
        hlt
    """, org=0x7C00)
    emu, mem, _ = real_mode(code)
    mem.write_u32(0, 0x07C00080 & 0xFFFF | 0x0000 << 16)   # IVT[0] = 0000:7c80
    mem.write_u16(0, 0x7C80)
    run_all(emu)
    st = emu.state
    assert st.gpr[3] == 0xBEEF
    sp = st.gpr[4]
    assert sp == 0x7000 - 6
    ip, cs, flags = mem.read_u16(sp), mem.read_u16(sp + 2), mem.read_u16(sp + 4)
    assert (ip, cs) == (0x7C00 + 1 + 3 + 2, 0)     # the faulting DIV
    assert flags & 0x200 and not st.rflags & 0x200  # IF was set, the handler runs with IF clear


def test_protected_mode_gp_error_code_is_the_selector():
    code = """
        mov ax, 0x30
        mov ds, ax
        hlt
        .org 0x100
        pop eax
        hlt
    """
    emu, _, _ = pm(code, gates={13: (0x100, INT32)})
    run_all(emu)
    assert emu.state.gpr[0] == 0x30          # error code: selector beyond the GDT limit


def test_not_present_segment_raises_np():
    notp = D.encode_descriptor(0, 0xFFFFF, 0x3, present=0, db=1, g=1)
    code = """
        mov ax, 0x18
        mov es, ax
        hlt
        .org 0x100
        pop eax
        mov ebx, 11
        hlt
    """
    emu, _, _ = pm(code, extra_gdt=[notp], gates={11: (0x100, INT32)})
    run_all(emu)
    assert (emu.state.gpr[0], emu.state.gpr[3]) == (0x18, 11)


def test_int_n_and_iret_in_protected_mode():
    code = """
        sti
        mov eax, 1
        int 0x40
        add eax, 10
        hlt
        .org 0x100
        mov ebx, [esp + 8]
        add eax, 100
        iret
    """
    emu, _, _ = pm(code, gates={0x40: (0x100, INT32)})
    run_all(emu)
    st = emu.state
    assert st.gpr[0] == 111
    assert st.gpr[3] & 0x200          # the pushed EFLAGS had IF
    assert st.rflags & 0x200          # IRET restored it
    assert st.gpr[4] == 0x90000


def test_trap_gate_keeps_if_interrupt_gate_clears_it():
    code = """
        sti
        int 0x41
        int 0x40
        hlt
        .org 0x100
        pushfd
        pop esi
        iret
        .org 0x140
        pushfd
        pop edi
        iret
    """
    emu, _, _ = pm(code, gates={0x40: (0x100, INT32), 0x41: (0x140, TRAP32)})
    run_all(emu)
    assert not emu.state.gpr[6] & 0x200 and emu.state.gpr[7] & 0x200


def test_double_fault_when_the_gp_handler_is_missing():
    code = """
        mov ax, 0x30
        mov ds, ax
        hlt
        .org 0x100
        pop eax
        mov ebx, 8
        hlt
    """
    emu, mem, _ = pm(code, gates={8: (0x100, INT32)})
    install_idt(emu, mem, {8: D.encode_gate(0x08, ORG + 0x100, INT32), 13: D.encode_gate(0x08, 0, INT32, present=0)})
    run_all(emu)
    assert (emu.state.gpr[3], emu.state.gpr[0]) == (8, 0)


def test_triple_fault_names_the_vectors():
    emu, _, _ = pm("mov ax, 0x30\nmov ds, ax\nhlt")
    emu.state.idt.limit = 0
    with pytest.raises(TripleFault) as info:
        run_all(emu)
    assert info.value.vectors[0] == 13 and 8 in info.value.vectors
    assert "#GP" in str(info.value) and "rip=0x100004" in str(info.value)


def test_faulting_push_leaves_registers_unchanged():
    # ESP points below the SS limit of an expand-up 64 KiB stack segment: #SS, ESP untouched.
    small_ss = D.encode_descriptor(0, 0xFFFF, 0x3, db=1)
    code = """
        mov ax, 0x18
        mov ss, ax
        mov esp, 0x20000
        mov eax, 5
        push eax
        hlt
        .org 0x100
        mov ebx, 12
        hlt
    """
    emu, mem, _ = pm(code, extra_gdt=[small_ss], gates={12: (0x100, INT32)})
    # The handler runs on the same (broken) stack, so give #SS a stack that works: we only check
    # the state at the fault, by single-stepping up to it.
    for _ in range(4):
        emu.step()
    assert emu.state.gpr[4] == 0x20000
    install_idt(emu, mem, {})
    with pytest.raises(TripleFault):
        emu.step()
    assert emu.state.gpr[4] == 0x20000 and emu.state.rip == ORG + 4 + 2 + 5 + 5


def test_page_fault_pushes_error_code_and_sets_cr2():
    code = """
        mov eax, 0x3000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80010000
        mov cr0, eax
        mov dword ptr [0x00400000], 1
        hlt
        .org 0x100
        pop eax
        mov ebx, cr2
        hlt
    """
    emu, mem, _ = pm(code, gates={14: (0x100, INT32)})
    # Page directory at 0x3000: identity-map the first 4 MiB with 4 KiB pages from 0x4000;
    # nothing at 4 MiB.
    mem.write_u32(0x3000, 0x4000 | 3)
    for i in range(1024):
        mem.write_u32(0x4000 + 4 * i, (i << 12) | 3)
    # The code itself lives at 1 MiB: inside the first 4 MiB, fine.
    run_all(emu)
    st = emu.state
    assert st.gpr[3] == 0x400000 and st.cr2 == 0x400000
    assert st.gpr[0] == 0x2              # not present, write, supervisor


def test_write_protect_violation_error_code():
    code = """
        mov eax, 0x3000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80010000
        mov cr0, eax
        mov dword ptr [0x5000], 1
        hlt
        .org 0x100
        pop eax
        mov ebx, cr2
        hlt
    """
    emu, mem, _ = pm(code, gates={14: (0x100, INT32)})
    mem.write_u32(0x3000, 0x4000 | 3)
    for i in range(1024):
        mem.write_u32(0x4000 + 4 * i, (i << 12) | (1 if i == 5 else 3))
    run_all(emu)
    assert emu.state.gpr[0] == 0x3 and emu.state.gpr[3] == 0x5000


def test_the_delivery_observer_is_told_where_the_flags_image_lies():
    """Real mode: INT 0x21 pushes FLAGS, CS, IP; the observer gets the FLAGS slot (SP + 4)."""
    from tests.emulator.machine import real_mode

    emu, memory, _ = real_mode(b"\xcd\x21\xf4")
    seen = []
    emu.delivery_observer = lambda vector, address, size: seen.append((vector, address, size))
    emu.state.rflags = 0x2 | 0x1            # CF set, so the image is recognisable
    emu.run(1)
    sp = emu.state.gpr[4] & 0xFFFF
    assert seen == [(0x21, emu.state.seg[2].base + sp + 4, 2)]
    assert memory.read(seen[0][1], 2) == (0x3).to_bytes(2, "little")
