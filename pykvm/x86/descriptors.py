"""Segment descriptors and gate descriptors: pure encode/decode (Intel SDM vol. 3, 3.4.5 and 6.11).

Both the emulator (segment loads, IDT delivery) and the loaders/tests (building a GDT for a
guest) need the same bit layout, so it lives here once, with no emulator or KVM state.
A descriptor is handled as one 64-bit little-endian integer (``lo | hi << 32``).
"""

from __future__ import annotations

from dataclasses import dataclass

# Descriptor type field (bits 8..11 of the high dword) for code/data segments (S=1).
TYPE_ACCESSED = 0x1
TYPE_DATA_WRITABLE = 0x2
TYPE_DATA_EXPAND_DOWN = 0x4
TYPE_CODE_READABLE = 0x2
TYPE_CODE_CONFORMING = 0x4
TYPE_CODE = 0x8

# System descriptor types (S=0), legacy (32-bit) mode values.
SYS_TSS16_AVAIL = 0x1
SYS_LDT = 0x2
SYS_TSS16_BUSY = 0x3
SYS_CALL_GATE16 = 0x4
SYS_TASK_GATE = 0x5
SYS_INT_GATE16 = 0x6
SYS_TRAP_GATE16 = 0x7
SYS_TSS32_AVAIL = 0x9
SYS_TSS32_BUSY = 0xB
SYS_CALL_GATE32 = 0xC
SYS_INT_GATE32 = 0xE
SYS_TRAP_GATE32 = 0xF


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A decoded segment (or system) descriptor. ``limit`` is already scaled by G (byte granular)."""

    base: int
    limit: int
    type: int
    s: int
    dpl: int
    present: int
    avl: int
    l: int
    db: int
    g: int

    @property
    def is_code(self) -> bool:
        return bool(self.s and self.type & TYPE_CODE)

    @property
    def is_data(self) -> bool:
        return bool(self.s and not self.type & TYPE_CODE)


@dataclass(frozen=True, slots=True)
class Gate:
    """A decoded interrupt/trap/call/task gate."""

    selector: int
    offset: int
    type: int
    dpl: int
    present: int
    param_count: int = 0


def decode_descriptor(raw: int) -> Descriptor:
    """Split an 8-byte segment descriptor into its fields; the limit is scaled when G=1."""
    lo = raw & 0xFFFFFFFF
    hi = raw >> 32
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    limit = (lo & 0xFFFF) | (hi & 0x000F0000)
    g = (hi >> 23) & 1
    if g:
        limit = (limit << 12) | 0xFFF
    return Descriptor(base=base, limit=limit, type=(hi >> 8) & 0xF, s=(hi >> 12) & 1,
                      dpl=(hi >> 13) & 3, present=(hi >> 15) & 1, avl=(hi >> 20) & 1,
                      l=(hi >> 21) & 1, db=(hi >> 22) & 1, g=g)


def encode_descriptor(base: int, limit: int, type: int, s: int = 1, dpl: int = 0, present: int = 1,
                      avl: int = 0, l: int = 0, db: int = 0, g: int = 0) -> int:
    """Build an 8-byte descriptor. ``limit`` is the raw 20-bit field (in pages when ``g``)."""
    if limit > 0xFFFFF:
        raise ValueError(f"raw descriptor limit {limit:#x} exceeds 20 bits (pass it in pages with g=1)")
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = (((base >> 16) & 0xFF) | ((type & 0xF) << 8) | ((s & 1) << 12) | ((dpl & 3) << 13)
          | ((present & 1) << 15) | (limit & 0xF0000) | ((avl & 1) << 20) | ((l & 1) << 21)
          | ((db & 1) << 22) | ((g & 1) << 23) | (base & 0xFF000000))
    return lo | (hi << 32)


def flat_descriptor(code: bool, dpl: int = 0, db: int = 1, l: int = 0) -> int:
    """A 4 GiB flat code (execute/read) or data (read/write) descriptor, accessed bit clear."""
    return encode_descriptor(0, 0xFFFFF, 0xA if code else 0x2, s=1, dpl=dpl, db=0 if l else db, l=l, g=1)


def decode_gate(raw: int) -> Gate:
    """Decode a legacy (8-byte) interrupt, trap, call or task gate."""
    lo = raw & 0xFFFFFFFF
    hi = raw >> 32
    gtype = (hi >> 8) & 0xF
    offset = (lo & 0xFFFF) | (hi & 0xFFFF0000)
    if gtype in (SYS_INT_GATE16, SYS_TRAP_GATE16, SYS_CALL_GATE16):
        offset &= 0xFFFF
    return Gate(selector=lo >> 16, offset=offset, type=gtype, dpl=(hi >> 13) & 3,
                present=(hi >> 15) & 1, param_count=hi & 0x1F)


def decode_gate64(lo64: int, hi64: int) -> Gate:
    """Decode a long-mode 16-byte IDT gate given its two quadwords."""
    gate = decode_gate(lo64)
    offset = (lo64 & 0xFFFF) | ((lo64 >> 32) & 0xFFFF0000) | ((hi64 & 0xFFFFFFFF) << 32)
    return Gate(selector=gate.selector, offset=offset, type=gate.type, dpl=gate.dpl,
                present=gate.present, param_count=(lo64 >> 32) & 0x7)


def encode_gate(selector: int, offset: int, type: int = SYS_INT_GATE32, dpl: int = 0, present: int = 1) -> int:
    """Build an 8-byte interrupt/trap/call gate."""
    lo = (offset & 0xFFFF) | ((selector & 0xFFFF) << 16)
    hi = (offset & 0xFFFF0000) | ((type & 0xF) << 8) | ((dpl & 3) << 13) | ((present & 1) << 15)
    return lo | (hi << 32)


def selector_index(selector: int) -> int:
    return selector >> 3


def selector_ti(selector: int) -> int:
    """1 when the selector refers to the LDT."""
    return (selector >> 2) & 1


def selector_rpl(selector: int) -> int:
    return selector & 3
