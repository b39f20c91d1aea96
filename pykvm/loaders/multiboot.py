"""Multiboot (version 1) kernels: header search, ELF or a.out-kludge loading, the info struct.

Per the Multiboot 0.6.96 specification:

* the header (magic 0x1BADB002, flags, checksum with magic + flags + checksum = 0
  mod 2^32) is 32-bit aligned and lies entirely within the first 8 KiB;
* flag bit 16 ("a.out kludge") means the header carries header_addr, load_addr,
  load_end_addr, bss_end_addr and entry_addr and the loader uses them instead of
  the ELF headers; otherwise the kernel must be an ELF file;
* flag bits 0-15 are requirements: a loader that cannot honour one must refuse
  the kernel. pykvm puts modules on page boundaries (bit 0), always provides
  memory information (bit 1), and treats the video-mode request (bit 2) as the
  preference every common loader treats it as (no framebuffer is given); any
  other bit in 3-15 is refused;
* the machine state at entry: EAX = 0x2BADB002, EBX = physical address of the
  info struct, flat 32-bit CS/DS/ES/FS/GS/SS, protected mode with paging off,
  IF clear — exactly ``boot.initial_state("protected", ...)`` plus EAX/EBX.

The info struct goes at 0x7000, followed by the memory map (the machine's, from
``pykvm.x86.memmap``), the boot loader name, the command line and the module list
with its strings, up to the end of the boot-information area at 0x7fff (see
``pykvm.x86.boot``). Modules (``--module``) are placed page-aligned after the kernel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pykvm.errors import BadInputError
from pykvm.loaders import elf as elf_loader
from pykvm.loaders.image import (BootArea, BootImage, LoadPlan, PlacedModule, add_mode_structures,
                                  check_kernel_options, plan_modules)
from pykvm.x86 import boot, memmap

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
SEARCH_LIMIT = 8192

HF_PAGE_ALIGN = 1 << 0
HF_MEMORY_INFO = 1 << 1
HF_VIDEO_MODE = 1 << 2
HF_AOUT_KLUDGE = 1 << 16
_HF_REQUIRED = 0xFFFF
_HF_UNDERSTOOD = HF_PAGE_ALIGN | HF_MEMORY_INFO | HF_VIDEO_MODE

# multiboot_info.flags
MBI_MEMORY = 1 << 0
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9

INFO_ADDR = boot.BOOT_INFO_ADDR    # the info struct comes first in the boot-information area
INFO_SIZE = 116
LOADER_NAME = b"pykvm\0"

_HEADER = struct.Struct("<III")
_AOUT = struct.Struct("<IIIII")


@dataclass(frozen=True)
class MultibootHeader:
    offset: int               # file offset of the magic
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


def find_header(data: bytes) -> MultibootHeader | None:
    """The first valid header (magic and checksum) in the first 8 KiB, or None.

    Kludge fields are read when flag 16 is set and present in the file; their
    absence is reported by ``parse_header``, not here, so detection stays lenient.
    """
    end = min(len(data), SEARCH_LIMIT) - _HEADER.size
    for off in range(0, end + 1, 4):
        magic, flags, checksum = _HEADER.unpack_from(data, off)
        if magic == HEADER_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            if flags & HF_AOUT_KLUDGE and off + _HEADER.size + _AOUT.size <= len(data):
                return MultibootHeader(off, flags, *_AOUT.unpack_from(data, off + _HEADER.size))
            return MultibootHeader(off, flags)
    return None


def parse_header(data: bytes) -> MultibootHeader:
    """Find and validate the header (``BadInputError`` when absent or unusable)."""
    header = find_header(data)
    if header is None:
        raise BadInputError("no multiboot header (magic 0x1badb002 with a valid checksum) "
                            "in the first 8 KiB")
    unsupported = header.flags & _HF_REQUIRED & ~_HF_UNDERSTOOD
    if unsupported:
        raise BadInputError(f"multiboot header requires unsupported features (flags {unsupported:#x})")
    if header.flags & HF_AOUT_KLUDGE:
        end = header.offset + _HEADER.size + _AOUT.size
        if end > len(data):
            raise BadInputError("truncated multiboot header: the a.out-kludge address fields are missing")
        if end > SEARCH_LIMIT:
            raise BadInputError("multiboot header extends past the first 8 KiB")
    return header


def _plan_aout(plan: LoadPlan, header: MultibootHeader, data: bytes) -> int:
    """Place the kernel by the header's address fields; returns the entry point."""
    h = header
    plan_by_address(plan, data, h.offset, h.header_addr, h.load_addr, h.load_end_addr, h.bss_end_addr,
                    h.entry_addr)
    return h.entry_addr


def plan_by_address(plan: LoadPlan, data: bytes, offset: int, header_addr: int, load_addr: int,
                    load_end_addr: int, bss_end_addr: int, entry_addr: int | None,
                    name: str = "multiboot") -> None:
    """Place a kernel by a header's address fields (Multiboot 1's a.out kludge, Multiboot 2's
    address tag): the file from the header's offset minus (header_addr - load_addr), up to
    load_end_addr (0: the end of the file), zero-filled up to bss_end_addr (0: no bss).
    ``entry_addr`` (None: not checked here) must lie in what is loaded."""
    if header_addr < load_addr:
        raise BadInputError(f"{name} header_addr {header_addr:#x} is below load_addr {load_addr:#x}")
    file_start = offset - (header_addr - load_addr)
    if file_start < 0:
        raise BadInputError(f"{name} load_addr {load_addr:#x} lies before the start of the file")
    if load_end_addr == 0:
        load_size = len(data) - file_start
    elif load_end_addr <= load_addr:
        raise BadInputError(f"{name} load_end_addr {load_end_addr:#x} is not above load_addr {load_addr:#x}")
    else:
        load_size = load_end_addr - load_addr
        if file_start + load_size > len(data):
            raise BadInputError(f"{name} kernel is truncated: load_end_addr needs {load_size:#x} bytes "
                                f"from file offset {file_start:#x}, the file has {len(data):#x}")
    load_end = load_addr + load_size
    if bss_end_addr == 0:
        mem_end = load_end
    elif bss_end_addr < load_end:
        raise BadInputError(f"{name} bss_end_addr {bss_end_addr:#x} is below the loaded end {load_end:#x}")
    else:
        mem_end = bss_end_addr
    if entry_addr is not None and not load_addr <= entry_addr < load_end:
        raise BadInputError(f"{name} entry_addr {entry_addr:#x} is outside the loaded kernel "
                            f"{load_addr:#x}-{load_end - 1:#x}")
    plan.add_image(load_addr, memoryview(data)[file_start:file_start + load_size], mem_end - load_addr,
                   what=f"{name} kernel")


def _plan_elf(plan: LoadPlan, data: bytes) -> int:
    return plan_elf_below_4g(plan, data, "multiboot kernel is not ELF and its header has no a.out-kludge "
                                         "addresses (flag 16)", "multiboot")


def plan_elf_below_4g(plan: LoadPlan, data: bytes, not_elf: str, name: str) -> int:
    """Place an ELF kernel's segments (ELF32 or ELF64, all below 4 GiB); returns its physical entry."""
    if not elf_loader.is_elf(data):
        raise BadInputError(not_elf)
    elf = elf_loader.parse_elf(data)
    entry = elf.physical_entry()
    if entry >= 1 << 32 or any(s.paddr + s.memsz > 1 << 32 for s in elf.segments):
        raise BadInputError(f"{name} ELF kernel must be loaded and entered below 4 GiB")
    elf_loader.plan_segments(plan, elf, data)
    return entry


def build_info(area: BootArea, memory_map, cmdline: str, modules: list[PlacedModule]) -> int:
    """The multiboot info struct, memory map (the machine's, ``memmap``), boot loader name,
    command line and module list, placed in ``area``; returns the info struct's address."""
    info_addr = area.reserve(INFO_SIZE, align=4)
    mmap = b"".join(struct.pack("<IQQI", 20, start, size, kind) for start, size, kind in memory_map.e820())
    flags = MBI_MEMORY | MBI_MMAP | MBI_LOADER_NAME
    info = bytearray(INFO_SIZE)
    struct.pack_into("<II", info, 4, *memory_map.lower_upper_kib())
    struct.pack_into("<II", info, 44, len(mmap), area.add(mmap, "multiboot memory map"))
    struct.pack_into("<I", info, 64, area.add(LOADER_NAME, "multiboot boot loader name", align=1))
    if cmdline:
        flags |= MBI_CMDLINE
        struct.pack_into("<I", info, 16, area.add_string(cmdline, "multiboot command line"))
    if modules:
        flags |= MBI_MODS
        entries = b"".join(struct.pack("<IIII", m.start, m.end, area.add_string(m.string, "module string"), 0)
                           for m in modules)
        struct.pack_into("<II", info, 20, len(modules), area.add(entries, "multiboot module list", align=4))
    struct.pack_into("<I", info, 0, flags)
    area.put(info_addr, bytes(info), "multiboot info")
    return info_addr


def load(memory, data: bytes, mode: str | None = None, load_addr: int | None = None,
         entry: int | None = None, cmdline: str = "", modules=()) -> BootImage:
    """Load a multiboot kernel (and its modules); it starts in protected mode with EAX/EBX set."""
    check_kernel_options("multiboot", memory, mode, load_addr)
    header = parse_header(data)
    plan = LoadPlan("protected")
    start = _plan_aout(plan, header, data) if header.flags & HF_AOUT_KLUDGE else _plan_elf(plan, data)
    if entry is not None:
        if not plan.covers(entry):
            raise BadInputError(f"entry point {entry:#x} is outside the loaded kernel")
        start = entry
    placed = plan_modules(plan, modules)
    add_mode_structures(plan, memory)
    info = build_info(BootArea(plan), memmap.map_of(memory), cmdline, placed)
    ranges = plan.apply(memory)
    return BootImage("multiboot", "protected", start, ranges, {"rax": BOOTLOADER_MAGIC, "rbx": info})
