"""SMAP and SMEP in the emulator (SDM vol. 3, 4.6.1): what the page walk decides
(tests/x86/test_paging.py) must hold at every access, so no TLB may keep a supervisor
translation of a user page while they are on; EFLAGS.AC, which exempts explicit accesses from
SMAP, can change without a TLB flush. kvm-unit-tests' smap runs the whole feature
(tests/test_peer_suites.py)."""

from __future__ import annotations

import pytest

from pykvm.x86 import descriptors as D
from pykvm.x86.bits import CR0_PG, CR4_PSE, CR4_SMAP, CR4_SMEP
from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import install_gdt, install_idt, protected_mode, run_until_halt, standard_gdt

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")

ORG = 0x100000
USER_PAGE = 0x400000       # 4-8 MiB: a user page; 0-4 MiB: supervisor
HANDLER = ORG + 0x200


def paged(code: str, cr4: int):
    emu, mem, bus = protected_mode(assemble(code, bits=32, org=ORG), mem_size=8 << 20)
    install_gdt(emu, mem, standard_gdt())
    install_idt(emu, mem, {14: D.encode_gate(0x08, HANDLER)})
    mem.write_u32(0x10000, 0x000000 | 0x83)                  # 4 MiB, present, writable, supervisor
    mem.write_u32(0x10004, 0x400000 | 0x87)                  # 4 MiB, present, writable, user
    st = emu.state
    st.cr3, st.cr4 = 0x10000, CR4_PSE | cr4
    st.cr0 |= CR0_PG
    emu.sync()
    return emu, mem


# The #PF handler counts in ESI, records CR2 in EDI and the error code in EBP, sets AC in the
# pushed EFLAGS and retries (as kvm-unit-tests' smap does).
HANDLER_CODE = """
    .org 0x200
    inc esi
    mov edi, cr2
    pop ebp
    or dword ptr [esp + 8], 0x40000
    iretd
"""


def test_clearing_ac_brings_smap_back_without_a_tlb_flush():
    emu, mem = paged("""
        pushfd
        or dword ptr [esp], 0x40000
        popfd                       # AC = 1
        mov eax, [0x400000]         # allowed: may it leave a translation behind?
        pushfd
        and dword ptr [esp], ~0x40000
        popfd                       # AC = 0
        mov ebx, [0x400000]         # #PF, then retried with AC = 1
        hlt
    """ + HANDLER_CODE, CR4_SMAP)
    mem.write_u32(USER_PAGE, 0x5A5A)
    run_until_halt(emu)
    assert emu.R[6] == 1 and emu.R[7] == USER_PAGE and emu.R[5] == 1     # present, read, supervisor
    assert emu.R[0] == emu.R[3] == 0x5A5A


def test_smep_faults_a_supervisor_jump_into_a_user_page():
    emu, mem = paged("""
        mov eax, 0x400000
        jmp eax
        .org 0x200
        mov edi, cr2
        pop ebp
        hlt
    """, CR4_SMEP)
    mem.write(USER_PAGE, b"\xf4")
    run_until_halt(emu)
    assert emu.R[7] == USER_PAGE and emu.R[5] == 0x11                    # present, instruction fetch
