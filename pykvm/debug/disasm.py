"""Disassembly of guest code with iced-x86, in whatever mode the vCPU is in."""

from __future__ import annotations

from dataclasses import dataclass

import iced_x86

from pykvm.x86.state import CS, CpuState
from pykvm.x86 import paging
from pykvm.x86.bits import CR0_PE, EFER_LMA

MAX_INSTRUCTION = 15
SYNTAXES = {"intel": iced_x86.FormatterSyntax.INTEL, "att": iced_x86.FormatterSyntax.GAS}
_FORMATTERS: dict[str, iced_x86.Formatter] = {}


def formatter(syntax: str = "intel") -> iced_x86.Formatter:
    """iced-x86's formatter for ``intel`` or ``att`` (GNU as) syntax, with 0x-prefixed lower-case hex."""
    f = _FORMATTERS.get(syntax)
    if f is None:
        f = _FORMATTERS[syntax] = iced_x86.Formatter(SYNTAXES[syntax])
        f.hex_prefix = "0x"
        f.hex_suffix = ""
        f.uppercase_hex = False
    return f


@dataclass(frozen=True)
class Disassembled:
    address: int     # the instruction pointer as the guest sees it (IP/EIP/RIP)
    code: bytes
    text: str


def bitness(state: CpuState) -> int:
    """16, 32 or 64: the default operand size of the code CS selects."""
    cs = state.seg[CS]
    if state.efer & EFER_LMA and cs.l:
        return 64
    if state.cr0 & CR0_PE and cs.db:
        return 32
    return 16


class _NoWrites:
    """Memory for page walks that must not set accessed/dirty bits (a debugger only looks)."""

    def __init__(self, memory):
        self._memory = memory

    def read_u32(self, gpa):
        return self._memory.read_u32(gpa)

    def read_u64(self, gpa):
        return self._memory.read_u64(gpa)

    def write_u32(self, gpa, value):
        pass

    def write_u64(self, gpa, value):
        pass


def linear_mask(state: CpuState) -> int:
    """Linear addresses are 64-bit in long mode, 32-bit otherwise."""
    return 0xFFFFFFFFFFFFFFFF if state.efer & EFER_LMA else 0xFFFFFFFF


def pc_linear(state: CpuState) -> int:
    """The linear address of the next instruction: CS.base + RIP."""
    return (state.seg[CS].base + state.rip) & linear_mask(state)


def page_walk(memory, state: CpuState):
    """``translate(linear) -> physical | None`` through the guest's paging as ``state`` sets it,
    without setting accessed/dirty bits."""
    view = _NoWrites(memory)

    def translate(linear: int) -> int | None:
        try:
            return paging.walk(view, state.cr0, state.cr3, state.cr4, state.efer, linear).phys
        except paging.PageFault:
            return None
    return translate


def read_linear(memory, state: CpuState, linear: int, length: int, translate=None) -> bytes:
    """Up to ``length`` bytes of guest RAM at ``linear``, page by page through ``translate``
    (default: ``page_walk``); stops at the first byte that is unmapped or not RAM."""
    translate = translate or page_walk(memory, state)
    mask = linear_mask(state)
    out = bytearray()
    if linear > mask:
        return b""                        # beyond the mode's linear address space
    while len(out) < length:
        phys = translate((linear + len(out)) & mask)
        if phys is None:
            break
        take = min(length - len(out), 0x1000 - (phys & 0xFFF))
        if not memory.contains(phys, take):
            break
        out += memory.read(phys, take)
    return bytes(out)


def read_code(memory, state: CpuState, length: int = MAX_INSTRUCTION) -> bytes:
    """Up to ``length`` bytes at CS:RIP (linear → physical through the guest's page tables)."""
    return read_linear(memory, state, pc_linear(state), length)


def disassemble(code: bytes, address: int, bits: int, count: int = 1, syntax: str = "intel") -> list[Disassembled]:
    """Decode up to ``count`` instructions of ``code`` placed at ``address``."""
    decoder = iced_x86.Decoder(bits, code, ip=address)
    fmt = formatter(syntax)
    result = []
    for instr in decoder:
        if len(result) == count:
            break
        offset = instr.ip - address
        text = "(bad)" if instr.is_invalid else fmt.format(instr)
        result.append(Disassembled(instr.ip, code[offset:offset + instr.len], text))
    return result


def disassemble_at(memory, state: CpuState, count: int = 1, syntax: str = "intel") -> list[Disassembled]:
    """The next ``count`` instructions at the vCPU's CS:RIP."""
    return disassemble(read_code(memory, state, MAX_INSTRUCTION * count), state.rip, bitness(state), count, syntax)
