"""The PC memory map every loader, the RTC, KVM's slots and the emulator share (pure)."""

from __future__ import annotations

import pytest

from pykvm.errors import BadInputError
from pykvm.memory import GuestMemory
from pykvm.x86 import memmap
from pykvm.x86.memmap import GIB, KIB, MIB, MMIO, RAM, RESERVED, ROM

HOLE = (0xA0000, 0x60000, 2)


def kinds(m):
    return [(r.start, r.size, r.kind) for r in m.regions]


def test_64_mib_pc():
    m = memmap.pc_memory_map(64 * MIB)
    assert kinds(m) == [(0, 0xA0000, RAM), (0xA0000, 0x60000, RESERVED), (MIB, 63 * MIB, RAM)]
    assert m.e820() == [(0, 0xA0000, 1), HOLE, (MIB, 63 * MIB, 1)]
    assert m.ram_size == 64 * MIB - 384 * KIB
    assert m.ram_split() == (64 * MIB, 0)


def test_small_rams_lose_the_hole_to_the_legacy_area():
    assert kinds(memmap.pc_memory_map(512 * KIB))[0] == (0, 512 * KIB, RAM)
    m = memmap.pc_memory_map(768 * KIB)
    assert [r.kind for r in m.regions] == [RAM, RESERVED] and m.ram_size == 640 * KIB


def test_ram_beyond_the_pci_hole_moves_above_4_gib():
    m = memmap.pc_memory_map(4 * GIB)
    assert m.ram[-2].end == memmap.PCI_HOLE_START
    assert (m.ram[-1].start, m.ram[-1].size) == (4 * GIB, GIB)
    assert m.ram_split() == (3 * GIB, GIB)


@pytest.mark.parametrize("size,alias", [(64 * KIB, 64 * KIB), (128 * KIB, 128 * KIB), (256 * KIB, 128 * KIB),
                                        (16 * MIB, 128 * KIB)])
def test_rom_below_4_gib_and_its_alias_below_1_mib(size, alias):
    m = memmap.pc_memory_map(64 * MIB, rom_size=size)
    roms = [(r.start, r.size) for r in m.regions if r.kind == ROM]
    assert roms == [(MIB - alias, alias), (4 * GIB - size, size)]
    assert m.region_at(0xA0000).size == 0x60000 - alias       # the rest of the legacy hole
    assert memmap.rom_ranges(size) == ((4 * GIB - size, 0, size), (MIB - alias, size - alias, alias))
    assert (4 * GIB - size, size, 2) in m.e820()


@pytest.mark.parametrize("size", [0, 32 * KIB, 96 * KIB, 17 * MIB, 64 * KIB + 1])
def test_rom_sizes_are_checked(size):
    with pytest.raises(BadInputError, match="64 KiB to 16 MiB"):
        memmap.pc_memory_map(64 * MIB, rom_size=size) if size else memmap.check_rom_size(size)


def test_a_16_mib_rom_collides_with_the_testdev_page():
    with pytest.raises(BadInputError, match="firmware ROM .* overlaps the pc-testdev"):
        memmap.pc_memory_map(64 * MIB, 16 * MIB, ((0xFF000000, 0x10000, "pc-testdev MMIO"),))
    m = memmap.pc_memory_map(64 * MIB, 64 * KIB, ((0xFF000000, 0x10000, "pc-testdev MMIO"),))
    assert m.region_at(0xFF000000).kind == MMIO


def test_check_ram_names_what_a_range_hits():
    m = memmap.pc_memory_map(8 * MIB, rom_size=64 * KIB)
    m.check_ram(MIB, MIB, "image")
    with pytest.raises(BadInputError, match=r"image 0x9f000-0xa0fff overlaps the legacy hole"):
        m.check_ram(0x9F000, 0x2000, "image")
    with pytest.raises(BadInputError, match=r"overlaps the firmware ROM \(alias below 1 MiB\) 0xf0000-0xfffff"):
        m.check_ram(0xFF000, 0x2000, "image")
    with pytest.raises(BadInputError, match=r"lies outside guest RAM \(0x0-0x9ffff, 0x100000-0x7fffff\)"):
        m.check_ram(8 * MIB - 8, 16, "image")


def test_describe_has_one_line_per_region():
    lines = memmap.pc_memory_map(64 * MIB, rom_size=256 * KIB).describe()
    assert len(lines) == 5
    assert lines[-1].endswith("rom      firmware ROM (256 KiB)")


def test_map_of_a_plain_memory():
    with GuestMemory(2 * MIB) as m:
        assert memmap.map_of(m).e820()[1] == HOLE
    with GuestMemory(2 * MIB, base=MIB) as m:
        assert kinds(memmap.map_of(m)) == [(MIB, 2 * MIB, RAM)]


def test_a_memory_with_a_hole_refuses_checked_access_there():
    with GuestMemory(2 * MIB, hole=memmap.LEGACY_HOLE) as m:
        assert m.contains(0x9F000, 0x1000) and m.contains(MIB, 16)
        assert not m.contains(0x9FFFF, 2) and not m.contains(0xB8000)
        with pytest.raises(Exception, match="but 0xa0000-0xfffff"):
            m.read(0xB8000, 1)
    with GuestMemory(512 * KIB, hole=memmap.LEGACY_HOLE) as m:
        assert (m.hole_start, m.hole_end) == (0, 0)
