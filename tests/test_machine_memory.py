"""The machine's address space follows its memory map, in the emulator and under KVM alike."""

from __future__ import annotations

import io

import pytest

from pykvm.machine import Machine
from pykvm.x86 import memmap
from tests.asm import assemble

pytestmark = pytest.mark.kvm

MIB = 1 << 20


def run(code: bytes, mode: str, **machine_args) -> int:
    with Machine(serial_output=io.BytesIO(), **machine_args) as machine:
        machine.load(code, "flat", mode=mode)
        return machine.run(timeout=30)


def test_the_legacy_hole_is_reserved():
    """Nothing loads into 0xa0000-0xfffff: the map reserves it (a PC's VGA window, option ROMs,
    BIOS); the machine backs it with RAM, as QEMU backs most of it with shadow RAM."""
    from pykvm.errors import BadInputError

    with Machine(serial_output=io.BytesIO()) as machine:
        with pytest.raises(BadInputError, match="overlaps the legacy hole"):
            machine.load(b"\xf4" * 16, "flat", mode="real", load_addr=0xB8000)
        assert machine.memory.contains(0xB8000) and machine.memory_map.region_at(0xB8000).kind == "reserved"


def test_ram_above_4_gib_is_reached_through_its_slot_and_by_the_emulator():
    """--mem 3200M: 128 MiB of RAM at 4 GiB. A 64-bit guest writes there (KVM's slot); the
    emulator, whose MMU reaches RAM below 4 GiB directly, reads it through the bus."""
    with Machine(3200 * MIB, serial_output=io.BytesIO()) as machine:
        assert machine.memory_map.ram[-1].start == memmap.FOUR_GIB
        assert machine.high_memory.size == 128 * MIB
        # The loader's identity map covers RAM below 4 GiB: map 4 GiB with a 2 MiB page first
        # (PD at 0x200000, PDPT entry 4 of the loader's PDPT at 0x2000).
        image = assemble("mov rax, 0x100000083\nmov [0x200000], rax\nmov qword ptr [0x2020], 0x200003\n"
                         "mov rax, cr3\nmov cr3, rax\n"
                         "mov rbx, 0x100000010\nmov dword ptr [rbx], 0xcafe\nmov eax, [rbx]\n"
                         "out 0xf4, eax\nhlt", org=0x100000)
        machine.load(image, "flat", mode="long")
        assert machine.run(timeout=30) == (0xCAFE << 1) | 1
        assert machine.bus.mmio_read(0x100000010, 4) == 0xCAFE


def test_cmos_memory_size_agrees_with_the_map():
    with Machine(3200 * MIB, serial_output=io.BytesIO()) as machine:
        cmos = machine.platform.rtc.cmos
        assert int.from_bytes(cmos[0x15:0x17], "little") == 640
        assert int.from_bytes(cmos[0x34:0x36], "little") == (3 * 1024 - 16) * 16     # 64 KiB units over 16 MiB
        assert int.from_bytes(cmos[0x5B:0x5E], "little") == 128 * 16                 # above 4 GiB


def test_loaders_refuse_images_over_the_rom():
    """With a ROM, a loader refuses to place anything where it shows (from Python: the CLI takes
    no IMAGE with --bios)."""
    from pykvm.errors import BadInputError

    rom = bytes(0x20000)
    with Machine(serial_output=io.BytesIO(), bios=rom) as machine:
        with pytest.raises(BadInputError, match=r"overlaps the firmware ROM \(alias below 1 MiB\) 0xe0000-0xfffff"):
            machine.load(b"\xf4" * 16, "flat", mode="real", load_addr=0xE8000)
        assert not machine.memory.contains(0xE0000) and machine.physical.read(0xFFFF0, 2) == b"\0\0"
