"""Firmware ROM (``--bios``): one image, shown read-only just below 4 GiB and, its last 128 KiB
(or all of it, if smaller), again below 1 MiB, ending at 0xfffff (``pykvm.x86.memmap``).

The bytes live in one ``GuestMemory`` (an anonymous mapping) that serves both executors:

* KVM maps it as two read-only memory slots (``KVM_MEM_READONLY``): guest reads and code
  fetches go straight to the pages, a guest write ends ``KVM_RUN`` with an MMIO exit whose
  ``is_write`` is set, and the machine hands that write to this device, which drops it.
* The userspace emulator sees no RAM there (the MMU's fast path only ever holds RAM pages),
  so every access reaches the bus and this device: reads come from the same pages, writes
  are dropped. ``code()`` gives the translator whole runs of bytes, and ROM code may be
  cached, since nothing can change it.

A dropped write is logged at ``-vv``, whoever executed it.
"""

from __future__ import annotations

import logging

from pykvm.memory import GuestMemory
from pykvm.x86 import memmap

log = logging.getLogger(__name__)


class Rom:
    """A firmware image in its own mapping; ``attach(bus)`` claims both of its ranges."""

    def __init__(self, data: bytes):
        memmap.check_rom_size(len(data))
        self.size = len(data)
        (self.base, _, _), alias = memmap.rom_ranges(self.size)
        self.alias_base, self.alias_offset, self.alias_size = alias
        self.memory = GuestMemory(self.size, base=self.base)
        self.memory.write(self.base, data)
        self.view = self.memory.view
        self.dropped_writes = 0

    @property
    def slots(self) -> list[tuple[int, int, int]]:
        """(gpa, offset in the ROM, size) of each place the ROM shows, for ``Vm.map_memory``."""
        return [(self.base, 0, self.size), (self.alias_base, self.alias_offset, self.alias_size)]

    def attach(self, bus) -> None:
        for gpa, offset, size in self.slots:
            bus.mmio.register(gpa, size, self, offset=offset)

    def read(self, offset: int, size: int) -> int:
        if offset + size <= self.size:
            return int.from_bytes(self.view[offset:offset + size], "little")
        # An access running past the top of the ROM (at 4 GiB or 1 MiB) reads all-ones there.
        return int.from_bytes(bytes(self.view[offset:offset + size]).ljust(size, b"\xff"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.dropped_writes += 1
        log.debug("ROM write of %#x (%d bytes) at ROM offset %#x dropped", value, size, offset)

    def code(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of code from ``offset`` (fewer at the end of the ROM)."""
        return bytes(self.view[offset:min(offset + length, self.size)])

    def close(self) -> None:
        self.memory.close()
