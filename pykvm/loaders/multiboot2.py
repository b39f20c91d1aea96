"""Multiboot 2 kernels: the header and its tags, ELF or address-tag loading, the boot information.

Per the Multiboot2 specification (version 2.0):

* the header (magic 0xe85250d6, architecture 0 = i386 protected mode, header_length,
  checksum with magic + architecture + header_length + checksum = 0 mod 2^32) is 8-byte
  aligned and lies entirely within the first 32 KiB, followed by tags (u16 type, u16 flags,
  u32 size; each 8-byte aligned), ending with the end tag (type 0, size 8). Flag bit 0 marks
  a tag optional: a loader may ignore an optional tag it cannot honour, and must refuse the
  kernel for a required one.
* pykvm honours: the information request (1; it gives the command line, the boot loader
  name, modules, the basic memory information and the memory map, and refuses a required
  request for anything else), the address tag (2; loading as Multiboot 1's a.out kludge),
  the entry address (3), console flags (4; a required console is refused: pykvm's console is
  COM1, there is no EGA text screen), module alignment (6; modules are always page-aligned),
  the EFI entry addresses (8, 9; they only apply with EFI boot services) and relocatable
  images (10; loaded where linked). A required framebuffer (5) or EFI boot services (7) is
  refused; optional ones are ignored, and no framebuffer information is given.
* without an address tag the kernel must be an ELF file (ELF32 or ELF64, below 4 GiB).
* the machine state at entry is Multiboot 1's: EAX = 0x36d76289, EBX = the physical address
  of the boot information (8-byte aligned), flat 32-bit segments, paging off, IF clear.
* the boot information (total_size, reserved, then 8-byte aligned tags): command line (1,
  always given, possibly empty), boot loader name (2), one module tag (3) per module, basic
  memory information (4: mem_lower and mem_upper in KiB), the memory map (6: entry_size 24,
  entry_version 0, the machine's map) and the end tag. It goes in the boot-information area
  from 0x7000; modules go page-aligned after the kernel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pykvm.errors import BadInputError
from pykvm.loaders import multiboot
from pykvm.loaders.image import (BootArea, BootImage, LoadPlan, add_mode_structures, check_kernel_options,
                                  encode_string, plan_modules)
from pykvm.x86 import memmap

HEADER_MAGIC = 0xE85250D6
BOOTLOADER_MAGIC = 0x36D76289
ARCH_I386 = 0
SEARCH_LIMIT = 32768
ALIGN = 8

# header tags
TAG_END, TAG_INFO_REQUEST, TAG_ADDRESS, TAG_ENTRY, TAG_CONSOLE, TAG_FRAMEBUFFER = 0, 1, 2, 3, 4, 5
TAG_MODULE_ALIGN, TAG_EFI_BS, TAG_ENTRY_EFI32, TAG_ENTRY_EFI64, TAG_RELOCATABLE = 6, 7, 8, 9, 10
TAG_OPTIONAL = 1
CONSOLE_REQUIRED = 1 << 0

# boot information tags
MBI_CMDLINE, MBI_LOADER_NAME, MBI_MODULE, MBI_BASIC_MEMINFO, MBI_MMAP = 1, 2, 3, 4, 6
GIVEN = frozenset((MBI_CMDLINE, MBI_LOADER_NAME, MBI_MODULE, MBI_BASIC_MEMINFO, MBI_MMAP))
MBI_NAMES = {1: "command line", 2: "boot loader name", 3: "modules", 4: "basic memory information",
             5: "BIOS boot device", 6: "memory map", 7: "VBE information", 8: "framebuffer information",
             9: "ELF sections", 10: "APM table", 11: "EFI 32-bit system table", 12: "EFI 64-bit system table",
             13: "SMBIOS tables", 14: "ACPI 1.0 RSDP", 15: "ACPI 2.0 RSDP", 16: "network information",
             17: "EFI memory map", 18: "EFI boot services not terminated", 19: "EFI 32-bit image handle",
             20: "EFI 64-bit image handle", 21: "image load base address"}
LOADER_NAME = "pykvm"

_HEADER = struct.Struct("<IIII")
_TAG = struct.Struct("<HHI")
# The smallest size of each header tag pykvm reads fields from.
_TAG_SIZES = {TAG_INFO_REQUEST: 8, TAG_ADDRESS: 24, TAG_ENTRY: 12, TAG_CONSOLE: 12, TAG_FRAMEBUFFER: 20,
              TAG_MODULE_ALIGN: 8, TAG_EFI_BS: 8, TAG_ENTRY_EFI32: 12, TAG_ENTRY_EFI64: 12, TAG_RELOCATABLE: 24}
_TAG_NAMES = {TAG_INFO_REQUEST: "information request", TAG_ADDRESS: "address", TAG_ENTRY: "entry address",
              TAG_CONSOLE: "console flags", TAG_FRAMEBUFFER: "framebuffer", TAG_MODULE_ALIGN: "module alignment",
              TAG_EFI_BS: "EFI boot services", TAG_ENTRY_EFI32: "EFI i386 entry address",
              TAG_ENTRY_EFI64: "EFI amd64 entry address", TAG_RELOCATABLE: "relocatable"}


@dataclass(frozen=True)
class Header:
    offset: int
    length: int
    address: tuple[int, int, int, int] | None = None   # header_addr, load_addr, load_end_addr, bss_end_addr
    entry: int | None = None


def find_header(data: bytes) -> tuple[int, int, int] | None:
    """(offset, architecture, header_length) of the first 8-byte aligned magic with a valid
    checksum in the first 32 KiB, or None."""
    end = min(len(data), SEARCH_LIMIT) - _HEADER.size
    for off in range(0, end + 1, ALIGN):
        magic, arch, length, checksum = _HEADER.unpack_from(data, off)
        if magic == HEADER_MAGIC and (magic + arch + length + checksum) & 0xFFFFFFFF == 0:
            return off, arch, length
    return None


def parse_header(data: bytes) -> Header:
    """Find and validate the header and its tags (``BadInputError`` on anything pykvm cannot honour)."""
    found = find_header(data)
    if found is None:
        raise BadInputError("no Multiboot 2 header (magic 0xe85250d6 with a valid checksum, 8-byte aligned) "
                            "in the first 32 KiB")
    offset, arch, length = found
    if arch != ARCH_I386:
        raise BadInputError(f"Multiboot 2 header for architecture {arch} (4 = MIPS), not 0 = i386")
    if length < _HEADER.size + _TAG.size:
        raise BadInputError(f"Multiboot 2 header_length {length} is too short for a header and its end tag")
    if offset + length > len(data):
        raise BadInputError(f"Multiboot 2 header ({length} bytes at {offset:#x}) runs past the end of the file")
    if offset + length > SEARCH_LIMIT:
        raise BadInputError("Multiboot 2 header extends past the first 32 KiB")
    address = entry = None
    pos, end = offset + _HEADER.size, offset + length
    while True:
        if pos + _TAG.size > end:
            raise BadInputError("Multiboot 2 header has no end tag (type 0) within its header_length")
        kind, flags, size = _TAG.unpack_from(data, pos)
        if kind == TAG_END:
            if size != _TAG.size:
                raise BadInputError(f"Multiboot 2 end tag has size {size}, expected 8")
            break
        name = _TAG_NAMES.get(kind, f"type {kind}")
        if size < _TAG_SIZES.get(kind, _TAG.size) or pos + size > end:
            raise BadInputError(f"Multiboot 2 {name} tag at {pos:#x} has a bad size {size}")
        optional = flags & TAG_OPTIONAL
        fields = struct.unpack_from(f"<{(size - _TAG.size) // 4}I", data, pos + _TAG.size)
        if kind == TAG_INFO_REQUEST and not optional:
            missing = [t for t in fields if t not in GIVEN]
            if missing:
                names = ", ".join(f"{MBI_NAMES.get(t, 'type')} ({t})" for t in missing)
                raise BadInputError(f"Multiboot 2 kernel requires boot information pykvm does not give: {names}")
        elif kind == TAG_ADDRESS:
            address = fields[:4]
        elif kind == TAG_ENTRY:
            entry = fields[0]
        elif kind == TAG_CONSOLE and fields[0] & CONSOLE_REQUIRED and not optional:
            raise BadInputError("Multiboot 2 kernel requires a console (console flags tag, bit 0); pykvm's console "
                                "is the serial port COM1, there is no EGA text screen")
        elif kind == TAG_FRAMEBUFFER and not optional:
            raise BadInputError(f"Multiboot 2 kernel requires a {fields[0]}x{fields[1]}x{fields[2]} framebuffer "
                                "(framebuffer tag); pykvm has no display (an optional tag would be ignored)")
        elif kind == TAG_EFI_BS and not optional:
            raise BadInputError("Multiboot 2 kernel requires EFI boot services; pykvm boots it like a BIOS loader")
        elif kind not in _TAG_NAMES and not optional:
            raise BadInputError(f"Multiboot 2 header has a required tag of unknown type {kind}")
        pos += (size + ALIGN - 1) & ~(ALIGN - 1)
    return Header(offset, length, address, entry)


def build_info(memory_map, cmdline: str, modules) -> bytes:
    """The boot information: command line, loader name, modules, basic memory info, memory map."""
    tags = [_tag(MBI_CMDLINE, encode_string(cmdline, "kernel command line") + b"\0"),
            _tag(MBI_LOADER_NAME, LOADER_NAME.encode() + b"\0")]
    for m in modules:
        tags.append(_tag(MBI_MODULE, struct.pack("<II", m.start, m.end)
                         + encode_string(m.string, "module string") + b"\0"))
    tags.append(_tag(MBI_BASIC_MEMINFO, struct.pack("<II", *memory_map.lower_upper_kib())))
    entries = b"".join(struct.pack("<QQII", start, size, kind, 0) for start, size, kind in memory_map.e820())
    tags.append(_tag(MBI_MMAP, struct.pack("<II", 24, 0) + entries))
    tags.append(_tag(TAG_END, b""))
    body = b"".join(tags)
    return struct.pack("<II", 8 + len(body), 0) + body


def _tag(kind: int, payload: bytes) -> bytes:
    size = _TAG.size + len(payload)
    return (struct.pack("<II", kind, size) + payload).ljust((size + ALIGN - 1) & ~(ALIGN - 1), b"\0")


def load(memory, data: bytes, mode: str | None = None, load_addr: int | None = None,
         entry: int | None = None, cmdline: str = "", modules=()) -> BootImage:
    """Load a Multiboot 2 kernel and its modules; it starts in protected mode with EAX/EBX set."""
    check_kernel_options("Multiboot 2", memory, mode, load_addr)
    header = parse_header(data)
    plan = LoadPlan("protected")
    if header.address is not None:
        multiboot.plan_by_address(plan, data, header.offset, *header.address, entry_addr=None, name="Multiboot 2")
        if header.entry is None:
            raise BadInputError("Multiboot 2 kernel with an address tag but no entry address tag")
        start = header.entry
    else:
        start = multiboot.plan_elf_below_4g(plan, data, "Multiboot 2 kernel is not ELF and its header has no "
                                                        "address tag", "Multiboot 2")
        start = start if header.entry is None else header.entry
    if entry is not None:
        start = entry
    if not plan.covers(start):
        raise BadInputError(f"Multiboot 2 entry point {start:#x} is outside the loaded kernel")
    placed = plan_modules(plan, modules)
    add_mode_structures(plan, memory)
    info = BootArea(plan).add(build_info(memmap.map_of(memory), cmdline, placed), "Multiboot 2 boot information")
    ranges = plan.apply(memory)
    return BootImage("multiboot2", "protected", start, ranges, {"rax": BOOTLOADER_MAGIC, "rbx": info})
