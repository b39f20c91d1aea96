"""Boot-time CPU state and the in-memory structures a loader provides, as pure functions.

Like Firecracker's ``regs.rs``/``gdt.rs`` split, nothing here touches KVM: the
functions return bytes to place in guest RAM and a ``CpuState`` to load, so they
are tested without /dev/kvm, and the emulator and KVM start from the very same
state.

Guest-physical layout used by every loader (all below 0x8000; a protected or
long-mode image may not be loaded there):

=================== ====================================================
0x0000 - 0x03ff     real-mode IVT (left to the guest; never written here)
0x0500 - 0x052f     loader GDT (``build_gdt()``), GDTR = {0x500, 0x2f}
0x1000 - 0x1fff     PML4 (long mode only)
0x2000 - 0x2fff     PDPT
0x3000 - 0x6fff     page directories, one per GiB of identity map (4 for the long-mode boot)
0x7000 - 0x7fff     boot information (multiboot info, memory map, cmdline)
0x7c00              load address of real-mode images (boot sectors)
0x80000             default stack top for protected and long mode
0x100000            default load address of protected/long-mode images
=================== ====================================================

GDT selectors: 0x08 flat 32-bit code, 0x10 flat data (also the long-mode data
selector: in 64-bit mode a data descriptor's base and limit are ignored), 0x18
64-bit code, 0x20 16-bit code and 0x28 16-bit data (base 0, limit 64 KiB) for a
guest returning to real mode. Descriptors are stored with the accessed bit set,
so the CPU never writes to the GDT when a guest reloads a selector, and the
hidden segment state built here equals what a ``mov`` of the selector loads.
"""

from __future__ import annotations

import struct
import sys
from array import array

from pykvm.x86.state import CS, DS, ES, FS, GPR_NAMES, GS, RDX, RSP, SS, TR, CpuState, DescriptorTable, Segment
from pykvm.errors import BadInputError
from pykvm.x86 import descriptors as D
from pykvm.x86.bits import (CR0_AM, CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_PAE,
                            EFER_LMA, EFER_LME, EFER_SCE, FLAG_FIXED)

# -- layout -----------------------------------------------------------------------------
IVT_ADDR = 0x0
IVT_LIMIT = 0x3FF
GDT_ADDR = 0x500
PML4_ADDR = 0x1000
PDPT_ADDR = 0x2000
PD_ADDR = 0x3000
MAX_PAGE_DIRECTORIES = 4
BOOT_INFO_ADDR = 0x7000
BOOT_INFO_END = 0x8000
REAL_MODE_LOAD_ADDR = 0x7C00
DEFAULT_STACK = 0x80000
DEFAULT_LOAD_ADDR = 0x100000
RESERVED_END = 0x8000          # protected/long-mode images must start at or above this
REAL_MODE_RESERVED_END = 0x500  # real-mode images keep clear of the IVT and BIOS data area

MODES = ("real", "protected", "long")

# -- selectors ---------------------------------------------------------------------------
SEL_NULL = 0x00
SEL_CODE32 = 0x08
SEL_DATA32 = 0x10
SEL_CODE64 = 0x18
SEL_CODE16 = 0x20
SEL_DATA16 = 0x28

# Loader descriptors are stored with the accessed bit set, so a guest reloading a selector
# never makes the CPU write to the GDT.
_CODE = D.TYPE_CODE | D.TYPE_CODE_READABLE | D.TYPE_ACCESSED   # 0xb
_DATA = D.TYPE_DATA_WRITABLE | D.TYPE_ACCESSED                 # 0x3

# -- paging ------------------------------------------------------------------------------
PTE_PRESENT = 0x1
PTE_RW = 0x2
PTE_PS = 0x80
GIB = 1 << 30
LONG_MODE_MAP = 4 * GIB     # what the long-mode boot identity-maps: the 32-bit physical space
_2MIB = 1 << 21

# -- control registers per mode ----------------------------------------------------------
RESET_CR0 = CR0_ET | (1 << 29) | (1 << 30)          # 0x60000010: CD|NW|ET, what KVM reports
PROTECTED_CR0 = CR0_PE | CR0_ET | CR0_NE
LONG_CR0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG   # 0x80050033
LONG_CR4 = CR4_PAE
LONG_EFER = EFER_LME | EFER_LMA | EFER_SCE


def gdt_entries() -> list[int]:
    """The loader GDT, indexed by selector >> 3 (see the module docstring)."""
    return [
        0,                                                            # 0x00 null
        D.encode_descriptor(0, 0xFFFFF, _CODE, db=1, g=1),    # 0x08 code32
        D.encode_descriptor(0, 0xFFFFF, _DATA, db=1, g=1),    # 0x10 data32
        D.encode_descriptor(0, 0xFFFFF, _CODE, l=1, g=1),     # 0x18 code64
        D.encode_descriptor(0, 0xFFFF, _CODE),                # 0x20 code16
        D.encode_descriptor(0, 0xFFFF, _DATA),                # 0x28 data16
    ]


def build_gdt() -> bytes:
    """The loader GDT as bytes, to be written at ``GDT_ADDR``."""
    entries = gdt_entries()
    return struct.pack(f"<{len(entries)}Q", *entries)


GDT_LIMIT = len(gdt_entries()) * 8 - 1


def segment_from_descriptor(selector: int, descriptor: int) -> Segment:
    """The hidden segment state a CPU holds after loading ``selector`` that names ``descriptor``.

    The limit is expanded to bytes when G is set, as ``kvm_segment.limit`` holds it.
    A not-present descriptor (including the null one) gives an unusable segment.
    """
    d = D.decode_descriptor(descriptor)
    return Segment(selector=selector, base=d.base, limit=d.limit, type=d.type, present=d.present,
                   dpl=d.dpl, db=d.db, s=d.s, l=d.l, g=d.g, avl=d.avl, unusable=0 if d.present else 1)


def gdt_segment(selector: int) -> Segment:
    """``segment_from_descriptor`` for a selector of the loader GDT."""
    return segment_from_descriptor(selector, gdt_entries()[selector >> 3])


def real_mode_segment(selector: int, code: bool = False) -> Segment:
    """A real-mode segment: base = selector * 16, 64 KiB limit, as after reset or a real-mode load."""
    return Segment(selector=selector, base=selector << 4, limit=0xFFFF, type=0xB if code else 0x3,
                   present=1, dpl=0, db=0, s=1, l=0, g=0, avl=0, unusable=0)


# -- page tables -------------------------------------------------------------------------
def identity_page_tables(mem_size: int, minimum: int = GIB) -> list[tuple[int, bytes]]:
    """4-level tables identity-mapping max(mem_size, ``minimum``), rounded up to GiB, with 2 MiB
    pages. The long-mode boot maps all 4 GiB (``LONG_MODE_MAP``): RAM, and above it the local
    APIC and device MMIO a 64-bit guest can then reach without its own tables.

    Returns whole 4 KiB pages (PML4, PDPT, one page directory per GiB) with their
    guest-physical addresses, so whatever was in RAM there before is overwritten.
    """
    if mem_size <= 0:
        raise ValueError(f"memory size must be positive, not {mem_size}")
    gibs = max(1, -(-max(mem_size, minimum) // GIB))
    if gibs > MAX_PAGE_DIRECTORIES:
        raise BadInputError(f"long-mode boot identity-maps at most {MAX_PAGE_DIRECTORIES} GiB, "
                            f"guest RAM ends at {mem_size:#x}")
    table = PTE_PRESENT | PTE_RW
    pml4 = struct.pack("<Q", PDPT_ADDR | table).ljust(4096, b"\0")
    pdpt = struct.pack(f"<{gibs}Q", *((PD_ADDR + 0x1000 * i) | table for i in range(gibs))
                       ).ljust(4096, b"\0")
    pieces = [(PML4_ADDR, pml4), (PDPT_ADDR, pdpt)]
    big = PTE_PRESENT | PTE_RW | PTE_PS
    for i in range(gibs):                    # 2 MiB-aligned frames: the flags are their low bits
        pd = array("Q", range(i * GIB | big, (i + 1) * GIB | big, _2MIB))
        if sys.byteorder != "little":
            pd.byteswap()
        pieces.append((PD_ADDR + 0x1000 * i, pd.tobytes()))
    return pieces


# -- per-mode memory and state -----------------------------------------------------------
def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise BadInputError(f"unknown boot mode {mode!r} (expected one of {', '.join(MODES)})")


def reserved_end(mode: str) -> int:
    """First address an image of ``mode`` may occupy (everything below is the loader's)."""
    _check_mode(mode)
    return REAL_MODE_RESERVED_END if mode == "real" else RESERVED_END


def default_load_addr(mode: str) -> int:
    _check_mode(mode)
    return REAL_MODE_LOAD_ADDR if mode == "real" else DEFAULT_LOAD_ADDR


def boot_memory(mode: str, ram_end: int) -> list[tuple[int, bytes]]:
    """What must be in guest RAM before entering ``mode``: (gpa, bytes) pieces, in the reserved area.

    ``ram_end`` (the first address past guest RAM) sizes the long-mode identity map.
    Real mode needs nothing: the IVT belongs to the guest.
    """
    _check_mode(mode)
    if mode == "real":
        return []
    pieces = [(GDT_ADDR, build_gdt())]
    if mode == "long":
        pieces += identity_page_tables(ram_end, LONG_MODE_MAP)
    return pieces


def prepare_memory(mode: str, memory) -> list[tuple[int, bytes]]:
    """Write ``boot_memory(mode, ...)`` into ``memory`` (a ``GuestMemory``); returns the pieces.

    Checks that every piece lies in RAM before writing any of them.
    """
    pieces = boot_memory(mode, memory.base + memory.size)
    for gpa, data in pieces:
        if not memory.contains(gpa, len(data)):
            raise BadInputError(f"guest RAM [{memory.base:#x}, {memory.base + memory.size:#x}) does not "
                                f"hold the {mode}-mode boot structures at {gpa:#x}-{gpa + len(data) - 1:#x}")
    for gpa, data in pieces:
        memory.write(gpa, data)
    return pieces


def _gpr_index(name) -> int:
    if isinstance(name, int):
        if 0 <= name < 16:
            return name
    elif name.lower() in GPR_NAMES:
        return GPR_NAMES.index(name.lower())
    raise BadInputError(f"unknown general-purpose register {name!r}")


def initial_state(mode: str, entry: int, stack: int | None = None,
                  registers: dict | None = None) -> CpuState:
    """The vCPU state to start an image of ``mode`` at ``entry``.

    * ``real``: CS:IP reaches ``entry`` (CS = 0 when entry <= 0xffff, else CS =
      (entry >> 4) & 0xf000); SS:SP = ``stack`` (default 0x7c00, SS = 0 below 64 KiB);
      DS = ES = FS = GS = 0; IDTR = IVT; CR0 as after reset.
    * ``protected``: flat 32-bit segments of the loader GDT (CS 0x08, others 0x10),
      CR0 = PE|ET|NE, paging off, ESP = ``stack`` (default 0x80000).
    * ``long``: CS 0x18 (L=1, D=0), data 0x10, CR0 = 0x80050033, CR4 = PAE,
      CR3 = PML4, EFER = LME|LMA|SCE, RSP = ``stack`` (default 0x80000).

    ``registers`` maps GPR names (``"rax"``, ...) or numbers to initial values (e.g. the
    multiboot EAX/EBX, a boot sector's DL); it is applied last, so it may override RSP.
    EFLAGS is 0x2 (interrupts off) in every mode. The IDT is left empty in protected
    and long mode: the guest installs its own before enabling interrupts.
    """
    _check_mode(mode)
    state = CpuState()
    state.rflags = FLAG_FIXED
    if mode == "real":
        if not 0 <= entry <= 0xFFFFF:
            raise BadInputError(f"real-mode entry {entry:#x} is not below 1 MiB")
        top = REAL_MODE_LOAD_ADDR if stack is None else stack
        if not 0 < top <= 0x100000:
            raise BadInputError(f"real-mode stack top {top:#x} is not in the first MiB")
        cs = 0 if entry <= 0xFFFF else (entry >> 4) & 0xF000
        ss = ((top - 1) >> 4) & 0xF000
        state.rip = entry - (cs << 4)
        state.gpr[RSP] = (top - (ss << 4)) & 0xFFFF
        state.seg[CS] = real_mode_segment(cs, code=True)
        state.seg[SS] = real_mode_segment(ss)
        for r in (DS, ES, FS, GS):
            state.seg[r] = real_mode_segment(0)
        state.idt = DescriptorTable(IVT_ADDR, IVT_LIMIT)
        state.cr0 = RESET_CR0
    else:
        top = DEFAULT_STACK if stack is None else stack
        state.gdt = DescriptorTable(GDT_ADDR, GDT_LIMIT)
        state.idt = DescriptorTable(0, 0)
        data = gdt_segment(SEL_DATA32)
        for r in (DS, ES, FS, GS, SS):
            state.seg[r] = data.copy()
        if mode == "protected":
            if not 0 <= entry <= 0xFFFFFFFF:
                raise BadInputError(f"protected-mode entry {entry:#x} is not below 4 GiB")
            if not 0 <= top <= 0x100000000:
                raise BadInputError(f"protected-mode stack top {top:#x} is not below 4 GiB")
            state.seg[CS] = gdt_segment(SEL_CODE32)
            state.cr0 = PROTECTED_CR0
            state.gpr[RSP] = top & 0xFFFFFFFF
        else:
            if not 0 <= entry < (1 << 47) and not (0xFFFF800000000000 <= entry < (1 << 64)):
                raise BadInputError(f"long-mode entry {entry:#x} is not a canonical address")
            state.seg[CS] = gdt_segment(SEL_CODE64)
            state.cr0 = LONG_CR0
            state.cr4 = LONG_CR4
            state.cr3 = PML4_ADDR
            state.efer = LONG_EFER
            state.gpr[RSP] = top & 0xFFFFFFFFFFFFFFFF
        state.rip = entry
    for name, value in (registers or {}).items():
        state.gpr[_gpr_index(name)] = value & 0xFFFFFFFFFFFFFFFF
    return state


def pvh_state(entry: int, start_info: int, stack: int | None = None) -> CpuState:
    """The PVH entry state (Xen's x86/HVM direct boot ABI): ``initial_state("protected", ...)``
    with EBX = ``start_info``, CR0 = PE (and ET, read-only), NE clear, and TR a 32-bit busy TSS
    with base 0 and limit 0x67."""
    state = initial_state("protected", entry, stack, {"rbx": start_info})
    state.cr0 = CR0_PE | CR0_ET
    state.seg[TR] = Segment(selector=0, base=0, limit=0x67, type=D.SYS_TSS32_BUSY, s=0, present=1)
    return state


def reset_state(signature: int) -> CpuState:
    """The architectural state after RESET (SDM vol. 3, 10.1.1, table 10-1), where firmware starts.

    Real mode with CS.selector 0xf000 but CS.base 0xffff0000 (limit 0xffff), IP 0xfff0: the
    first instruction is fetched at 0xfffffff0, the top of the firmware ROM, until the first
    far jump loads CS with a base of selector << 4. EDX holds the processor signature
    (``signature``: CPUID leaf 1 EAX, family/model/stepping), CR0 = 0x60000010 (CD, NW, ET),
    the other data segments selector 0 with base 0 and limit 0xffff, GDTR and IDTR base 0
    limit 0xffff, EFLAGS 0x2, every other register 0. This is also what KVM reports for a
    fresh vCPU, except for EDX, which KVM takes from the CPUID table at reset time (before
    the VMM sets one).
    """
    state = CpuState()
    state.gpr[RDX] = signature & 0xFFFFFFFF
    return state


__all__ = [
    "reset_state", "pvh_state",
    "gdt_entries", "build_gdt", "segment_from_descriptor",
    "gdt_segment", "real_mode_segment", "identity_page_tables", "boot_memory", "prepare_memory",
    "initial_state", "reserved_end", "default_load_addr", "MODES",
]
