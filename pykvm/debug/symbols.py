"""Symbols of a guest image for the debugger: ``--break protected_start`` rather than ``0x7c3e``.

An ELF image carries its own symbol table; a flat image built from ``guests/`` has its linked
ELF beside it (``NAME.bin`` → ``NAME.elf``). Only the section headers and SHT_SYMTAB are read,
every offset checked against the file: a malformed table gives no symbols, never an error.
"""

from __future__ import annotations

import struct
from pathlib import Path

_SHT_SYMTAB = 2
_STT_SECTION, _STT_FILE = 3, 4
# Section header: name type flags addr offset size link info align entsize (32 / 64-bit layouts).
_SHDR = {1: struct.Struct("<IIIIIIIIII"), 2: struct.Struct("<IIQQQQIIQQ")}
# Symbol: (name, value, info) picked out of each layout.
_SYM = {1: (struct.Struct("<IIIBBH"), 0, 1, 3), 2: (struct.Struct("<IBBHQQ"), 0, 4, 1)}


def _elf_symbols(data: bytes) -> dict[str, int]:
    if data[:4] != b"\x7fELF" or len(data) < 64 or data[4] not in _SHDR:
        return {}
    cls = data[4]
    if cls == 1:
        shoff, = struct.unpack_from("<I", data, 0x20)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x2E)
    else:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    shdr = _SHDR[cls]
    if shentsize != shdr.size or shoff + shnum * shentsize > len(data):
        return {}
    sections = [shdr.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    sym, name_at, value_at, info_at = _SYM[cls]
    out: dict[str, int] = {}
    for sh in sections:
        if sh[1] != _SHT_SYMTAB or sh[6] >= len(sections):
            continue
        offset, size = sh[4], sh[5]
        strtab = sections[sh[6]]
        str_off, str_size = strtab[4], strtab[5]
        if offset + size > len(data) or str_off + str_size > len(data):
            continue
        for at in range(offset, offset + size - sym.size + 1, sym.size):
            fields = sym.unpack_from(data, at)
            name_off, value, info = fields[name_at], fields[value_at], fields[info_at]
            if info & 0xF in (_STT_SECTION, _STT_FILE) or not 0 < name_off < str_size:
                continue
            end = data.find(b"\0", str_off + name_off, str_off + str_size)
            name = data[str_off + name_off:end if end >= 0 else str_off + str_size].decode(errors="replace")
            if name and not name.startswith(".L"):
                out.setdefault(name, value)
    return out


def image_symbols(path: Path | str | None) -> dict[str, int]:
    """Name → address of the image at ``path`` (its own ELF symbols, or its sibling ``.elf``'s)."""
    if path is None:
        return {}
    path = Path(path)
    for candidate in (path, path.with_suffix(".elf")):
        try:
            data = candidate.read_bytes()
        except OSError:
            continue
        symbols = _elf_symbols(data)
        if symbols:
            return symbols
    return {}
