"""PVH kernels: ELF files with a ``XEN_ELFNOTE_PHYS32_ENTRY`` note, started as QEMU's ``-kernel``
and cloud-hypervisor start them (Xen's "x86/HVM direct boot ABI", ``docs/misc/pvh.pandoc``).

* The note (owner "Xen", type 18) in a PT_NOTE segment holds the physical 32-bit entry
  point (4 bytes; 64-bit kernels such as Linux write it as 8). ELF32 and ELF64 files alike:
  the PT_LOAD segments go to their physical addresses, below 4 GiB.
* Machine state at the entry point: 32-bit protected mode, paging off; EBX = physical
  address of ``struct hvm_start_info``; CS a flat 32-bit read/execute segment, DS/ES (and
  here FS/GS/SS) flat 32-bit read/write segments (pykvm's loader GDT: CS 0x08, data 0x10;
  the ABI leaves selectors unspecified); TR a 32-bit busy TSS with base 0 and limit 0x67;
  CR0 = PE (plus ET, which is not writable), CR4 = 0; EFLAGS with IF, TF and VM clear.
  No stack is promised (pykvm's ESP is 0x80000, as for ``--mode protected``).
* ``struct hvm_start_info`` (version 1, 56 bytes): magic 0x336ec578, version, flags, the
  number and address of ``hvm_modlist_entry`` (paddr, size, cmdline_paddr, reserved: 32
  bytes each), the command line's address, the RSDP's (0: pykvm has no ACPI), the
  address and length of the memory map (``hvm_memmap_table_entry``: addr, size, type,
  reserved: 24 bytes each, types as E820: 1 RAM, 2 reserved). An address of 0 means
  "not present". All of it goes in the boot-information area from 0x7000.
* Modules (``--module``) are placed page-aligned after the kernel, as for multiboot; a module's
  command line is given only when one was (QEMU gives its ``-initrd`` none).
"""

from __future__ import annotations

import struct

from pykvm.errors import BadInputError
from pykvm.loaders import elf as elf_loader
from pykvm.loaders.image import (BootArea, BootImage, LoadPlan, add_mode_structures, check_kernel_options,
                                  plan_modules)
from pykvm.x86 import memmap

XEN_NOTE_OWNER = b"Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 18
START_MAGIC = 0x336EC578
START_VERSION = 1

_START_INFO = struct.Struct("<IIIIQQQQII")      # 56 bytes
_MODLIST = struct.Struct("<QQQQ")
_MEMMAP = struct.Struct("<QQII")


def find_entry_note(data: bytes) -> bytes | None:
    """The descriptor of the PHYS32_ENTRY note, or None (``BadInputError`` for a broken ELF)."""
    elf_loader.parse_elf(data)
    for owner, n_type, desc in elf_loader.iter_notes(data):
        if owner == XEN_NOTE_OWNER and n_type == XEN_ELFNOTE_PHYS32_ENTRY:
            return desc
    return None


def has_entry_note(data: bytes) -> bool:
    """For ``--format auto``: is this an ELF carrying the PVH entry note? (Never raises.)"""
    if not elf_loader.is_elf(data):
        return False
    try:
        return find_entry_note(data) is not None
    except BadInputError:
        return False


def entry_point(data: bytes) -> int:
    desc = find_entry_note(data)
    if desc is None:
        raise BadInputError("not a PVH kernel: no XEN_ELFNOTE_PHYS32_ENTRY note (owner \"Xen\", type 18) "
                            "in its PT_NOTE segments")
    if len(desc) not in (4, 8):
        raise BadInputError(f"the PVH entry note holds {len(desc)} bytes, expected a 4- or 8-byte address")
    entry = int.from_bytes(desc, "little")
    if entry >= 1 << 32:
        raise BadInputError(f"the PVH entry point {entry:#x} is not a 32-bit physical address")
    return entry


def load(memory, data: bytes, mode: str | None = None, load_addr: int | None = None,
         entry: int | None = None, cmdline: str = "", modules=()) -> BootImage:
    check_kernel_options("PVH", memory, mode, load_addr)
    elf = elf_loader.parse_elf(data)
    start = entry_point(data) if entry is None else entry
    if any(s.paddr + s.memsz > 1 << 32 for s in elf.segments):
        raise BadInputError("a PVH kernel must be loaded below 4 GiB (it starts with paging off)")
    plan = LoadPlan("protected")
    elf_loader.plan_segments(plan, elf, data)
    if not plan.covers(start):
        raise BadInputError(f"the PVH entry point {start:#x} is outside the loaded segments")
    placed = plan_modules(plan, modules)
    add_mode_structures(plan, memory)
    area = BootArea(plan)
    info_addr = area.reserve(_START_INFO.size)
    table = b"".join(_MEMMAP.pack(addr, size, kind, 0) for addr, size, kind in memmap.map_of(memory).e820())
    memmap_addr = area.add(table, "PVH memory map")
    cmdline_addr = area.add_string(cmdline, "PVH command line") if cmdline else 0
    modlist = b"".join(_MODLIST.pack(m.start, m.size, area.add_string(m.cmdline, "module command line")
                                     if m.cmdline is not None else 0, 0) for m in placed)
    modlist_addr = area.add(modlist, "PVH module list") if placed else 0
    area.put(info_addr, _START_INFO.pack(START_MAGIC, START_VERSION, 0, len(placed), modlist_addr, cmdline_addr,
                                         0, memmap_addr, len(table) // _MEMMAP.size, 0), "PVH start info")
    ranges = plan.apply(memory)
    return BootImage("pvh", "protected", start, ranges, {"rbx": info_addr}, protocol="pvh")
