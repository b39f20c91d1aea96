"""Builders for tiny test images: hand-packed ELF32/ELF64 and multiboot kernels, and as/ld builds."""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass

import pytest

from pykvm.memory import GuestMemory

MB_MAGIC = 0x1BADB002


@dataclass
class Seg:
    paddr: int
    data: bytes
    memsz: int | None = None
    vaddr: int | None = None
    p_type: int = 1


def elf(bits: int, segs: list[Seg], entry: int, *, e_type: int = 2, machine: int | None = None,
        ei_class: int | None = None, ei_data: int = 1, prefix: bytes = b"") -> bytes:
    """An ELF executable with one program header per ``Seg``; data follows the headers.

    ``prefix`` is placed right after the program headers (before segment data), e.g. a multiboot header.
    """
    is32 = bits == 32
    ehsize, phsize = (52, 32) if is32 else (64, 56)
    machine = (3 if is32 else 62) if machine is None else machine
    ei_class = (1 if is32 else 2) if ei_class is None else ei_class
    phoff = ehsize
    data_off = phoff + phsize * len(segs) + len(prefix)
    body = bytearray()
    phdrs = b""
    for s in segs:
        off = data_off + len(body)
        body += s.data
        memsz = len(s.data) if s.memsz is None else s.memsz
        vaddr = s.paddr if s.vaddr is None else s.vaddr
        if is32:
            phdrs += struct.pack("<IIIIIIII", s.p_type, off, vaddr, s.paddr, len(s.data), memsz, 5, 0x1000)
        else:
            phdrs += struct.pack("<IIQQQQQQ", s.p_type, 5, off, vaddr, s.paddr, len(s.data), memsz, 0x1000)
    ident = b"\x7fELF" + bytes([ei_class, ei_data, 1]) + bytes(9)
    if is32:
        hdr = struct.pack("<16sHHIIIIIHHHHHH", ident, e_type, machine, 1, entry, phoff, 0, 0, ehsize,
                          phsize, len(segs), 0, 0, 0)
    else:
        hdr = struct.pack("<16sHHIQQQIHHHHHH", ident, e_type, machine, 1, entry, phoff, 0, 0, ehsize,
                          phsize, len(segs), 0, 0, 0)
    return hdr + phdrs + prefix + bytes(body)


def mb_header(flags: int, aout: tuple[int, int, int, int, int] | None = None, checksum: int | None = None) -> bytes:
    if checksum is None:
        checksum = -(MB_MAGIC + flags) & 0xFFFFFFFF
    h = struct.pack("<III", MB_MAGIC, flags, checksum)
    if aout is not None:
        h += struct.pack("<5I", *aout)
    return h


def aout_kernel(load_addr: int = 0x100000, code: bytes = b"\xf4" * 16, bss: int = 0x100,
                header_at: int = 0, entry_offset: int = 32) -> bytes:
    """A kludge kernel whose file is loaded as a whole at ``load_addr`` with ``bss`` bytes of bss."""
    pad = bytes(header_at)
    size = header_at + 32 + len(code)
    fields = (load_addr + header_at, load_addr, load_addr + size, load_addr + size + bss,
              load_addr + header_at + entry_offset)
    return pad + mb_header(0x10003, fields) + code


@pytest.fixture
def mem():
    """8 MiB of guest RAM filled with 0xa5 (so zero-filled bss shows)."""
    with GuestMemory(8 << 20) as m:
        m.fill(0, m.size, 0xA5)
        yield m


def snapshot(mem: GuestMemory) -> bytes:
    return bytes(mem.view)


# -- real toolchain builds -----------------------------------------------------------------
needs_binutils = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")),
                                    reason="GNU as/ld not installed")


def assemble(tmp_path, source: str, bits: int, ld_args: list[str]) -> bytes:
    """Assemble ``source`` (AT&T syntax) with GNU as and link it with ld; returns the ELF bytes."""
    src = tmp_path / "t.S"
    obj = tmp_path / "t.o"
    out = tmp_path / "t.elf"
    src.write_text(source)
    as_flag, emul = ("--32", "elf_i386") if bits == 32 else ("--64", "elf_x86_64")
    subprocess.run(["as", as_flag, "-o", str(obj), str(src)], check=True, capture_output=True)
    subprocess.run(["ld", "-m", emul, "-N", "--build-id=none", *ld_args, "-o", str(out), str(obj)],
                   check=True, capture_output=True)
    return out.read_bytes()


# -- PVH and Multiboot 2 ---------------------------------------------------------------------
def elf_note(owner: bytes, n_type: int, desc: bytes) -> bytes:
    name = owner + b"\0"
    pad = lambda b: b.ljust((len(b) + 3) & ~3, b"\0")  # noqa: E731
    return struct.pack("<III", len(name), len(desc), n_type) + pad(name) + pad(desc)


def pvh_kernel(bits: int = 32, entry: int = 0x100000, desc: bytes | None = None, code: bytes = b"\xf4" * 16,
               notes: bytes | None = None, **elf_args) -> bytes:
    """An ELF with one PT_LOAD at 1 MiB and a PT_NOTE holding XEN_ELFNOTE_PHYS32_ENTRY."""
    if desc is None:
        desc = entry.to_bytes(4 if bits == 32 else 8, "little")
    notes = elf_note(b"GNU", 5, b"\0" * 8) + elf_note(b"Xen", 18, desc) if notes is None else notes
    return elf(bits, [Seg(0x100000, code, memsz=0x1000), Seg(0, notes, p_type=4)], 0x100000, **elf_args)


MB2_MAGIC = 0xE85250D6


def mb2_tag(kind: int, payload: bytes = b"", flags: int = 0) -> bytes:
    size = 8 + len(payload)
    return struct.pack("<HHI", kind, flags, size) + payload.ljust((len(payload) + 7) & ~7, b"\0")


def mb2_header(*tags: bytes, arch: int = 0, checksum: int | None = None, end: bool = True) -> bytes:
    body = b"".join(tags) + (mb2_tag(0) if end else b"")
    length = 16 + len(body)
    if checksum is None:
        checksum = -(MB2_MAGIC + arch + length) & 0xFFFFFFFF
    return struct.pack("<IIII", MB2_MAGIC, arch, length, checksum) + body


def mb2_address_kernel(load_addr: int = 0x100000, code: bytes = b"\xf4" * 16, bss: int = 0x100,
                       *tags: bytes) -> bytes:
    """A Multiboot 2 kernel loaded by its address tag: the whole file at ``load_addr``, entry at ``code``."""
    header_len = len(mb2_header(mb2_tag(2, bytes(16)), mb2_tag(3, bytes(4)), *tags))
    size = header_len + len(code)
    address = mb2_tag(2, struct.pack("<IIII", load_addr, load_addr, load_addr + size, load_addr + size + bss))
    entry = mb2_tag(3, struct.pack("<I", load_addr + header_len))
    return mb2_header(address, entry, *tags) + code
