"""One bus for port I/O and MMIO, used alike by KVM exits and by the emulator.

A device claims a range of ports or guest-physical addresses and implements
``read(offset, size) -> int`` and ``write(offset, size, value)``; offsets are
relative to the start of the range it claimed, plus the ``offset`` it registered
the range with (0 by default) — so one device can claim several ranges and still
tell them apart (the 8042 at ports 0x60 and 0x64). Accesses nobody claimed read
as all-ones and are logged at debug level, as on a PC's floating bus.

``ByteRegisters`` is a base for the many PC devices whose registers are bytes:
it splits a wider access into byte accesses at consecutive offsets, as the ISA
bus does with a 16- or 32-bit ``in``/``out`` to an 8-bit device.
"""

from __future__ import annotations

import bisect
import logging
from functools import partial

from pykvm.errors import PykvmError

log = logging.getLogger(__name__)

_MISS = object()  # a cache miss, as opposed to a cached "nobody claims this address" (None)


class Device:
    """What the bus expects of a device (documentation: devices need not inherit it)."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class BusConflictError(PykvmError):
    """Two devices claimed overlapping ranges."""


class _AddressSpace:
    """Sorted, non-overlapping ranges → device, with a per-address lookup cache.

    Guests hammer a handful of addresses (the UART's data and status ports, port 0x80
    for delays), so every lookup after the first is one dict probe — misses included.
    """

    _CACHE_LIMIT = 4096

    def __init__(self, name: str):
        self.name = name
        # Decided once: a log.debug() call per access to an unclaimed port (guests poke port
        # 0x80 for delays) would cost more than the access itself.
        self.trace_unclaimed = log.isEnabledFor(logging.DEBUG)
        self._starts: list[int] = []
        # (start, end, device, base): the device sees ``addr - base``; base = start - offset.
        self._entries: list[tuple[int, int, Device, int]] = []
        self._cache: dict[int, tuple[int, int, Device, int] | None] = {}
        # Per-address callables for the KVM exit path (``writer``/``reader``): the device's own
        # method with the offset bound, one call per access instead of a lookup and a dispatch.
        self.writers: dict[int, object] = {}
        self.readers: dict[int, object] = {}

    def register(self, start: int, length: int, device: Device, offset: int = 0) -> None:
        """Claim ``start`` .. ``start + length - 1`` for ``device``, which sees offsets from ``offset``."""
        end = start + length
        for s, e, *_ in self._entries:
            if start < e and s < end:
                raise BusConflictError(f"{self.name} range {start:#x}-{end - 1:#x} overlaps {s:#x}-{e - 1:#x}")
        i = bisect.bisect(self._starts, start)
        self._starts.insert(i, start)
        self._entries.insert(i, (start, end, device, start - offset))
        self._cache.clear()
        self.writers.clear()
        self.readers.clear()

    def unregister(self, device: Device) -> None:
        """Drop every range ``device`` claimed (a device that moves: the local APIC's base)."""
        kept = [(s, e) for s, e in zip(self._starts, self._entries) if e[2] is not device]
        self._starts = [s for s, _ in kept]
        self._entries = [e for _, e in kept]
        self._cache.clear()
        self.writers.clear()
        self.readers.clear()

    def find(self, addr: int):
        entry = self._cache.get(addr, _MISS)
        if entry is not _MISS:
            return entry
        entry = None
        i = bisect.bisect(self._starts, addr) - 1
        if i >= 0 and addr < self._entries[i][1]:
            entry = self._entries[i]
        if len(self._cache) < self._CACHE_LIMIT:
            self._cache[addr] = entry
        return entry

    def read(self, addr: int, size: int) -> int:
        entry = self.find(addr)
        if entry is None:
            if self.trace_unclaimed:
                log.debug("%s read from unclaimed %#x (size %d)", self.name, addr, size)
            return (1 << (8 * size)) - 1
        return entry[2].read(addr - entry[3], size)

    def writer(self, addr: int, size: int):
        """``fn(value)`` doing ``write(addr, size, value)`` for a value that fits ``size`` (kept in
        ``writers`` under ``addr << 3 | size``)."""
        return self._bound(self.writers, "write", addr, size)

    def reader(self, addr: int, size: int):
        """``fn() -> value`` doing ``read(addr, size)`` (kept in ``readers`` under ``addr << 3 | size``)."""
        return self._bound(self.readers, "read", addr, size)

    def _bound(self, cache: dict, op: str, addr: int, size: int):
        """The device's own ``op`` ("read" or "write") with the offset bound, a byte device's
        ``read_byte``/``write_byte`` for a byte: one call per access on the KVM exit path."""
        entry = self.find(addr)
        if entry is None or self.trace_unclaimed:
            fn = partial(getattr(self, op), addr, size)
        else:
            device, offset = entry[2], addr - entry[3]
            if size == 1 and getattr(type(device), op) is getattr(ByteRegisters, op):
                fn = partial(getattr(device, op + "_byte"), offset)
            else:
                fn = partial(getattr(device, op), offset, size)
        if len(cache) < self._CACHE_LIMIT:
            cache[addr << 3 | size] = fn
        return fn

    def write(self, addr: int, size: int, value: int) -> None:
        entry = self.find(addr)
        if entry is None:
            if self.trace_unclaimed:
                log.debug("%s write %#x to unclaimed %#x (size %d)", self.name, value, addr, size)
            return
        entry[2].write(addr - entry[3], size, value)


class Bus:
    """Port-I/O and MMIO address spaces of one machine.

    ``accesses`` counts the accesses made through these methods (the emulator's): a run loop
    that lets the emulator go on past its batch (``Emulator.run(batch=...)``) looks at it to
    know whether a device may want its attention (a timer reprogrammed, say).
    """

    def __init__(self):
        self.pio = _AddressSpace("port")
        self.mmio = _AddressSpace("mmio")
        self.accesses = 0

    def pio_read(self, port: int, size: int) -> int:
        self.accesses += 1
        return self.pio.read(port, size)

    def pio_write(self, port: int, size: int, value: int) -> None:
        self.accesses += 1
        self.pio.write(port, size, value)

    def mmio_read(self, addr: int, size: int) -> int:
        self.accesses += 1
        return self.mmio.read(addr, size)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.accesses += 1
        self.mmio.write(addr, size, value)


class ByteRegisters:
    """Base for a device whose registers are bytes: wider accesses become byte accesses.

    A 16- or 32-bit ``in``/``out`` to an 8-bit ISA device reaches it as consecutive
    byte cycles at consecutive ports, least significant byte first; subclasses
    implement ``read_byte(offset)`` / ``write_byte(offset, value)`` and see exactly
    that. A byte that lands past the device's registers is the subclass's to treat
    as floating (read 0xFF, write ignored), as the next port would be on a PC.
    """

    def read_byte(self, offset: int) -> int:
        raise NotImplementedError

    def write_byte(self, offset: int, value: int) -> None:
        raise NotImplementedError

    def read(self, offset: int, size: int) -> int:
        if size == 1:
            return self.read_byte(offset)
        value = 0
        for i in range(size):
            value |= (self.read_byte(offset + i) & 0xFF) << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 1:
            self.write_byte(offset, value & 0xFF)
            return
        for i in range(size):
            self.write_byte(offset + i, (value >> (8 * i)) & 0xFF)
