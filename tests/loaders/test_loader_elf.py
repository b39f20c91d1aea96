"""ELF32/ELF64 loading: segments at p_paddr, bss zeroed, entry translation, and every refusal."""

import struct

import pytest

from pykvm.x86.state import CS
from pykvm.errors import BadInputError
from pykvm.loaders import elf as elf_loader
from pykvm.loaders import load
from pykvm.memory import GuestMemory

from tests.loaders.loader_images import Seg, assemble, elf, needs_binutils, snapshot

MIB = 1 << 20


@pytest.fixture
def mem():
    with GuestMemory(4 * MIB) as m:
        m.fill(0, m.size, 0xA5)         # so zero-filled bss is visible
        yield m


def test_elf32_protected_mode_with_bss(mem):
    image = elf(32, [Seg(0x100000, b"\x90\xf4", memsz=0x20), Seg(0x180000, b"DATA", memsz=0x1000)], 0x100000)
    img = load(mem, image, "elf")
    assert (img.format, img.mode, img.entry) == ("elf", "protected", 0x100000)
    assert mem.read(0x100000, 0x20) == b"\x90\xf4" + bytes(0x1E)
    assert mem.read(0x180000, 0x1000) == b"DATA" + bytes(0xFFC)
    assert mem.read_u8(0x100020) == 0xA5           # nothing written past memsz
    assert [(r.start, r.size) for r in img.load_ranges[:2]] == [(0x100000, 0x20), (0x180000, 0x1000)]
    assert img.initial_state().seg[CS].selector == 0x08


def test_elf64_long_mode(mem):
    image = elf(64, [Seg(0x200000, b"\x48\x31\xc0\xf4")], 0x200000)
    img = load(mem, image)                          # auto-detected
    assert (img.format, img.mode, img.entry) == ("elf", "long", 0x200000)
    assert mem.read(0x200000, 4) == b"\x48\x31\xc0\xf4"
    assert mem.read_u64(0x1000) == 0x2003            # identity map written
    state = img.initial_state()
    assert state.seg[CS].l == 1 and state.efer & 0x400


def test_elf_higher_half_entry_is_translated(mem):
    image = elf(64, [Seg(0x100000, b"\xf4" * 64, vaddr=0xFFFFFFFF80100000)], 0xFFFFFFFF80100010)
    img = load(mem, image, "elf")
    assert img.entry == 0x100010


def test_elf_entry_override_and_mode_override(mem):
    image = elf(64, [Seg(0x100000, b"\xf4" * 64)], 0x100000)
    img = load(mem, image, "elf", mode="protected", entry=0x100020)
    assert (img.mode, img.entry) == ("protected", 0x100020)


def test_elf_ignores_non_load_and_empty_segments(mem):
    image = elf(32, [Seg(0x100000, b"\xf4"), Seg(0, b"note", p_type=4), Seg(0x10, b"", memsz=0)], 0x100000)
    img = load(mem, image, "elf")
    assert len([r for r in img.load_ranges if r.what.startswith("ELF")]) == 1


def _patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


GOOD32 = elf(32, [Seg(0x100000, b"\xf4" * 16)], 0x100000)
GOOD64 = elf(64, [Seg(0x100000, b"\xf4" * 16)], 0x100000)


@pytest.mark.parametrize("image,message", [
    (b"\x7fELF", "bad magic"),
    (b"\x7fELG" + GOOD32[4:], "bad magic"),
    (_patch(GOOD32, 4, "B", 3), "unsupported ELF class 3"),
    (_patch(GOOD32, 5, "B", 2), "not little-endian"),
    (_patch(GOOD32, 6, "B", 0), "identification version"),
    (GOOD32[:40], "truncated ELF header"),
    (GOOD64[:60], "truncated ELF header"),
    (_patch(GOOD32, 16, "<H", 1), "ET_REL"),
    (_patch(GOOD32, 16, "<H", 3), "ET_DYN"),
    (_patch(GOOD32, 18, "<H", 62), "machine 62 for ELF32"),
    (_patch(GOOD64, 18, "<H", 3), "machine 3 for ELF64"),
    (_patch(GOOD32, 18, "<H", 40), "machine 40"),
    (_patch(GOOD32, 20, "<I", 2), "unsupported ELF version"),
    (_patch(GOOD32, 44, "<H", 0), "no program headers"),
    (_patch(GOOD32, 44, "<H", 0xFFFF), "65535"),
    (_patch(GOOD32, 42, "<H", 16), "program header size"),
    (_patch(GOOD32, 28, "<I", 0x10000), "extends past the end"),
    (_patch(GOOD64, 32, "<Q", 1 << 63), "extends past the end"),
    (GOOD32[:70], "extends past the end"),
    (_patch(GOOD32, 52 + 16, "<I", 0x20), "exceeds memory size"),           # filesz > memsz
    (_patch(GOOD32, 52 + 4, "<I", 0x1000), "past the end of the file"),     # p_offset
    (_patch(_patch(GOOD32, 52 + 12, "<I", 0xFFFFFFF8), 52 + 8, "<I", 0xFFFFFFF8), "wraps around"),
    (_patch(GOOD32, 52, "<I", 3), "PT_INTERP"),
    (_patch(GOOD32, 52, "<I", 4), "no loadable"),
    (_patch(GOOD32, 24, "<I", 0x100010), "entry point 0x100010 is outside"),
    (elf(32, [Seg(0x100000, b"a" * 16), Seg(0x100008, b"b" * 16)], 0x100000), "overlap"),
    (elf(32, [Seg(0x100000, b"a" * 16, memsz=0x100), Seg(0x1000F0, b"b")], 0x100000), "overlap"),
])
def test_parse_refusals(image, message):
    with pytest.raises(BadInputError, match=message):
        elf_loader.parse_elf(image)


@pytest.mark.parametrize("image,kwargs,message", [
    (elf(32, [Seg(0x7000, b"\xf4" * 16)], 0x7000), {}, "reserved area"),
    (elf(64, [Seg(0x1000, b"\xf4" * 16)], 0x1000), {}, "reserved area"),
    (elf(32, [Seg(0x3FFFF0, b"\xf4" * 32)], 0x3FFFF0), {}, "outside guest RAM"),
    (elf(32, [Seg(0x100000, b"\xf4", memsz=5 * MIB)], 0x100000), {}, "larger than guest RAM"),
    (elf(64, [Seg(0x1_0000_0000, b"\xf4")], 0x1_0000_0000), {}, "outside guest RAM"),
    (elf(64, [Seg(0x1_0000_0000, b"\xf4")], 0x1_0000_0000), dict(mode="protected"), "not addressable"),
    (GOOD32, dict(load_addr=0x200000), "does not apply"),
    (GOOD32, dict(mode="real"), "real mode"),
    (GOOD32, dict(entry=0x200000), "outside the loaded segments"),
    (GOOD32, dict(cmdline="x"), "command line"),
    (b"\x7fELF" + bytes(100), {}, "unsupported ELF class 0"),
])
def test_load_refusals_leave_memory_untouched(mem, image, kwargs, message):
    before = snapshot(mem)
    with pytest.raises(BadInputError, match=message):
        load(mem, image, "elf", **kwargs)
    assert snapshot(mem) == before


@needs_binutils
def test_elf32_built_with_binutils(mem, tmp_path):
    src = """
        .text
        .globl _start
    _start:
        movl $0x2a, %eax
        outl %eax, $0xf4
        hlt
        .data
    msg: .ascii "hello"
        .bss
    buf: .space 4096
    """
    image = assemble(tmp_path, src, 32, ["-Ttext=0x100000"])
    img = load(mem, image)
    assert (img.mode, img.entry) == ("protected", 0x100000)
    assert mem.read(0x100000, 6) == b"\xb8\x2a\x00\x00\x00\xe7"
    parsed = elf_loader.parse_elf(image)
    data_seg = parsed.segments[0]
    assert mem.read(data_seg.paddr + data_seg.filesz, data_seg.memsz - data_seg.filesz) == \
        bytes(data_seg.memsz - data_seg.filesz)
    assert b"hello" in mem.read(data_seg.paddr, data_seg.filesz)


@needs_binutils
def test_elf64_built_with_binutils(mem, tmp_path):
    src = """
        .text
        .globl _start
    _start:
        movabs $0x1122334455667788, %rax
        hlt
    """
    image = assemble(tmp_path, src, 64, ["-Ttext=0x300000"])
    img = load(mem, image)
    assert (img.mode, img.entry) == ("long", 0x300000)
    assert mem.read(0x300000, 2) == b"\x48\xb8"
