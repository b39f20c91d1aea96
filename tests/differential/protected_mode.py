"""A protected-mode setting for snippets that need more than the loader GDT: extra
descriptors (not present, small limit, read-only, DPL 3, accessed bit clear, 16-bit code)
and one IDT gate, whose handler is a bare ``hlt`` (the kernel delivers protected-mode
exceptions but cannot IRET from them, ../shared/PVM.md)."""

from __future__ import annotations

import struct

from pykvm.x86 import boot
from pykvm.x86 import descriptors as D
from tests.differential.harness import DATA, Snippet

IDT = 0x800
GDT = 0x600
INTERRUPT_GATE, TRAP_GATE = 0x8E00, 0x8F00


def gdt() -> list:
    """The loader GDT plus: 0x30 not-present data, 0x38 byte-granular data with limit 0xfff,
    0x40 read-only data, 0x48 DPL-3 data, 0x50 data with the accessed bit clear, 0x58 a
    16-bit code segment based at 0x10000 (the snippets' code), 0x60 a 16-bit data segment
    with limit 0xffff (a 16-bit stack), 0x68 a not-present 32-bit code segment."""
    entries = boot.gdt_entries() + [
        D.encode_descriptor(0, 0xFFFFF, 0x3, present=0, db=1, g=1),
        D.encode_descriptor(DATA, 0xFFF, 0x3, db=1),
        D.encode_descriptor(0, 0xFFFFF, 0x1, db=1, g=1),
        D.encode_descriptor(0, 0xFFFFF, 0x3, dpl=3, db=1, g=1),
        D.encode_descriptor(0, 0xFFFFF, 0x2, db=1, g=1),
        D.encode_descriptor(0x10000, 0xFFFF, 0xB),
        D.encode_descriptor(0, 0xFFFF, 0x3),
        D.encode_descriptor(0, 0xFFFFF, 0xB, present=0, db=1, g=1),
    ]
    return [(GDT, struct.pack(f"<{len(entries)}Q", *entries))]


GDT_LIMIT = (len(boot.gdt_entries()) + 8) * 8 - 1


def protected(body: str, vector, gate: int = INTERRUPT_GATE, **kw) -> Snippet:
    """``body`` in protected mode with the bigger GDT and IDT gates for ``vector`` (one
    vector or several), all leading to a handler that records ESP in EBP and halts."""
    vectors = [vector] if isinstance(vector, int) else list(vector)
    gates = "\n".join(f"""
        mov word ptr [{IDT + v * 8:#x}], ax
        mov word ptr [{IDT + v * 8 + 2:#x}], 0x08
        mov word ptr [{IDT + v * 8 + 4:#x}], {gate:#x}
        mov word ptr [{IDT + v * 8 + 6:#x}], dx""" for v in vectors)
    source = f"""
        lgdt [gdtr]
        mov eax, offset handler
        mov edx, eax
        shr edx, 16
        {gates}
        lidt [idtr]
        jmp start
    gdtr: .word {GDT_LIMIT}
        .long {GDT}
    idtr: .word 0x7ff
        .long {IDT}
    start:
        {body}
        mov edi, 0xbad          # not reached when the body faults
        hlt
    handler:
        mov ebp, esp
    """
    return Snippet(source, bits=32, memory=gdt() + kw.pop("memory", []), **kw)
