"""Page walks: 32-bit (4 KiB, 4 MiB), PAE (4 KiB, 2 MiB), 4-level; permissions, error codes,
accessed/dirty bits."""

from __future__ import annotations

import pytest

from pykvm.memory import GuestMemory
from pykvm.x86 import paging as P
from pykvm.x86.bits import (CR0_PE, CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_LME,
                             EFER_NXE)

PG = CR0_PE | CR0_PG


@pytest.fixture
def mem():
    with GuestMemory(8 << 20) as m:
        yield m


def test_no_paging_is_identity(mem):
    t = P.walk(mem, CR0_PE, 0, 0, 0, 0x123456)
    assert t.phys == 0x123456 and P.paging_mode(CR0_PE, 0, 0) == "none"


def test_32bit_4k_page_and_accessed_dirty_bits(mem):
    mem.write_u32(0x1000 + 4 * 1, 0x2000 | P.PTE_P | P.PTE_RW | P.PTE_US)        # PDE for 4..8 MiB
    mem.write_u32(0x2000 + 4 * 3, 0x7000 | P.PTE_P | P.PTE_RW | P.PTE_US)        # PTE for 0x403000
    t = P.walk(mem, PG, 0x1000, 0, 0, 0x403ABC)
    assert t.phys == 0x7ABC and t.page_size == 0x1000 and t.writable and t.user and not t.dirty
    assert mem.read_u32(0x1004) & P.PTE_A and mem.read_u32(0x200C) & P.PTE_A
    assert not mem.read_u32(0x200C) & P.PTE_D
    t = P.walk(mem, PG, 0x1000, 0, 0, 0x403ABC, P.PF_WRITE)
    assert t.dirty and mem.read_u32(0x200C) & P.PTE_D


def test_32bit_4m_page_needs_pse(mem):
    mem.write_u32(0x1000 + 4 * 2, 0x00400000 | P.PTE_P | P.PTE_RW | P.PTE_PS)
    t = P.walk(mem, PG, 0x1000, CR4_PSE, 0, 0x00812345)
    assert t.phys == 0x00412345 and t.page_size == 4 << 20
    # Without PSE the PS bit is ignored and the entry points at a page table at 4 MiB (zeros).
    with pytest.raises(P.PageFault) as e:
        P.walk(mem, PG, 0x1000, 0, 0, 0x00812345)
    assert e.value.error_code == 0


def test_not_present_and_protection_error_codes(mem):
    mem.write_u32(0x1000, 0x2000 | P.PTE_P | P.PTE_RW)           # supervisor-only directory entry
    mem.write_u32(0x2000 + 4 * 5, 0x5000 | P.PTE_P)              # read-only page
    with pytest.raises(P.PageFault) as e:
        P.walk(mem, PG, 0x1000, 0, 0, 0x6000, P.PF_WRITE)
    assert (e.value.error_code, e.value.linear) == (P.PF_WRITE, 0x6000)
    with pytest.raises(P.PageFault) as e:
        P.walk(mem, PG | CR0_WP, 0x1000, 0, 0, 0x5000, P.PF_WRITE)
    assert e.value.error_code == P.PF_PRESENT | P.PF_WRITE
    # CR0.WP=0: the supervisor may write read-only pages.
    assert P.walk(mem, PG, 0x1000, 0, 0, 0x5004, P.PF_WRITE).phys == 0x5004
    with pytest.raises(P.PageFault) as e:
        P.walk(mem, PG, 0x1000, 0, 0, 0x5000, P.PF_USER)
    assert e.value.error_code == P.PF_PRESENT | P.PF_USER


def test_pae_4k_and_2m_pages(mem):
    cr3 = 0x1000
    mem.write_u64(cr3 + 8 * 0, 0x2000 | P.PTE_P)                        # PDPTE 0
    mem.write_u64(0x2000 + 8 * 1, 0x00600000 | P.PTE_P | P.PTE_RW | P.PTE_PS)   # 2 MiB at 2 MiB
    mem.write_u64(0x2000 + 8 * 0, 0x3000 | P.PTE_P | P.PTE_RW)
    mem.write_u64(0x3000 + 8 * 7, 0x9000 | P.PTE_P | P.PTE_RW)
    t = P.walk(mem, PG, cr3, CR4_PAE, 0, 0x00234567)
    assert t.phys == 0x00634567 and t.page_size == 2 << 20
    t = P.walk(mem, PG, cr3, CR4_PAE, 0, 0x00007123)
    assert t.phys == 0x9123
    with pytest.raises(P.PageFault):
        P.walk(mem, PG, cr3, CR4_PAE, 0, 0x40000000)                 # PDPTE 1 absent


def test_pae_nx_with_nxe(mem):
    cr3 = 0x1000
    mem.write_u64(cr3, 0x2000 | P.PTE_P)
    mem.write_u64(0x2000, 0x00200000 | P.PTE_P | P.PTE_RW | P.PTE_PS | P.PTE_NX)
    assert P.walk(mem, PG, cr3, CR4_PAE, EFER_NXE, 0x1000).phys == 0x00201000
    with pytest.raises(P.PageFault) as e:
        P.walk(mem, PG, cr3, CR4_PAE, EFER_NXE, 0x1000, P.PF_FETCH)
    assert e.value.error_code == P.PF_PRESENT | P.PF_FETCH


def test_four_level_walk(mem):
    cr3 = 0x1000
    mem.write_u64(cr3, 0x2000 | P.PTE_P | P.PTE_RW)
    mem.write_u64(0x2000, 0x3000 | P.PTE_P | P.PTE_RW)
    mem.write_u64(0x3000 + 8 * 2, 0x00400000 | P.PTE_P | P.PTE_RW | P.PTE_PS)   # 2 MiB page at 4 MiB
    efer = EFER_LME | EFER_LMA
    assert P.paging_mode(PG, CR4_PAE, efer) == "4level"
    t = P.walk(mem, PG, cr3, CR4_PAE, efer, 0x00412345)
    assert t.phys == 0x00412345 and t.page_size == 2 << 20
    mem.write_u64(0x2000 + 8, 0x40000000 | P.PTE_P | P.PTE_PS)                 # 1 GiB page
    assert P.walk(mem, PG, cr3, CR4_PAE, efer, 0x40000123).phys == 0x40000123


# -- SMEP and SMAP (SDM vol. 3, 4.6.1) -----------------------------------------------------------------
def _user_and_supervisor_pages(mem, writable_user: bool = True):
    """32-bit paging: 0x400000 a user page, 0x401000 a supervisor page."""
    mem.write_u32(0x1000 + 4 * 1, 0x2000 | P.PTE_P | P.PTE_RW | P.PTE_US)
    mem.write_u32(0x2000, 0x7000 | P.PTE_P | P.PTE_US | (P.PTE_RW if writable_user else 0))
    mem.write_u32(0x2000 + 4, 0x8000 | P.PTE_P | P.PTE_RW)


@pytest.mark.parametrize("cr4,access,code", [
    (CR4_SMEP, P.PF_FETCH, P.PF_PRESENT | P.PF_FETCH),            # supervisor fetch from a user page
    (CR4_SMAP, 0, P.PF_PRESENT),                                  # supervisor read, AC = 0
    (CR4_SMAP, P.PF_WRITE, P.PF_PRESENT | P.PF_WRITE),            # supervisor write, AC = 0
])
def test_smep_and_smap_keep_the_supervisor_off_user_pages(mem, cr4, access, code):
    _user_and_supervisor_pages(mem)
    with pytest.raises(P.PageFault) as fault:
        P.walk(mem, PG, 0x1000, cr4, 0, 0x400000, access)
    assert fault.value.error_code == code
    assert P.walk(mem, PG, 0x1000, cr4, 0, 0x401000, access).phys == 0x8000   # supervisor pages: fine
    assert P.walk(mem, PG, 0x1000, cr4, 0, 0x400000, access | P.PF_USER).phys == 0x7000


def test_smap_lets_explicit_accesses_with_ac_through_and_smep_ignores_data(mem):
    _user_and_supervisor_pages(mem)
    for access in (P.SMAP_OVERRIDE, P.PF_WRITE | P.SMAP_OVERRIDE):
        assert P.walk(mem, PG, 0x1000, CR4_SMAP, 0, 0x400000, access).phys == 0x7000
    assert P.walk(mem, PG, 0x1000, CR4_SMEP, 0, 0x400000, P.PF_WRITE).phys == 0x7000
    assert P.walk(mem, PG, 0x1000, CR4_SMAP, 0, 0x400000, P.PF_FETCH).phys == 0x7000   # SMAP: data only


def test_smap_override_does_not_lift_write_protection(mem):
    _user_and_supervisor_pages(mem, writable_user=False)
    with pytest.raises(P.PageFault):
        P.walk(mem, CR0_WP | PG, 0x1000, CR4_SMAP, 0, 0x400000, P.PF_WRITE | P.SMAP_OVERRIDE)
