"""PVH: the Xen entry note, the start info (memory map, command line, modules), the entry state."""

import struct

import pytest

from pykvm.errors import BadInputError
from pykvm.loaders import Module, detect, load, pvh
from pykvm.x86.state import CS, RBX, TR
from tests.loaders.loader_images import Seg, elf, elf_note, mem, pvh_kernel, snapshot  # noqa: F401 (mem: a fixture)

MIB = 1 << 20


@pytest.mark.parametrize("bits", [32, 64])
def test_auto_prefers_pvh_and_enters_in_32_bit_protected_mode(mem, bits):
    image = pvh_kernel(bits, entry=0x100004)
    assert detect(image) == "pvh"
    img = load(mem, image, cmdline="console=ttyS0")
    assert (img.format, img.mode, img.entry) == ("pvh", "protected", 0x100004)
    state = img.initial_state()
    assert state.cr0 == 0x11 and state.cr4 == 0 and state.efer == 0 and state.rflags == 0x2
    assert state.seg[CS].db == 1 and state.seg[CS].base == 0 and state.seg[CS].limit == 0xFFFFFFFF
    assert (state.seg[TR].base, state.seg[TR].limit, state.seg[TR].type) == (0, 0x67, 0xB)
    assert state.gpr[RBX] == img.registers["rbx"]


def test_start_info(mem):
    img = load(mem, pvh_kernel(), cmdline="root=/dev/vda",
               modules=[Module(b"A" * 5000, "first"), Module(b"B" * 10, None, "b.bin")])
    info = img.registers["rbx"]
    magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries, reserved = struct.unpack(
        "<IIIIQQQQII", mem.read(info, 56))
    assert (magic, version, flags, nr_modules, rsdp, reserved) == (0x336EC578, 1, 0, 2, 0, 0)
    assert mem.read(cmdline, 14) == b"root=/dev/vda\0"
    table = [struct.unpack("<QQII", mem.read(memmap + 24 * i, 24)) for i in range(entries)]
    assert table == [(0, 0xA0000, 1, 0), (0xA0000, 0x60000, 2, 0), (MIB, 7 * MIB, 1, 0)]
    first = struct.unpack("<QQQQ", mem.read(modlist, 32))
    second = struct.unpack("<QQQQ", mem.read(modlist + 32, 32))
    assert first[0] == 0x101000 and first[1] == 5000 and mem.read(first[2], 6) == b"first\0"
    assert second[:3] == (0x103000, 10, 0)          # page-aligned after the first; no command line: 0
    assert mem.read(0x101000, 5000) == b"A" * 5000 and mem.read(0x103000, 10) == b"B" * 10
    assert all(r.end <= 0x8000 for r in img.load_ranges if r.what.startswith("PVH"))


def test_no_cmdline_no_modules(mem):
    img = load(mem, pvh_kernel(), "pvh")
    _, _, _, nr, modlist, cmdline = struct.unpack("<IIIIQQ", mem.read(img.registers["rbx"], 32))
    assert (nr, modlist, cmdline) == (0, 0, 0)


def test_a_plain_elf_is_not_pvh(mem):
    plain = elf(32, [Seg(0x100000, b"\xf4")], 0x100000)
    assert detect(plain) == "elf" and not pvh.has_entry_note(plain)
    assert detect(pvh_kernel(notes=elf_note(b"Xen", 17, b"\0" * 4))) == "elf"      # another Xen note


@pytest.mark.parametrize("image,kwargs,message", [
    (elf(32, [Seg(0x100000, b"\xf4")], 0x100000), {}, "no XEN_ELFNOTE_PHYS32_ENTRY"),
    (pvh_kernel(desc=b"\0\0\x10"), {}, "holds 3 bytes"),
    (pvh_kernel(64, desc=(1 << 32).to_bytes(8, "little")), {}, "not a 32-bit physical address"),
    (pvh_kernel(entry=0x200000), {}, "outside the loaded segments"),
    (pvh_kernel(notes=elf_note(b"Xen", 18, b"\0" * 4)[:14]), {}, "runs past the end of its segment"),
    (pvh_kernel(e_type=3), {}, "ET_DYN"),
    (pvh_kernel(), dict(mode="long"), "32-bit protected mode"),
    (pvh_kernel(), dict(load_addr=0x100000), "does not apply"),
    (pvh_kernel(), dict(cmdline="a\0b"), "NUL"),
    (pvh_kernel(), dict(cmdline="x" * 5000), "at most"),
    (pvh_kernel(), dict(modules=[Module(b"m" * (8 * MIB))]), "module 0"),
    (elf(32, [Seg(0x9F000, b"\xf4" * 0x2000), Seg(0, elf_note(b"Xen", 18, b"\0\xf0\x09\0"), p_type=4)],
         0x9F000), {}, "overlaps the legacy hole"),
])
def test_refusals_leave_memory_untouched(mem, image, kwargs, message):
    before = snapshot(mem)
    with pytest.raises(BadInputError, match=message):
        load(mem, image, "pvh", **kwargs)
    assert snapshot(mem) == before
