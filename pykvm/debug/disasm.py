"""Disassembly of guest code with iced-x86, in whatever mode the vCPU is in."""

from __future__ import annotations

from dataclasses import dataclass

import iced_x86

from pykvm.x86.state import CS, CpuState
from pykvm.x86 import paging
from pykvm.x86.bits import CR0_PE, EFER_LMA

MAX_INSTRUCTION = 15
_FORMATTER = iced_x86.Formatter(iced_x86.FormatterSyntax.INTEL)
_FORMATTER.hex_prefix = "0x"
_FORMATTER.hex_suffix = ""
_FORMATTER.uppercase_hex = False


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


def read_code(memory, state: CpuState, length: int = MAX_INSTRUCTION) -> bytes:
    """Up to ``length`` bytes at CS:RIP (linear → physical through the guest's page tables)."""
    out = bytearray()
    linear = (state.seg[CS].base + state.rip) & (0xFFFFFFFFFFFFFFFF if bitness(state) == 64 else 0xFFFFFFFF)
    view = _NoWrites(memory)
    while len(out) < length:
        try:
            phys = paging.walk(view, state.cr0, state.cr3, state.cr4, state.efer, linear + len(out)).phys
        except paging.PageFault:
            break
        take = min(length - len(out), 0x1000 - (phys & 0xFFF))
        if not memory.contains(phys, take):
            break
        out += memory.read(phys, take)
    return bytes(out)


def disassemble(code: bytes, address: int, bits: int, count: int = 1) -> list[Disassembled]:
    """Decode up to ``count`` instructions of ``code`` placed at ``address``."""
    decoder = iced_x86.Decoder(bits, code, ip=address)
    result = []
    for instr in decoder:
        if len(result) == count:
            break
        offset = instr.ip - address
        text = "(bad)" if instr.is_invalid else _FORMATTER.format(instr)
        result.append(Disassembled(instr.ip, code[offset:offset + instr.len], text))
    return result


def disassemble_at(memory, state: CpuState, count: int = 1) -> list[Disassembled]:
    """The next ``count`` instructions at the vCPU's CS:RIP."""
    return disassemble(read_code(memory, state, MAX_INSTRUCTION * count), state.rip, bitness(state), count)
