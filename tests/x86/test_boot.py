"""Boot-state builders: descriptors, GDT, identity page tables and per-mode initial state (no KVM)."""

import struct

import pytest

from pykvm.x86.state import CS, DS, ES, FS, GS, LDTR, RAX, RBX, RDX, RSP, SS, TR, Segment
from pykvm.errors import BadInputError
from pykvm.memory import GuestMemory
from pykvm.x86 import boot
from pykvm.x86 import descriptors as D


# -- descriptors (encoded by pykvm.x86.descriptors; checked here against hand-computed values) --
def test_descriptor_encoding_matches_hand_computed_values():
    # Well-known flat descriptors (the values every boot loader tutorial shows).
    assert D.encode_descriptor(0, 0xFFFFF, 0xA, db=1, g=1) == 0x00CF9A000000FFFF
    assert D.encode_descriptor(0, 0xFFFFF, 0x2, db=1, g=1) == 0x00CF92000000FFFF
    assert D.encode_descriptor(0, 0xFFFFF, 0xB, l=1, g=1) == 0x00AF9B000000FFFF
    # Every field in a distinct place: base 0x12345678, limit 0xABCDE, access 0x9B, flags 0x5.
    assert D.encode_descriptor(0x12345678, 0xABCDE, 0xB, db=1, avl=1) == 0x125A9B345678BCDE


def test_gdt_has_the_documented_layout():
    assert boot.gdt_entries() == [
        0,
        0x00CF9B000000FFFF,   # 0x08 code32
        0x00CF93000000FFFF,   # 0x10 data32
        0x00AF9B000000FFFF,   # 0x18 code64
        0x00009B000000FFFF,   # 0x20 code16
        0x000093000000FFFF,   # 0x28 data16
    ]
    gdt = boot.build_gdt()
    assert len(gdt) == boot.GDT_LIMIT + 1 == 48
    assert struct.unpack("<6Q", gdt) == tuple(boot.gdt_entries())


def test_segment_from_descriptor_code32():
    seg = boot.segment_from_descriptor(0x08, 0x00CF9B000000FFFF)
    assert seg == Segment(selector=0x08, base=0, limit=0xFFFFFFFF, type=0xB, present=1, dpl=0,
                          db=1, s=1, l=0, g=1, avl=0, unusable=0)


def test_segment_from_descriptor_code64_and_16bit():
    seg = boot.gdt_segment(boot.SEL_CODE64)
    assert (seg.selector, seg.l, seg.db, seg.type, seg.limit) == (0x18, 1, 0, 0xB, 0xFFFFFFFF)
    seg = boot.gdt_segment(boot.SEL_DATA16)
    assert (seg.limit, seg.g, seg.db, seg.type) == (0xFFFF, 0, 0, 0x3)


def test_segment_from_descriptor_non_flat_and_user():
    # base 0x12345678, raw limit 0xABCDE with G → 0xABCDEFFF, DPL 3 data, AVL set.
    d = D.encode_descriptor(0x12345678, 0xABCDE, 0x3, dpl=3, avl=1, g=1)
    seg = boot.segment_from_descriptor(0x2B, d)
    assert (seg.base, seg.limit, seg.dpl, seg.type, seg.avl, seg.g) == (0x12345678, 0xABCDEFFF, 3, 3, 1, 1)


def test_null_descriptor_is_unusable():
    seg = boot.segment_from_descriptor(0, 0)
    assert seg.unusable == 1 and seg.present == 0


# -- page tables -------------------------------------------------------------------------
def _entries(page: bytes) -> tuple[int, ...]:
    return struct.unpack("<512Q", page)


def test_identity_tables_for_small_ram_map_one_gib():
    pieces = boot.identity_page_tables(16 << 20)
    assert [gpa for gpa, _ in pieces] == [0x1000, 0x2000, 0x3000]
    assert all(len(data) == 4096 for _, data in pieces)
    pml4, pdpt, pd = (_entries(d) for _, d in pieces)
    assert pml4[0] == 0x2003 and not any(pml4[1:])
    assert pdpt[0] == 0x3003 and not any(pdpt[1:])
    assert pd[0] == 0x83
    assert pd[1] == 0x200083
    assert pd[511] == (511 << 21) | 0x83


def test_identity_tables_round_up_to_gib():
    pieces = boot.identity_page_tables((2 << 30) + 4096)
    assert [gpa for gpa, _ in pieces] == [0x1000, 0x2000, 0x3000, 0x4000, 0x5000]
    pdpt = _entries(pieces[1][1])
    assert pdpt[:4] == (0x3003, 0x4003, 0x5003, 0)
    pd2 = _entries(pieces[4][1])
    assert pd2[0] == (2 << 30) | 0x83 and pd2[511] == (2 << 30) + (511 << 21) | 0x83


def test_identity_tables_stop_at_four_gib():
    pieces = boot.identity_page_tables(4 << 30)
    assert pieces[-1][0] == 0x6000
    with pytest.raises(BadInputError):
        boot.identity_page_tables((4 << 30) + 4096)


def test_boot_memory_per_mode():
    assert boot.boot_memory("real", 1 << 20) == []
    assert boot.boot_memory("protected", 1 << 20) == [(0x500, boot.build_gdt())]
    long = boot.boot_memory("long", 1 << 20)
    assert long[0] == (0x500, boot.build_gdt())
    # The whole 32-bit physical space, whatever the RAM: the local APIC at 0xfee00000 included.
    assert [gpa for gpa, _ in long[1:]] == [0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000]
    apic = struct.unpack_from("<Q", long[-1][1], 8 * (0xFEE00000 % (1 << 30) >> 21))[0]
    assert apic == 0xFEE00000 | 0x83
    # Everything lies in the reserved area.
    assert all(gpa + len(d) <= boot.RESERVED_END for gpa, d in long)


def test_prepare_memory_writes_gdt_and_tables():
    with GuestMemory(2 << 20) as mem:
        mem.fill(0x1000, 0x6000, 0xCC)
        boot.prepare_memory("long", mem)
        assert mem.read(0x500, 48) == boot.build_gdt()
        assert mem.read_u64(0x1000) == 0x2003
        assert mem.read_u64(0x1008) == 0          # stale bytes overwritten
        assert mem.read_u64(0x3000 + 8) == 0x200083


def test_prepare_memory_refuses_ram_without_low_area():
    with GuestMemory(1 << 20, base=1 << 20) as mem:
        with pytest.raises(BadInputError, match="boot structures"):
            boot.prepare_memory("protected", mem)
        boot.prepare_memory("real", mem)           # nothing needed


# -- initial state -----------------------------------------------------------------------
def test_real_mode_state_low_entry():
    st_ = boot.initial_state("real", 0x7C00)
    assert st_.rip == 0x7C00 and st_.gpr[RSP] == 0x7C00
    for r in (CS, SS, DS, ES, FS, GS):
        assert st_.seg[r].selector == 0 and st_.seg[r].base == 0 and st_.seg[r].limit == 0xFFFF
    assert st_.seg[CS].type == 0xB and st_.seg[DS].type == 0x3
    assert st_.cr0 & 1 == 0 and st_.efer == 0 and st_.rflags == 2
    assert (st_.idt.base, st_.idt.limit) == (0, 0x3FF)


def test_real_mode_state_high_entry_uses_cs():
    st_ = boot.initial_state("real", 0x12345, stack=0x9000)
    assert st_.seg[CS].selector == 0x1000 and st_.seg[CS].base == 0x10000
    assert st_.rip == 0x2345
    assert st_.seg[SS].selector == 0 and st_.gpr[RSP] == 0x9000
    st_ = boot.initial_state("real", 0xFFFFF)
    assert (st_.seg[CS].selector, st_.rip) == (0xF000, 0xFFFF)


def test_real_mode_stack_above_64k_uses_ss():
    st_ = boot.initial_state("real", 0x7C00, stack=0x90000)
    assert st_.seg[SS].base + ((st_.gpr[RSP] - 2) & 0xFFFF) == 0x90000 - 2


@pytest.mark.parametrize("entry", [0x100000, -1])
def test_real_mode_entry_must_be_below_1mib(entry):
    with pytest.raises(BadInputError):
        boot.initial_state("real", entry)


def test_protected_mode_state():
    st_ = boot.initial_state("protected", 0x100000)
    assert st_.cr0 == 0x31 and st_.cr4 == 0 and st_.efer == 0
    assert st_.rip == 0x100000 and st_.gpr[RSP] == 0x80000 and st_.rflags == 2
    assert st_.seg[CS] == boot.segment_from_descriptor(0x08, boot.gdt_entries()[1])
    assert st_.seg[CS].db == 1 and st_.seg[CS].l == 0
    for r in (SS, DS, ES, FS, GS):
        assert st_.seg[r].selector == 0x10 and st_.seg[r].limit == 0xFFFFFFFF and st_.seg[r].db == 1
    assert (st_.gdt.base, st_.gdt.limit) == (0x500, 47)
    assert st_.cpl == 0
    assert st_.seg[TR].present and st_.seg[LDTR].type == 2


def test_long_mode_state():
    st_ = boot.initial_state("long", 0x100000, stack=0x200000)
    assert st_.cr0 == 0x80050033
    assert st_.cr4 == 0x20 and st_.cr3 == 0x1000 and st_.efer == 0x501
    assert st_.seg[CS].selector == 0x18 and st_.seg[CS].l == 1 and st_.seg[CS].db == 0
    assert st_.seg[DS].selector == 0x10
    assert st_.gpr[RSP] == 0x200000 and st_.rip == 0x100000


def test_long_mode_rejects_non_canonical_entry():
    with pytest.raises(BadInputError):
        boot.initial_state("long", 0x0000800000000000)
    boot.initial_state("long", 0xFFFFFFFF80000000)


def test_registers_override():
    st_ = boot.initial_state("protected", 0x100000, registers={"rax": 0x2BADB002, "rbx": 0x7000})
    assert st_.gpr[RAX] == 0x2BADB002 and st_.gpr[RBX] == 0x7000
    st_ = boot.initial_state("real", 0x7C00, registers={RDX: 0x80})
    assert st_.gpr[RDX] == 0x80
    with pytest.raises(BadInputError):
        boot.initial_state("real", 0x7C00, registers={"eax": 1})


def test_unknown_mode():
    with pytest.raises(BadInputError, match="unknown boot mode"):
        boot.initial_state("smm", 0)


def test_states_are_independent_objects():
    a = boot.initial_state("long", 0x100000)
    b = boot.initial_state("long", 0x100000)
    a.seg[DS].base = 5
    assert b.seg[DS].base == 0 and a.seg[ES].base == 0
