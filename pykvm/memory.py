"""Guest RAM: one anonymous mapping, addressed by guest-physical address.

KVM maps the same pages into the guest (``KVM_SET_USER_MEMORY_REGION`` takes
``address``), the emulator and the loaders read and write them through
``view``. Every access from outside the hot paths goes through a bounds check
that names the offending address; nothing here trusts an offset it is given.
"""

from __future__ import annotations

import mmap
import struct

from pykvm.errors import BadInputError, HostError, PykvmError


class GuestMemoryError(PykvmError):
    """A guest-physical access fell outside guest RAM."""

    exit_code = 8


_PAGE = 4096


class RamMappingError(HostError):
    """The host would not map guest RAM; ``reason`` is the system's (for a message about all of
    a machine's RAM when one of its mappings failed)."""

    def __init__(self, size: int, reason: str):
        super().__init__(f"cannot map {size:#x} bytes of guest RAM: {reason} (more memory than this host can give)")
        self.reason = reason


class GuestMemory:
    """``size`` bytes of guest RAM starting at guest-physical address ``base``.

    ``hole`` (start, end), page-aligned inside the range, is address space that the mapping
    covers but that is not RAM (a PC's legacy hole at 0xa0000-0xfffff): ``contains`` is false
    there, so checked accesses refuse it, and the emulator's MMU sends it to the bus. The
    machine sets ``memory_map`` (``pykvm.x86.memmap``) to the map this RAM belongs to.
    """

    def __init__(self, size: int, base: int = 0, hole: tuple[int, int] | None = None):
        if size <= 0 or size % _PAGE:
            raise BadInputError(f"guest memory size must be a positive multiple of 4 KiB, not {size}")
        self.base = base
        self.size = size
        lo, hi = hole if hole is not None else (0, 0)
        lo, hi = max(lo, base), min(hi, base + size)
        if hi <= lo:
            lo = hi = 0
        elif lo % _PAGE or hi % _PAGE:
            raise BadInputError(f"a hole in guest memory must be page-aligned, not {lo:#x}-{hi:#x}")
        self.hole_start, self.hole_end = lo, hi
        self.memory_map = None
        try:
            self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:    # ENOMEM: more than the host will commit
            raise RamMappingError(size, e.strerror) from None
        self.view = memoryview(self._map)
        self.closed = False

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.view.release()
        self._map.close()

    def __enter__(self) -> "GuestMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def host_address(self) -> int:
        """The host virtual address of the mapping, for KVM_SET_USER_MEMORY_REGION."""
        from pykvm.kvm._ffi import ffi

        buffer = ffi.from_buffer(self._map)
        try:
            return int(ffi.cast("uintptr_t", buffer))
        finally:
            ffi.release(buffer)

    # -- checked access ---------------------------------------------------------------------
    def contains(self, gpa: int, length: int = 1) -> bool:
        return (self.base <= gpa and gpa + length <= self.base + self.size and length >= 0
                and not (gpa < self.hole_end and gpa + length > self.hole_start))

    def _offset(self, gpa: int, length: int) -> int:
        if not self.contains(gpa, length):
            hole = f" but {self.hole_start:#x}-{self.hole_end - 1:#x}" if self.hole_end else ""
            raise GuestMemoryError(
                f"guest-physical access {gpa:#x}+{length:#x} is outside guest RAM "
                f"[{self.base:#x}, {self.base + self.size:#x}){hole}")
        return gpa - self.base

    def read(self, gpa: int, length: int) -> bytes:
        off = self._offset(gpa, length)
        return bytes(self.view[off:off + length])

    def write(self, gpa: int, data: bytes) -> None:
        off = self._offset(gpa, len(data))
        self.view[off:off + len(data)] = data

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        off = self._offset(gpa, length)
        self.view[off:off + length] = bytes([byte]) * length

    def read_u8(self, gpa: int) -> int:
        return self.view[self._offset(gpa, 1)]

    def read_u16(self, gpa: int) -> int:
        return struct.unpack_from("<H", self.view, self._offset(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return struct.unpack_from("<I", self.view, self._offset(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self.view, self._offset(gpa, 8))[0]

    def write_u8(self, gpa: int, value: int) -> None:
        self.view[self._offset(gpa, 1)] = value & 0xFF

    def write_u16(self, gpa: int, value: int) -> None:
        struct.pack_into("<H", self.view, self._offset(gpa, 2), value & 0xFFFF)

    def write_u32(self, gpa: int, value: int) -> None:
        struct.pack_into("<I", self.view, self._offset(gpa, 4), value & 0xFFFFFFFF)

    def write_u64(self, gpa: int, value: int) -> None:
        struct.pack_into("<Q", self.view, self._offset(gpa, 8), value & 0xFFFFFFFFFFFFFFFF)


class PhysicalView:
    """Checked reads of guest physical memory across RAM, ROM and their aliases, for those that
    only look (the debugger's disassembly, the run loop's check for HLT): ``contains``,
    ``read``, ``read_u32``, ``read_u64`` as on a ``GuestMemory``."""

    def __init__(self):
        self._ranges: list[tuple[int, int, GuestMemory, int]] = []   # start, end, memory, memory gpa - start

    def add(self, memory: GuestMemory, gpa: int | None = None, offset: int = 0, size: int | None = None) -> None:
        """Show ``size`` bytes of ``memory`` from ``offset`` at ``gpa`` (default: all of it, where it is)."""
        gpa = memory.base if gpa is None else gpa
        size = memory.size - offset if size is None else size
        self._ranges.append((gpa, gpa + size, memory, memory.base + offset - gpa))

    def _find(self, gpa: int, length: int):
        for start, end, memory, delta in self._ranges:
            if start <= gpa and gpa + length <= end and memory.contains(gpa + delta, length):
                return memory, gpa + delta
        return None, None

    def contains(self, gpa: int, length: int = 1) -> bool:
        return self._find(gpa, length)[0] is not None

    def read(self, gpa: int, length: int) -> bytes:
        memory, at = self._find(gpa, length)
        if memory is None:
            raise GuestMemoryError(f"guest-physical access {gpa:#x}+{length:#x} is outside RAM and ROM")
        return memory.read(at, length)

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 4), "little")

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")


class MemoryDevice:
    """A ``GuestMemory`` as a device on the MMIO bus, for the userspace emulator: the RAM above
    4 GiB, outside the range its MMU reaches directly (KVM maps it as a slot). Offsets are
    offsets into the memory."""

    def __init__(self, memory: GuestMemory):
        self.memory = memory
        self.view = memory.view

    def read(self, offset: int, size: int) -> int:
        if offset + size > len(self.view):
            return (1 << 8 * size) - 1
        return int.from_bytes(self.view[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset + size <= len(self.view):
            self.view[offset:offset + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
