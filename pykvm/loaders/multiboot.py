"""Multiboot (version 1) kernels: header search, ELF or a.out-kludge loading, the info struct.

Per the Multiboot 0.6.96 specification:

* the header (magic 0x1BADB002, flags, checksum with magic + flags + checksum = 0
  mod 2^32) is 32-bit aligned and lies entirely within the first 8 KiB;
* flag bit 16 ("a.out kludge") means the header carries header_addr, load_addr,
  load_end_addr, bss_end_addr and entry_addr and the loader uses them instead of
  the ELF headers; otherwise the kernel must be an ELF file;
* flag bits 0-15 are requirements: a loader that cannot honour one must refuse
  the kernel. pykvm loads no modules (bit 0 is trivially honoured), always
  provides memory information (bit 1), and treats the video-mode request (bit 2)
  as the preference every common loader treats it as (no framebuffer is given);
  any other bit in 3-15 is refused;
* the machine state at entry: EAX = 0x2BADB002, EBX = physical address of the
  info struct, flat 32-bit CS/DS/ES/FS/GS/SS, protected mode with paging off,
  IF clear — exactly ``boot.initial_state("protected", ...)`` plus EAX/EBX.

The info struct and its strings and memory map go at 0x7000-0x7fff (see
``pykvm.x86.boot``): info at 0x7000, memory map at 0x7080, boot loader name at
0x7100, command line from 0x7200 up to the end of the area.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pykvm.errors import BadInputError
from pykvm.loaders import elf as elf_loader
from pykvm.loaders.image import BootImage, LoadPlan, add_mode_structures
from pykvm.x86 import boot

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
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9

INFO_ADDR = boot.BOOT_INFO_ADDR
MMAP_ADDR = INFO_ADDR + 0x80
LOADER_NAME_ADDR = INFO_ADDR + 0x100
CMDLINE_ADDR = INFO_ADDR + 0x200
CMDLINE_END = boot.BOOT_INFO_END
INFO_SIZE = 116
LOADER_NAME = b"pykvm\0"

MMAP_AVAILABLE = 1
_LOW_MEMORY_END = 0xA0000     # conventional memory; the VGA/BIOS hole follows on a PC
_HIGH_MEMORY = 0x100000

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
    if h.header_addr < h.load_addr:
        raise BadInputError(f"multiboot header_addr {h.header_addr:#x} is below load_addr {h.load_addr:#x}")
    file_start = h.offset - (h.header_addr - h.load_addr)
    if file_start < 0:
        raise BadInputError(f"multiboot load_addr {h.load_addr:#x} lies before the start of the file")
    if h.load_end_addr == 0:
        load_size = len(data) - file_start
    elif h.load_end_addr <= h.load_addr:
        raise BadInputError(f"multiboot load_end_addr {h.load_end_addr:#x} is not above "
                            f"load_addr {h.load_addr:#x}")
    else:
        load_size = h.load_end_addr - h.load_addr
        if file_start + load_size > len(data):
            raise BadInputError(f"multiboot kernel is truncated: load_end_addr needs {load_size:#x} bytes "
                                f"from file offset {file_start:#x}, the file has {len(data):#x}")
    load_end = h.load_addr + load_size
    if h.bss_end_addr == 0:
        mem_end = load_end
    elif h.bss_end_addr < load_end:
        raise BadInputError(f"multiboot bss_end_addr {h.bss_end_addr:#x} is below the loaded end {load_end:#x}")
    else:
        mem_end = h.bss_end_addr
    if not h.load_addr <= h.entry_addr < load_end:
        raise BadInputError(f"multiboot entry_addr {h.entry_addr:#x} is outside the loaded kernel "
                            f"{h.load_addr:#x}-{load_end - 1:#x}")
    plan.add_image(h.load_addr, memoryview(data)[file_start:file_start + load_size], mem_end - h.load_addr,
                   what="multiboot kernel")
    return h.entry_addr


def _plan_elf(plan: LoadPlan, data: bytes) -> int:
    if not elf_loader.is_elf(data):
        raise BadInputError("multiboot kernel is not ELF and its header has no a.out-kludge addresses (flag 16)")
    elf = elf_loader.parse_elf(data)
    entry = elf.physical_entry()
    if entry >= 1 << 32 or any(s.paddr + s.memsz > 1 << 32 for s in elf.segments):
        raise BadInputError("multiboot ELF kernel must be loaded and entered below 4 GiB")
    elf_loader.plan_segments(plan, elf, data)
    return entry


def build_info(ram_end: int, cmdline: bytes | None) -> list[tuple[int, bytes, str]]:
    """The multiboot info struct, memory map, loader name and command line as (gpa, bytes, what)."""
    low_end = min(ram_end, _LOW_MEMORY_END)
    mmap = struct.pack("<IQQI", 20, 0, low_end, MMAP_AVAILABLE)
    if ram_end > _HIGH_MEMORY:
        mmap += struct.pack("<IQQI", 20, _HIGH_MEMORY, ram_end - _HIGH_MEMORY, MMAP_AVAILABLE)
    flags = MBI_MEMORY | MBI_MMAP | MBI_LOADER_NAME
    if cmdline is not None:
        flags |= MBI_CMDLINE
    info = bytearray(INFO_SIZE)
    struct.pack_into("<III", info, 0, flags, low_end // 1024, max(0, ram_end - _HIGH_MEMORY) // 1024)
    struct.pack_into("<I", info, 16, CMDLINE_ADDR if cmdline is not None else 0)
    struct.pack_into("<II", info, 44, len(mmap), MMAP_ADDR)
    struct.pack_into("<I", info, 64, LOADER_NAME_ADDR)
    pieces = [(INFO_ADDR, bytes(info), "multiboot info"), (MMAP_ADDR, mmap, "multiboot memory map"),
              (LOADER_NAME_ADDR, LOADER_NAME, "multiboot boot loader name")]
    if cmdline is not None:
        pieces.append((CMDLINE_ADDR, cmdline + b"\0", "multiboot command line"))
    return pieces


def _encode_cmdline(cmdline: str | None) -> bytes | None:
    if not cmdline:
        return None
    if "\0" in cmdline:
        raise BadInputError("the kernel command line may not contain NUL characters")
    # Command-line arguments that are not UTF-8 arrive as surrogate escapes: pass the bytes on.
    raw = cmdline.encode("utf-8", "surrogateescape")
    room = CMDLINE_END - CMDLINE_ADDR - 1
    if len(raw) > room:
        raise BadInputError(f"the kernel command line is {len(raw)} bytes, at most {room} fit")
    return raw


def load(memory, data: bytes, mode: str | None = None, load_addr: int | None = None,
         entry: int | None = None, cmdline: str = "") -> BootImage:
    """Load a multiboot kernel; it always starts in protected mode with EAX/EBX set."""
    if mode not in (None, "protected"):
        raise BadInputError(f"multiboot kernels start in protected mode, not {mode}")
    if load_addr is not None:
        raise BadInputError("a load address does not apply to multiboot kernels (the header gives it)")
    raw_cmdline = _encode_cmdline(cmdline)
    if memory.base != 0:
        raise BadInputError("multiboot needs guest RAM starting at address 0")
    header = parse_header(data)
    plan = LoadPlan("protected")
    start = _plan_aout(plan, header, data) if header.flags & HF_AOUT_KLUDGE else _plan_elf(plan, data)
    if entry is not None:
        if not plan.covers(entry):
            raise BadInputError(f"entry point {entry:#x} is outside the loaded kernel")
        start = entry
    add_mode_structures(plan, memory)
    for gpa, blob, what in build_info(memory.base + memory.size, raw_cmdline):
        plan.add_boot(gpa, blob, what)
    ranges = plan.apply(memory)
    return BootImage("multiboot", "protected", start, ranges,
                     {"rax": BOOTLOADER_MAGIC, "rbx": INFO_ADDR})
