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


class GuestMemory:
    """``size`` bytes of guest RAM starting at guest-physical address ``base``."""

    def __init__(self, size: int, base: int = 0):
        if size <= 0 or size % _PAGE:
            raise BadInputError(f"guest memory size must be a positive multiple of 4 KiB, not {size}")
        self.base = base
        self.size = size
        try:
            self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:    # ENOMEM: more than the host will commit
            raise HostError(f"cannot map {size:#x} bytes of guest RAM: {e.strerror} "
                            "(more memory than this host can give)") from None
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
        import ctypes

        return ctypes.addressof(ctypes.c_char.from_buffer(self._map))

    # -- checked access ---------------------------------------------------------------------
    def contains(self, gpa: int, length: int = 1) -> bool:
        return self.base <= gpa and gpa + length <= self.base + self.size and length >= 0

    def _offset(self, gpa: int, length: int) -> int:
        if not self.contains(gpa, length):
            raise GuestMemoryError(
                f"guest-physical access {gpa:#x}+{length:#x} is outside guest RAM "
                f"[{self.base:#x}, {self.base + self.size:#x})")
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
