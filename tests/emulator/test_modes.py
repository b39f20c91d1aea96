"""Mode transitions: real -> protected -> paging -> long mode, back to real mode, unreal mode."""

from __future__ import annotations

import pytest

from pykvm.emulator import TripleFault
from pykvm.x86.state import CS
from pykvm.errors import EmulationError
from pykvm.x86 import descriptors as D
from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import install_gdt, protected_mode, real_mode

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")

GDT = [0, D.flat_descriptor(True), D.flat_descriptor(False), D.flat_descriptor(True, l=1),
       D.encode_descriptor(0, 0xFFFF, 0xA), D.encode_descriptor(0, 0xFFFF, 0x2)]   # 0x20/0x28: 16-bit


def run_all(emu, limit=100_000):
    total = 0
    while not emu.state.halted and total < limit:
        n = emu.run(limit - total)
        total += n
        if emu.bitness == 64:
            break
    return total


REAL_TO_PROTECTED = """
    cli
    lgdt [gdtr]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp 0x08:pm32
gdtr: .word 6*8-1
      .long 0x1000
.code32
pm32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x90000
"""


def test_real_to_protected_mode_with_a_far_jump():
    code = assemble(REAL_TO_PROTECTED + "mov dword ptr [0x200000], 0xcafe\nhlt", org=0x7C00)
    emu, mem, _ = real_mode(code, mem_size=4 << 20)
    install_gdt(emu, mem, GDT)
    emu.state.gdt.limit = 0
    run_all(emu)
    st = emu.state
    assert st.cr0 & 1 and st.seg[CS].selector == 0x08 and st.seg[CS].db == 1
    assert emu.bitness == 32 and mem.read_u32(0x200000) == 0xCAFE
    assert mem.read_u64(0x1008) >> 40 & 1     # accessed bit set on the CS descriptor


def test_long_mode_entry_stops_at_64_bit_code():
    code = assemble(REAL_TO_PROTECTED + """
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov eax, 0x10000
        mov cr3, eax
        mov ecx, 0xc0000080
        rdmsr
        or eax, 0x100
        wrmsr
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov dword ptr [0x300000], 1     # compatibility mode, 4-level paging translates this
        jmp 0x18:0x200000
    """, org=0x7C00)
    emu, mem, _ = real_mode(code, mem_size=4 << 20)
    install_gdt(emu, mem, GDT)
    # PML4 at 0x10000 -> PDPT 0x11000 -> PD 0x12000 with 2 MiB identity pages.
    mem.write_u64(0x10000, 0x11003)
    mem.write_u64(0x11000, 0x12003)
    for i in range(4):
        mem.write_u64(0x12000 + 8 * i, (i << 21) | 0x83)
    run_all(emu)
    st = emu.state
    assert st.efer & 0x400 and st.efer & 0x100          # LMA set by enabling paging with LME
    assert st.seg[CS].l == 1 and st.rip == 0x200000 and emu.bitness == 64
    assert mem.read_u32(0x300000) == 1
    with pytest.raises(EmulationError):
        emu.run(10)


def test_paging_with_lme_but_without_pae_is_gp():
    code = assemble("""
        mov ecx, 0xc0000080
        mov eax, 0x100
        xor edx, edx
        wrmsr
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        hlt
    """, 32, 0x100000)
    emu, _, _ = protected_mode(code)
    emu.state.idt.limit = 0
    with pytest.raises(TripleFault) as info:
        run_all(emu)
    assert info.value.vectors[0] == 13
    assert not emu.state.cr0 & 0x80000000


def test_back_to_real_mode_and_unreal_mode():
    # Load a 4 GiB limit into DS in protected mode, drop back to real mode: DS keeps its limit,
    # so a 32-bit offset above 1 MiB works from real mode ("unreal mode").
    code = assemble(REAL_TO_PROTECTED + """
        jmp 0x20:pm16
    .code16
    pm16:
        mov eax, cr0
        and al, 0xfe
        mov cr0, eax
        jmp 0:real
    real:
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov esi, 0x200000
        mov dword ptr [esi], 0x12345678
        mov ebx, dword ptr [esi]
        hlt
    """, org=0x7C00)
    emu, mem, _ = real_mode(code, mem_size=4 << 20)
    install_gdt(emu, mem, GDT)
    run_all(emu)
    st = emu.state
    assert not st.cr0 & 1 and emu.real and emu.bitness == 16
    assert st.gpr[3] == 0x12345678 and mem.read_u32(0x200000) == 0x12345678
    assert st.seg[3].limit == 0xFFFFFFFF and st.seg[3].base == 0


def test_real_mode_offset_beyond_the_64k_limit_is_gp():
    code = assemble("mov esi, 0x10000\nmov ax, [esi]\nhlt\n.org 0x80\nmov bx, 13\nhlt", org=0x7C00)
    emu, mem, _ = real_mode(code)
    mem.write_u16(13 * 4, 0x7C80)
    run_all(emu)
    assert emu.state.gpr[3] == 13


def test_pae_paging_from_protected_mode():
    code = assemble("""
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov eax, 0x10000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov dword ptr [0x40201000], 0x55aa
        mov ebx, dword ptr [0x00201000]
        hlt
    """, 32, 0x100000)
    emu, mem, _ = protected_mode(code)
    mem.write_u64(0x10000, 0x11001)            # PDPTE 0 -> PD at 0x11000 (identity 0..4 MiB)
    mem.write_u64(0x10008, 0x12001)            # PDPTE 1 -> PD at 0x12000
    mem.write_u64(0x11000, 0x000083)
    mem.write_u64(0x11008, 0x200083)
    mem.write_u64(0x12008, 0x200083)           # 0x40200000 -> 0x200000 (2 MiB page)
    run_all(emu)
    assert emu.state.gpr[3] == 0x55AA and mem.read_u32(0x201000) == 0x55AA
