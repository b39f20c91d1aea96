"""pykvm run with what others build: every loader's broken images, each refused with one line
and exit status 2 before anything runs; --bios and --module on the command line; the hint a
flat image that fails at once gets."""

from __future__ import annotations

import contextlib
import struct

import pytest

from pykvm.guests import build_guest
from tests.loaders.loader_images import (Seg, aout_kernel, elf, elf_note, mb2_address_kernel, mb2_header,
                                         mb2_tag, mb_header, pvh_kernel)
from tests.test_cli import invoke

MIB = 1 << 20


def _mb2_elf(*tags, **header_args):
    return elf(32, [Seg(0x100000, b"\xf4" * 32)], 0x100000, prefix=bytes(4) + mb2_header(*tags, **header_args))


# (file contents, extra options, what the one line must say), per loader.
BROKEN = {
    "flat": [
        (b"", ["--mode", "protected"], "flat image is empty"),
        (b"\xf4" * 16, ["--mode", "protected", "--load-addr", "0xb8000"], "overlaps the legacy hole"),
        (b"\xf4" * (3 * MIB), ["--mem", "2M", "--mode", "protected"], "more than guest RAM"),
        (b"\xf4" * 0x1C0000, ["--mem", "2M", "--mode", "protected"], "larger than guest RAM"),
        (b"\xf4" * 16, ["--mode", "real", "--entry", "0x9000"], "outside the loaded image"),
    ],
    "bootsector": [
        (b"\xf4" * 511, ["--format", "bootsector"], "exactly 512"),
        (b"\xf4" * 512, ["--format", "bootsector"], "signature"),
    ],
    "elf": [
        (b"\x7fELF\x01\x01\x01" + bytes(13), [], "truncated ELF header"),
        (elf(32, [Seg(0x100000, b"\xf4")], 0x100000, e_type=3), [], "ET_DYN"),
        (elf(32, [Seg(0x100000, b"\xf4", memsz=0x2000)], 0x200000), [], "outside the loadable segments"),
        (elf(32, [Seg(0x9F000, b"\xf4" * 0x2000)], 0x9F000), [], "overlaps the legacy hole"),
        (elf(64, [Seg(0x4000000, b"\xf4")], 0x4000000), [], "outside guest RAM"),
        (elf(32, [Seg(0x100000, b"\xf4"), Seg(0, b"/lib/ld.so\0", p_type=3)], 0x100000), [], "PT_INTERP"),
    ],
    "multiboot": [
        (mb_header(0x3, checksum=1) + b"\xf4" * 16, ["--format", "multiboot"], "no multiboot header"),
        (mb_header(0x8) + b"\xf4" * 16, [], "unsupported features"),
        (aout_kernel(entry_offset=0x100), [], "entry_addr"),
        (aout_kernel(load_addr=0xA0000), [], "overlaps the legacy hole"),
        (aout_kernel(), ["--cmdline", "x" * 5000], "at most"),
    ],
    "multiboot2": [
        (_mb2_elf(mb2_tag(5, struct.pack("<III", 1024, 768, 32))), [], "framebuffer"),
        (_mb2_elf(arch=4), [], "architecture 4"),
        (_mb2_elf(mb2_tag(6), end=False), [], "no end tag"),
        (_mb2_elf(mb2_tag(4, struct.pack("<I", 1))), [], "requires a console"),
        (_mb2_elf(mb2_tag(1, struct.pack("<I", 13))), [], "SMBIOS"),
        (mb2_address_kernel(0x7000), [], "reserved area"),
    ],
    "pvh": [
        (elf(32, [Seg(0x100000, b"\xf4")], 0x100000), ["--format", "pvh"], "no XEN_ELFNOTE_PHYS32_ENTRY"),
        (pvh_kernel(entry=0x300000), [], "outside the loaded segments"),
        (pvh_kernel(desc=b"\0\0\x10"), [], "holds 3 bytes"),
        (pvh_kernel(notes=elf_note(b"Xen", 18, b"\0" * 4)[:14]), ["--format", "pvh"], "runs past the end"),
        (pvh_kernel(), ["--mode", "long"], "32-bit protected mode"),
    ],
}
CASES = [pytest.param(kind, data, options, message, id=f"{kind}-{i}")
         for kind, cases in BROKEN.items() for i, (data, options, message) in enumerate(cases)]


def _refused(result, message):
    assert result.exit_code == 2, result.output
    assert result.stdout == ""                         # nothing ran: no guest output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pykvm: error: ") and message in lines[0], result.stderr


@pytest.mark.kvm
@pytest.mark.parametrize("kind,data,options,message", CASES)
def test_broken_images_are_refused_before_anything_runs(tmp_path, kind, data, options, message):
    image = tmp_path / f"{kind}.img"
    image.write_bytes(data)
    _refused(invoke("run", *options, str(image)), message)


@pytest.mark.kvm
@pytest.mark.parametrize("size,options,message", [
    (0, [], "64 KiB to 16 MiB"),
    (32 << 10, [], "64 KiB to 16 MiB"),
    (96 << 10, [], "multiples of 64 KiB"),
    ((16 << 20) + (64 << 10), [], "64 KiB to 16 MiB"),
    (64 << 10, ["IMAGE"], "takes no IMAGE"),
    (64 << 10, ["--mode", "real"], "--mode do not apply"),
    (64 << 10, ["--module", "IMAGE"], "--module do not apply"),
    (16 << 20, ["--testdev"], "overlaps the pc-testdev MMIO"),
])
def test_broken_roms_are_refused(tmp_path, size, options, message):
    rom, other = tmp_path / "rom.bin", tmp_path / "other.bin"
    rom.write_bytes(bytes(size))
    other.write_bytes(b"\xf4")
    _refused(invoke("run", "--bios", str(rom), *[str(other) if o == "IMAGE" else o for o in options]), message)


@pytest.mark.kvm
@pytest.mark.parametrize("options,message", [
    (["--module", "MISSING"], "missing.bin: No such file"),
    (["--module", "HUGE", "--mem", "2M"], "more than guest RAM"),
    (["--module", "BIG", "--mem", "2M"], "module 0 (BIG) 0x101000-0x200fff lies outside guest RAM"),
    (["--module", "BIG,", "--format", "flat"], "modules only apply to multiboot and PVH kernels"),
])
def test_module_refusals(tmp_path, options, message):
    kernel, big, huge = tmp_path / "k.elf", tmp_path / "BIG", tmp_path / "huge.bin"
    kernel.write_bytes(pvh_kernel())
    big.write_bytes(bytes(MIB))
    huge.write_bytes(bytes(3 * MIB))
    paths = {"MISSING": str(tmp_path / "missing.bin"), "BIG": "BIG", "BIG,": "BIG,", "HUGE": str(huge)}
    with contextlib.chdir(tmp_path):
        _refused(invoke("run", *[paths.get(o, o) for o in options], str(kernel)), message)


@pytest.mark.kvm
@pytest.mark.parametrize("code,mode,other", [
    (b"\xd9\xfe\xf4", "real", "--mode protected or --mode long"),       # fsin: not emulated
    ("selftest16", "protected", "--mode real or --mode long"),            # 16-bit code: a triple fault
    ("selftest16", "long", "--mode real or --mode protected"),
])
def test_a_flat_image_failing_at_once_names_mode(tmp_path, code, mode, other):
    image = tmp_path / "flat.bin"
    image.write_bytes(build_guest(code).read_bytes() if isinstance(code, str) else code)
    result = invoke("run", "--mode", mode, str(image))
    assert result.exit_code in (6, 8), result.output
    assert f"entered in {mode} mode" in result.stderr and other in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.kvm
def test_step_starts_at_the_reset_vector():
    result = invoke("step", "--bios", str(build_guest("bios")), "-n", "3", "--no-regs")
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["0", "emu", "real", "mode"] and "f000:0000fff0" in lines[0]
    assert "call" in lines[0] and "0000fff3" not in lines[0]
    assert "f000:0000" in lines[1]             # reset16, still through the reset CS
