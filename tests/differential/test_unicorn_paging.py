"""Emulator vs unicorn on paging outside long mode, which the host kernel cannot run (#GP on
CR0.PG without EFER.LME, see ../shared/PVM.md): 4 KiB, 4 MiB (PSE) and PAE pages, aliases,
accessed/dirty bits, CR3 switches, INVLPG, paging off and on again, accesses and string
copies across scattered pages, a real → paged protected → real round trip, and page faults
(CR2, faulting EIP, error code, no partial write).

unicorn reports page faults instead of delivering them (see ``unicorn_oracle``): for the
fault cases the emulator runs a #PF handler that saves CR2, the error code and the pushed
EIP, and those are compared with unicorn's CR2 and EIP at the fault and with the error
code the SDM prescribes (vol. 3, 4.7).
"""

from __future__ import annotations

import pytest

from pykvm.x86 import boot
from tests.differential import paging_tables as T
from tests.differential.harness import DATA, Snippet
from tests.differential.page_faults import FAULT_TABLE_FLAGS, compare_fault, with_fault_capture
from tests.differential.paging_tables import A, D, P, RW
from tests.differential.unicorn_oracle import check_unicorn

ALIAS = 0x400000
PATTERN = bytes((i * 13 + 1) & 0xFF for i in range(0x3000))
CR4_PSE, CR4_PAE, CR0_WP = 0x10, 0x20, 1 << 16
LOADER_GDT = [(boot.GDT_ADDR, boot.build_gdt())]

CASES = {
    "alias_4k_pages_and_paging_off_again": Snippet(f"""
        {T.enable_paging()}
        mov dword ptr [{ALIAS + 0x10:#x}], 0x11223344
        mov eax, [{DATA + 0x10:#x}]
        mov ebx, [{ALIAS + 0x1010:#x}]
        mov ecx, [{ALIAS + 0x2ffc:#x}]
        {T.DISABLE_PAGING}
        mov edx, [{DATA + 0x10:#x}]
        mov dword ptr [{DATA + 0x20:#x}], 0x55667788
        """, bits=32, memory=[(DATA, PATTERN)] + T.tables32(
            {ALIAS: (DATA, P | RW), ALIAS + 0x1000: (DATA, P), ALIAS + 0x2000: (DATA + 0x2000, P | RW)})),
    "accessed_and_dirty_bits": Snippet(f"""
        {T.enable_paging()}
        mov eax, [{ALIAS:#x}]
        mov dword ptr [{ALIAS + 0x1000:#x}], 1
        push eax
        pop eax
        mov ebx, [{ALIAS + 0x2000:#x}]
        {T.DISABLE_PAGING}
        """, bits=32, memory=T.tables32({ALIAS: (0x30000, P | RW), ALIAS + 0x1000: (0x31000, P | RW),
                                         ALIAS + 0x2000: (0x32000, P | RW | A | D)})),
    "pse_4m_pages": Snippet(f"""
        {T.enable_paging(cr4=CR4_PSE)}
        mov eax, [{0x800000 + DATA:#x}]
        mov dword ptr [{0x800000 + DATA + 4:#x}], 0xfeedf00d
        mov ebx, [{DATA + 4:#x}]
        mov esi, {0x800000 + DATA:#x}
        mov edi, {0x800000 + 0x50000:#x}
        mov ecx, 0x40
        rep movsd
        {T.DISABLE_PAGING}
        """, bits=32, memory=[(DATA, PATTERN)] + T.tables32(big={0x800000: (0, P | RW)})),
    "pae_4k_and_2m_pages": Snippet(f"""
        {T.enable_paging(cr3=T.PDPT, cr4=CR4_PAE)}
        mov eax, [{0x200000 + 0x10:#x}]
        mov dword ptr [{0x200000 + 0x1000:#x}], 0xabad1dea
        mov ebx, [{0x400000 + DATA + 8:#x}]
        mov dword ptr [{0x400000 + DATA + 12:#x}], 0x0badcafe
        {T.DISABLE_PAGING}
        mov ecx, [{DATA + 12:#x}]
        """, bits=32, memory=[(DATA, PATTERN)] + T.tables_pae(
            {0x200000: (DATA, P | RW), 0x201000: (0x40000, P | RW)}, big={0x400000: (0, P | RW)})),
    "cr3_switch_between_address_spaces": Snippet(f"""
        {T.enable_paging()}
        mov eax, [{ALIAS:#x}]
        mov edx, 0x30000
        mov cr3, edx
        mov ebx, [{ALIAS:#x}]
        mov dword ptr [{ALIAS + 4:#x}], 0x12345678
        mov edx, {T.PD:#x}
        mov cr3, edx
        mov ecx, [{ALIAS + 4:#x}]
        """, bits=32, memory=[(DATA, PATTERN)] + T.tables32({ALIAS: (DATA, P | RW)})
        + T.tables32({ALIAS: (DATA + 0x1000, P | RW)}, at=(0x30000, 0x31000, 0x32000))),
    "invlpg_after_remapping": Snippet(f"""
        {T.enable_paging()}
        mov eax, [{ALIAS + 0x20:#x}]
        mov dword ptr [{T.PT1:#x}], {(DATA + 0x1000) | P | RW:#x}
        invlpg [{ALIAS:#x}]
        mov ebx, [{ALIAS + 0x20:#x}]
        mov dword ptr [{T.PT1:#x}], {(DATA + 0x2000) | P | RW:#x}
        mov edx, cr3
        mov cr3, edx
        mov ecx, [{ALIAS + 0x20:#x}]
        """, bits=32, memory=[(DATA, PATTERN)] + T.tables32({ALIAS: (DATA, P | RW)})),
    "string_copies_across_scattered_pages": Snippet(f"""
        {T.enable_paging()}
        mov esi, {ALIAS + 0xff0:#x}
        mov edi, 0x50ffa
        mov ecx, 0x13
        rep movsd
        std
        mov esi, {ALIAS + 0x1008:#x}
        mov edi, {ALIAS + 0x2006:#x}
        mov ecx, 0x20
        rep movsb
        cld
        mov edi, {ALIAS + 0x2ff8:#x}
        mov eax, 0xa5a5a5a5
        mov ecx, 4
        rep stosd
        mov dword ptr [{ALIAS + 0xffe:#x}], 0xdeadbeef
        mov ebx, [{ALIAS + 0xffd:#x}]
        """, bits=32, memory=[(DATA, PATTERN)] + T.tables32(
            {ALIAS: (DATA + 0x2000, P | RW), ALIAS + 0x1000: (DATA, P | RW), ALIAS + 0x2000: (0x60000, P | RW),
             ALIAS + 0x3000: (0x70000, P | RW)})),
    "supervisor_writes_ignore_read_only_without_wp": Snippet(f"""
        {T.enable_paging()}
        mov dword ptr [{ALIAS:#x}], 0x600dd00d
        mov eax, [{DATA:#x}]
        """, bits=32, memory=T.tables32({ALIAS: (DATA, P)})),
    "stack_and_code_through_an_alias": Snippet(f"""
        {T.enable_paging()}
        mov esp, {ALIAS + 0x1000:#x}
        push 0x1234
        call {ALIAS + 0x2000 + 0x100:#x}
        pop ebx
        mov esp, 0x80000
        """, bits=32, memory=[(0x60100, bytes.fromhex("b8 78 56 34 12 c3"))]     # mov eax, 0x12345678; ret
        + T.tables32({ALIAS: (0x50000, P | RW), ALIAS + 0x2000: (0x60000, P | RW)})),
    "real_to_paged_protected_and_back": Snippet(f"""
        lgdt [gdtr]
        mov eax, {T.PD:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000001
        mov cr0, eax
        jmp 0x08:pm
    gdtr: .word {boot.GDT_LIMIT}
        .long {boot.GDT_ADDR}
    pm:
        .code32
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov eax, [{ALIAS + 0x40:#x}]
        mov dword ptr [{ALIAS + 0x44:#x}], 0x76543210
        jmp 0x20:pm16
    pm16:
        .code16
        mov ax, 0x28
        mov ds, ax
        mov es, ax
        mov ebx, cr0
        and ebx, 0x7ffffffe
        mov cr0, ebx
        jmp 0:real
    real:
        xor bx, bx
        mov ds, bx
        mov es, bx
        mov ecx, [{DATA + 0x44:#x}]
        """, memory=[(DATA, PATTERN)] + LOADER_GDT + T.tables32({ALIAS: (DATA, P | RW)})),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_unicorn(name):
    check_unicorn(CASES[name])


def test_paging_cases_really_translate():
    """Guards against vacuous passes: the aliases reached the physical pages they name."""
    snap = check_unicorn(CASES["alias_4k_pages_and_paging_off_again"])
    assert snap.reg("rbx") == 0x11223344 and snap.reg("rdx") == 0x11223344
    snap = check_unicorn(CASES["accessed_and_dirty_bits"])
    pte = int.from_bytes(snap.memory[T.PT1:T.PT1 + 4], "little")
    assert pte & (A | D) == A


# -- page faults ---------------------------------------------------------------------------------
FAULTS = {
    # name: (body, mappings, extra setup, expected error code)
    "read_not_present": (f"mov eax, [{ALIAS + 0x1234:#x}]", {}, "", 0),
    "write_not_present": (f"mov dword ptr [{ALIAS + 0x10:#x}], 1", {}, "", 2),
    "write_read_only_with_wp": (f"mov dword ptr [{ALIAS + 0x10:#x}], 1", {ALIAS: (DATA, P)},
                                f"mov eax, cr0\nor eax, {CR0_WP:#x}\nmov cr0, eax", 3),
    "split_write_into_a_missing_page": (f"mov dword ptr [{ALIAS + 0xffe:#x}], 0x11223344",
                                        {ALIAS: (DATA, P | RW)}, "", 2),
    "rep_stosd_runs_into_a_missing_page": (f"mov edi, {ALIAS + 0xff0:#x}\nmov ecx, 8\nmov eax, 0x77777777\n"
                                           "rep stosd", {ALIAS: (DATA, P | RW)}, "", 2),
    "fetch_from_a_missing_page": (f"mov eax, {ALIAS + 0x3000:#x}\njmp eax", {}, "", 0),
    # The first iteration reads its source (setting that PTE's accessed flag, SDM 4.8)
    # before its store faults; a lone MOVSD and REP MOVSD with ECX=1 do so, a longer REP
    # MOVSD must too.
    "rep_movsd_first_store_faults_after_its_load": (
        f"mov esi, {ALIAS:#x}\nmov edi, {ALIAS + 0x1000:#x}\nmov ecx, 2\nrep movsd", {ALIAS: (DATA, P | RW)}, "", 2),
    "movsd_store_faults_after_its_load": (
        f"mov esi, {ALIAS:#x}\nmov edi, {ALIAS + 0x1000:#x}\nmovsd", {ALIAS: (DATA, P | RW)}, "", 2),
}


@pytest.mark.parametrize("name", FAULTS)
def test_page_faults_match_unicorn_and_the_sdm(name):
    body, mappings, extra, error_code = FAULTS[name]
    source = with_fault_capture(f"{T.enable_paging()}\n{extra}\n{body}")
    snippet = Snippet(source, bits=32, memory=[(DATA, PATTERN)] + T.tables32(mappings, **FAULT_TABLE_FLAGS))
    assert compare_fault(snippet) == error_code     # SDM 4.7: the P, W/R and U/S bits
