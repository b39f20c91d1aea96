"""Reads of a page that is not RAM (a ROM, a device) through paging: the translation is
cached, the bus still answers every read, and INVLPG or a CR3 load drops the cached page
(test386.asm runs its print routines from ROM with paging on: a page walk per read was most
of its time)."""

from __future__ import annotations

import pytest

from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import protected_mode, run_until_halt

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")

DEVICE = 0xF0000000


class Offsets:
    """A device whose every dword reads as its own offset (and counts the reads)."""

    def __init__(self):
        self.reads = 0

    def read(self, offset, size):
        self.reads += 1
        return offset

    def write(self, offset, size, value):
        pass


def paged(body: str):
    code = assemble("""
        mov eax, 0x10000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
    """ + body + "\nhlt\n", 32, 0x100000)
    emu, mem, bus = protected_mode(code)
    mem.write_u32(0x10000, 0x11003)                 # PDE 0 -> page table at 0x11000
    mem.write_u32(0x10004, 0x12003)                 # PDE 1 (0x400000..) -> page table at 0x12000
    for page in range(1024):                        # identity map of the first 4 MiB
        mem.write_u32(0x11000 + 4 * page, page << 12 | 3)
    mem.write_u32(0x12000, DEVICE | 3)              # 0x400000 -> the device's first page
    device = Offsets()
    bus.mmio.register(DEVICE, 0x2000, device)
    return emu, mem, device


def test_every_read_reaches_the_device_and_invlpg_drops_the_cached_page():
    emu, _, device = paged("""
        mov ebx, [0x400010]
        mov ecx, [0x400020]
        mov dword ptr [0x12000], 0xf0001003          # remap 0x400000 to the device's second page
        invlpg [0x400000]
        mov edx, [0x400030]
    """)
    run_until_halt(emu)
    assert emu.state.gpr[3] == 0x10 and emu.state.gpr[1] == 0x20
    assert emu.state.gpr[2] == 0x1030                 # the new mapping, after INVLPG
    assert device.reads == 3


def test_a_cr3_load_drops_the_cached_page_too():
    emu, _, _ = paged("""
        mov ebx, [0x400010]
        mov dword ptr [0x12000], 0xf0001003
        mov eax, cr3
        mov cr3, eax
        mov edx, [0x400010]
    """)
    run_until_halt(emu)
    assert emu.state.gpr[3] == 0x10 and emu.state.gpr[2] == 0x1010
