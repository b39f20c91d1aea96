"""Multiboot 2: header and tags, address-tag and ELF kernels, the boot information, refusals."""

import struct

import pytest

from pykvm.errors import BadInputError
from pykvm.loaders import Module, detect, load, multiboot2
from tests.loaders.loader_images import (Seg, elf, mb2_address_kernel, mb2_header, mb2_tag, mb_header,  # noqa: F401
                                         mem, snapshot)

MIB = 1 << 20


def info_tags(mem, addr):
    total, reserved = struct.unpack("<II", mem.read(addr, 8))
    tags, pos = {}, addr + 8
    while True:
        kind, size = struct.unpack("<II", mem.read(pos, 8))
        if kind == 0:
            assert size == 8 and pos + 8 == addr + total and reserved == 0
            return tags
        tags.setdefault(kind, []).append(mem.read(pos + 8, size - 8))
        pos += (size + 7) & ~7


def test_address_tag_kernel_with_modules(mem):
    image = mb2_address_kernel(0x100000, b"\xf4" * 16, 0x100, mb2_tag(6))
    assert detect(image) == "multiboot2"
    img = load(mem, image, cmdline="quiet", modules=[Module(b"\x01\x02\x03", "data.bin"), Module(b"x" * 8192)])
    assert (img.format, img.mode) == ("multiboot2", "protected")
    assert img.registers["rax"] == 0x36D76289 and img.registers["rbx"] % 8 == 0
    assert img.entry == 0x100000 + len(image) - 16
    assert mem.read(0x100000, len(image)) == image and mem.read(0x100000 + len(image), 0x100) == bytes(0x100)
    tags = info_tags(mem, img.registers["rbx"])
    assert tags[1] == [b"quiet\0"] and tags[2] == [b"pykvm\0"]
    (m0, m1) = tags[3]
    assert struct.unpack("<II", m0[:8]) == (0x101000, 0x101003) and m0[8:] == b"data.bin\0"
    assert struct.unpack("<II", m1[:8]) == (0x102000, 0x104000) and m1[8:] == b"\0"
    assert mem.read(0x101000, 3) == b"\x01\x02\x03"
    assert struct.unpack("<II", tags[4][0]) == (640, 7 * 1024)
    mmap = tags[6][0]
    assert struct.unpack("<II", mmap[:8]) == (24, 0)
    assert [struct.unpack("<QQII", mmap[i:i + 24]) for i in range(8, len(mmap), 24)] == [
        (0, 0xA0000, 1, 0), (0xA0000, 0x60000, 2, 0), (MIB, 7 * MIB, 1, 0)]


def test_elf_kernel_entry_tag_and_optional_tags(mem):
    header = mb2_header(mb2_tag(3, struct.pack("<I", 0x100008)), mb2_tag(5, struct.pack("<III", 1024, 768, 32), 1),
                        mb2_tag(4, struct.pack("<I", 3), 1), mb2_tag(1, struct.pack("<II", 1, 8), 1),
                        mb2_tag(7, flags=1), mb2_tag(99, flags=1))
    image = elf(64, [Seg(0x100000, b"\xf4" * 32)], 0x100000, prefix=header)
    img = load(mem, image)
    assert (img.format, img.entry) == ("multiboot2", 0x100008)
    assert 8 not in info_tags(mem, img.registers["rbx"])      # no framebuffer information


def test_a_kernel_with_both_headers_is_loaded_as_multiboot2(mem):
    image = elf(32, [Seg(0x100000, b"\xf4" * 32)], 0x100000, prefix=mb_header(0x3) + mb2_header())   # v2 at 96
    assert detect(image) == "multiboot2"
    assert load(mem, image, "multiboot").registers["rax"] == 0x2BADB002     # v1 when asked


def test_header_search_is_8_byte_aligned_and_bounded():
    h = mb2_header()
    assert multiboot2.find_header(b"\0" * 8 + h)[0] == 8
    assert multiboot2.find_header(b"\0" * 4 + h) is None
    assert multiboot2.find_header(b"\0" * (32768 - 16) + h)[0] == 32768 - 16
    assert multiboot2.find_header(b"\0" * 32768 + h) is None
    assert multiboot2.find_header(mb2_header(checksum=1)) is None


def _kernel(*tags, **header_args):
    """An ELF32 kernel whose Multiboot 2 header follows its one program header (at 84, + 4: aligned)."""
    return elf(32, [Seg(0x100000, b"\xf4" * 32)], 0x100000, prefix=bytes(4) + mb2_header(*tags, **header_args))


@pytest.mark.parametrize("image,kwargs,message", [
    (b"\0" * 64, {}, "no Multiboot 2 header"),
    (_kernel(arch=4), {}, "architecture 4"),
    (_kernel(end=False), {}, "header_length 16 is too short"),
    (_kernel(mb2_tag(6), end=False), {}, "no end tag"),
    (_kernel(mb2_tag(3, b"")), {}, "entry address tag .* bad size 8"),
    (_kernel(mb2_tag(5, struct.pack("<III", 1024, 768, 32))), {}, "1024x768x32 framebuffer"),
    (_kernel(mb2_tag(4, struct.pack("<I", 1))), {}, "requires a console"),
    (_kernel(mb2_tag(7)), {}, "EFI boot services"),
    (_kernel(mb2_tag(1, struct.pack("<II", 6, 8))), {}, r"framebuffer information \(8\)"),
    (_kernel(mb2_tag(42)), {}, "unknown type 42"),
    (_kernel(mb2_tag(3, struct.pack("<I", 0x200000))), {}, "outside the loaded kernel"),
    (b"\x90" * 8 + mb2_header(), {}, "not ELF and its header has no address tag"),
    (mb2_header(mb2_tag(2, struct.pack("<IIII", 0x100000, 0x100000, 0, 0))) + b"\xf4" * 8, {}, "no entry address"),
    (mb2_address_kernel(0x7000), {}, "reserved area"),
    (mb2_address_kernel(0xFF000), {}, "overlaps the legacy hole"),
    (mb2_address_kernel(0x7FFFF0), {}, "outside guest RAM"),
    (mb2_address_kernel(), dict(mode="real"), "protected mode"),
    (mb2_address_kernel(), dict(cmdline="x" * 5000), "at most"),
    (mb2_address_kernel(), dict(modules=[Module(b"\0", "a\0b")]), "NUL"),
    (mb2_address_kernel(), dict(modules=[Module(b"m" * (7 * MIB))]), "module 0 .* outside guest RAM"),
])
def test_refusals_leave_memory_untouched(mem, image, kwargs, message):
    before = snapshot(mem)
    with pytest.raises(BadInputError, match=message):
        load(mem, image, "multiboot2", **kwargs)
    assert snapshot(mem) == before
