"""Multiboot v1: header search, a.out kludge and ELF kernels, the info struct, entry state, refusals."""

import struct

import pytest

from pykvm.x86.state import CS, RAX, RBX
from pykvm.errors import BadInputError
from pykvm.loaders import load, multiboot
from pykvm.memory import GuestMemory
from pykvm.x86 import boot

from tests.loaders.loader_images import Seg, aout_kernel, assemble, elf, mb_header, needs_binutils, snapshot

MIB = 1 << 20


@pytest.fixture
def mem():
    with GuestMemory(8 * MIB) as m:
        m.fill(0, m.size, 0xA5)
        yield m


def _cstring(mem, addr):
    out = bytearray()
    while (b := mem.read_u8(addr)) != 0:
        out.append(b)
        addr += 1
    return bytes(out)


def test_aout_kludge_kernel(mem):
    image = aout_kernel(load_addr=0x100000, code=b"\xf4" * 16, bss=0x100, header_at=64, entry_offset=40)
    img = load(mem, image)                              # auto-detected
    assert (img.format, img.mode) == ("multiboot", "protected")
    assert img.entry == 0x100000 + 64 + 40
    assert img.registers == {"rax": 0x2BADB002, "rbx": 0x7000}
    assert mem.read(0x100000, len(image)) == image
    assert mem.read(0x100000 + len(image), 0x100) == bytes(0x100)
    assert mem.read_u8(0x100000 + len(image) + 0x100) == 0xA5
    state = img.initial_state()
    assert state.gpr[RAX] == 0x2BADB002 and state.gpr[RBX] == 0x7000
    assert state.cr0 & 0x80000001 == 1 and state.rflags & 0x200 == 0
    assert state.seg[CS].db == 1 and state.seg[CS].limit == 0xFFFFFFFF
    assert mem.read(boot.GDT_ADDR, 48) == boot.build_gdt()


def test_aout_kludge_header_not_at_file_start(mem):
    # load_addr points before the header: the file is loaded from offset header_off - (header_addr - load_addr).
    body = b"\x90" * 32
    header = mb_header(0x10000, (0x200020, 0x200000, 0, 0, 0x200000))
    image = b"JUNK" * 8 + body[:32] + header + b"\xf4" * 8
    # header is at file offset 64; header_addr - load_addr = 0x20 → file data starts at offset 32.
    img = load(mem, image, "multiboot")
    assert img.entry == 0x200000
    assert mem.read(0x200000, len(image) - 32) == image[32:]


def test_info_struct(mem):
    img = load(mem, aout_kernel(), cmdline="console=ttyS0 quiet")
    info = multiboot.INFO_ADDR
    flags, mem_lower, mem_upper = struct.unpack("<III", mem.read(info, 12))
    assert flags == multiboot.MBI_MEMORY | multiboot.MBI_CMDLINE | multiboot.MBI_MMAP | multiboot.MBI_LOADER_NAME
    assert mem_lower == 640 and mem_upper == (8 * MIB - MIB) // 1024
    assert _cstring(mem, mem.read_u32(info + 16)) == b"console=ttyS0 quiet"
    assert _cstring(mem, mem.read_u32(info + 64)) == b"pykvm"
    mmap_len, mmap_addr = struct.unpack("<II", mem.read(info + 44, 8))
    entries = [struct.unpack("<IQQI", mem.read(mmap_addr + off, 24)) for off in range(0, mmap_len, 24)]
    assert entries == [(20, 0, 0xA0000, 1), (20, 0xA0000, 0x60000, 2), (20, MIB, 7 * MIB, 1)]   # the machine's map
    assert mem.read(info + 20, 8) == bytes(8)            # no modules
    whats = [r.what for r in img.load_ranges]
    assert "multiboot info" in whats and "multiboot command line" in whats
    assert all(r.end <= 0x8000 for r in img.load_ranges if r.what.startswith("multiboot ") and
               r.what != "multiboot kernel")


def test_info_without_cmdline(mem):
    load(mem, aout_kernel())
    flags = mem.read_u32(multiboot.INFO_ADDR)
    assert not flags & multiboot.MBI_CMDLINE and mem.read_u32(multiboot.INFO_ADDR + 16) == 0


def test_elf_multiboot_kernel(mem):
    header = mb_header(0x3)
    image = elf(32, [Seg(0x100000, b"\xf4" * 32, memsz=0x1000)], 0x100004, prefix=header)
    assert multiboot.find_header(image).offset == 52 + 32
    img = load(mem, image)
    assert (img.format, img.entry) == ("multiboot", 0x100004)
    assert mem.read(0x100000, 32) == b"\xf4" * 32 and mem.read(0x100020, 0x1000 - 32) == bytes(0x1000 - 32)


def test_elf64_multiboot_kernel_below_4g(mem):
    image = elf(64, [Seg(0x100000, b"\xf4" * 32)], 0x100000, prefix=mb_header(0x2))
    img = load(mem, image, "multiboot")
    assert (img.mode, img.entry) == ("protected", 0x100000)


def test_header_search_is_aligned_and_bounded():
    h = mb_header(0)
    assert multiboot.find_header(b"\0" * 8 + h).offset == 8
    assert multiboot.find_header(b"\0" * 6 + h) is None             # not 4-byte aligned
    assert multiboot.find_header(b"\0" * 8180 + h) == multiboot.MultibootHeader(8180, 0)
    assert multiboot.find_header(b"\0" * 8184 + h) is None          # past the first 8 KiB
    assert multiboot.find_header(mb_header(0, checksum=5)) is None


@pytest.mark.parametrize("image,kwargs,message", [
    (b"\0" * 64, {}, "no multiboot header"),
    (mb_header(0x8) + b"\xf4" * 16, {}, "unsupported features"),
    (mb_header(0x10000) + b"\0" * 8, {}, "truncated multiboot header"),
    (b"\0" * 8164 + mb_header(0x10000, (0x100000, 0x100000, 0, 0, 0x100000)), {}, "past the first 8 KiB"),
    (mb_header(0x1), {}, "not ELF"),
    (mb_header(0x10000, (0x100000, 0x100010, 0, 0, 0x100010)) + b"\xf4" * 32, {}, "below load_addr"),
    (mb_header(0x10000, (0x100100, 0x100000, 0, 0, 0x100000)) + b"\xf4" * 32, {}, "before the start"),
    (mb_header(0x10000, (0x100000, 0x100000, 0x100000, 0, 0x100000)), {}, "not above load_addr"),
    (mb_header(0x10000, (0x100000, 0x100000, 0x101000, 0, 0x100000)), {}, "truncated"),
    (mb_header(0x10000, (0x100000, 0x100000, 0x100020, 0x100010, 0x100000)), {}, "bss_end_addr"),
    (mb_header(0x10000, (0x100000, 0x100000, 0, 0, 0x100040)) + b"\xf4" * 32, {}, "entry_addr"),
    (aout_kernel(load_addr=0x7000), {}, "reserved area"),
    (aout_kernel(load_addr=0x7FFFF0), {}, "outside guest RAM"),
    (aout_kernel(bss=16 * MIB), {}, "larger than guest RAM"),
    (elf(64, [Seg(0x100000000, b"\xf4")], 0x100000000, prefix=mb_header(0)), {}, "below 4 GiB"),
    (elf(32, [Seg(0x100000, b"\xf4")], 0x100000, e_type=3, prefix=mb_header(0)), {}, "ET_DYN"),
    (aout_kernel(), dict(mode="long"), "protected mode"),
    (aout_kernel(), dict(load_addr=0x100000), "does not apply"),
    (aout_kernel(), dict(entry=0x300000), "outside the loaded kernel"),
    (aout_kernel(), dict(cmdline="a\0b"), "NUL"),
    (aout_kernel(), dict(cmdline="x" * 4000), "at most"),
])
def test_refusals_leave_memory_untouched(mem, image, kwargs, message):
    before = snapshot(mem)
    with pytest.raises(BadInputError, match=message):
        load(mem, image, "multiboot", **kwargs)
    assert snapshot(mem) == before


def test_small_ram_memory_fields():
    with GuestMemory(2 * MIB) as m:
        load(m, aout_kernel(), "multiboot")
        assert struct.unpack("<II", m.read(multiboot.INFO_ADDR + 4, 8)) == (640, 1024)


def test_ram_not_at_zero_is_refused():
    with GuestMemory(2 * MIB, base=MIB) as m:
        with pytest.raises(BadInputError, match="address 0"):
            load(m, aout_kernel(), "multiboot")


@needs_binutils
def test_multiboot_elf_built_with_binutils(mem, tmp_path):
    src = """
        .section .multiboot, "a"
        .align 4
        .long 0x1BADB002, 0x3, -(0x1BADB002 + 0x3)
        .text
        .globl _start
    _start:
        movl %eax, %ecx
        outl %eax, $0xf4
        hlt
        .bss
        .lcomm stack, 8192
    """
    image = assemble(tmp_path, src, 32, ["-Ttext=0x100000", "-e", "_start"])
    assert multiboot.find_header(image) is not None
    img = load(mem, image)
    assert img.format == "multiboot" and img.entry == 0x100000
    assert mem.read(0x100000, 2) == b"\x89\xc1"


def test_modules(mem):
    from pykvm.loaders import Module

    img = load(mem, aout_kernel(), modules=[Module(b"abc", "data.bin arg"), Module(b"z" * 5000, None, "z.bin")])
    info = img.registers["rbx"]
    flags, count, addr = struct.unpack("<I16xII", mem.read(info, 28))
    assert flags & multiboot.MBI_MODS and count == 2
    mods = [struct.unpack("<IIII", mem.read(addr + 16 * i, 16)) for i in range(2)]
    assert mods[0][:2] == (0x101000, 0x101003) and _cstring(mem, mods[0][2]) == b"data.bin arg"
    assert mods[1][:2] == (0x102000, 0x102000 + 5000) and _cstring(mem, mods[1][2]) == b"z.bin"   # its name
    assert mem.read(0x101000, 3) == b"abc" and mem.read(0x102000, 5000) == b"z" * 5000


@pytest.mark.parametrize("fmt,cmdline,want", [
    ("auto", "", "kernels/k.bin"),
    ("multiboot", "console=ttyS0", "kernels/k.bin console=ttyS0"),
])
def test_pykvm_run_passes_the_kernels_name_first_as_grub_and_qemu_do(fmt, cmdline, want):
    """kvm-unit-tests take argv[0] from the first word and the tests to run from the rest."""
    from pykvm.runner import kernel_command_line

    assert kernel_command_line(aout_kernel(), fmt, "kernels/k.bin", cmdline) == want
    assert kernel_command_line(b"\x90" * 64, "auto", "flat.bin", "") == ""      # not Multiboot 1: as given
