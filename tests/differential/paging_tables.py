"""Page tables for the paging snippets, built in Python (pure functions, no KVM).

Layout (all below the 2 MiB of test RAM): a 32-bit page directory at PD, page tables at
PT0 (linear 0-4 MiB) and PT1 (linear 4-8 MiB); for PAE a PDPT at PDPT and page
directories PAE_PD0.. (one per GiB), with PAE page tables at PAE_PT0 / PAE_PT1.

The identity-mapped pages carry their accessed flag from the start: the SDM lets a
processor set accessed flags for translations it makes for prefetches that the program
never uses (vol. 3, 4.10.2.3: translations "required for prefetches and for accesses that
are a result of speculative execution"; 4.10.2.2: A is set before a translation is
cached), and pykvm's emulator, like a CPU's prefetcher, translates the page after the code
it decodes. Accessed and dirty flags are compared on the alias pages, which the tests name
explicitly and which no code runs next to.
"""

from __future__ import annotations

import struct

P, RW, US, A, D, PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
PAGE = 0x1000
RAM_PAGES = 512           # 2 MiB of test RAM

PD, PT0, PT1 = 0x20000, 0x21000, 0x22000
PDPT, PAE_PD0, PAE_PT0, PAE_PT1 = 0x23000, 0x24000, 0x25000, 0x26000

ENABLE_PAGING = """
        mov eax, {cr3:#x}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
"""
DISABLE_PAGING = """
        mov eax, cr0
        and eax, 0x7fffffff
        mov cr0, eax
"""


def enable_paging(cr3: int = PD, cr4: int | None = None) -> str:
    """Assembly that loads CR3 (and CR4, if given) and sets CR0.PG."""
    prefix = f"mov eax, {cr4:#x}\nmov cr4, eax\n" if cr4 is not None else ""
    return prefix + ENABLE_PAGING.format(cr3=cr3)


def tables32(mappings: dict[int, tuple[int, int]] | None = None, big: dict[int, tuple[int, int]] | None = None,
             identity_flags: int = P | RW | A, at: tuple[int, int, int] = (PD, PT0, PT1),
             directory_flags: int = P | RW | US) -> list[tuple[int, bytes]]:
    """32-bit paging: 4 KiB identity pages over RAM in PT0, plus ``mappings``
    {linear page: (physical page, flags)} in PT0/PT1 (linear < 8 MiB), plus ``big``
    {linear 4 MiB region: (physical, flags)} as PSE page-directory entries (flags get PS).
    ``at`` places the directory and the two tables elsewhere (for a second address space)."""
    pd_addr, pt0_addr, pt1_addr = at
    pt0 = [(i * PAGE) | identity_flags for i in range(RAM_PAGES)] + [0] * (1024 - RAM_PAGES)
    pt1 = [0] * 1024
    for linear, (phys, flags) in (mappings or {}).items():
        index = linear >> 12
        (pt0 if index < 1024 else pt1)[index & 1023] = phys | flags
    pd = [0] * 1024
    pd[0] = pt0_addr | directory_flags
    pd[1] = pt1_addr | directory_flags
    for linear, (phys, flags) in (big or {}).items():
        pd[linear >> 22] = phys | flags | PS
    return [(pd_addr, struct.pack("<1024I", *pd)), (pt0_addr, struct.pack("<1024I", *pt0)),
            (pt1_addr, struct.pack("<1024I", *pt1))]


def tables_pae(mappings: dict[int, tuple[int, int]] | None = None, big: dict[int, tuple[int, int]] | None = None
               ) -> list[tuple[int, bytes]]:
    """PAE paging: PDPT[0] -> PAE_PD0; PD0[0] -> PAE_PT0 (4 KiB identity over the first 2 MiB),
    PD0[1] -> PAE_PT1 (2-4 MiB, for ``mappings``); ``big`` {linear 2 MiB region: (phys, flags)}
    as 2 MiB pages (flags get PS)."""
    pt0 = [(i * PAGE) | P | RW | A for i in range(512)]
    pt1 = [0] * 512
    for linear, (phys, flags) in (mappings or {}).items():
        index = linear >> 12
        assert index < 1024, "PAE mappings cover the first 4 MiB"
        (pt0 if index < 512 else pt1)[index & 511] = phys | flags
    pd = [0] * 512
    pd[0] = PAE_PT0 | P | RW
    pd[1] = PAE_PT1 | P | RW
    for linear, (phys, flags) in (big or {}).items():
        pd[linear >> 21] = phys | flags | PS
    pdpt = [PAE_PD0 | P, 0, 0, 0]
    return [(PDPT, struct.pack("<4Q", *pdpt)), (PAE_PD0, struct.pack("<512Q", *pd)),
            (PAE_PT0, struct.pack("<512Q", *pt0)), (PAE_PT1, struct.pack("<512Q", *pt1))]
