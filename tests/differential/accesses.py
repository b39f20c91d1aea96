"""Where one decoded instruction's operands live, from its iced decoding and the CPU state
before it runs: register values, and the linear byte ranges it reads and writes in memory.

Used by the undefined-flag tracker (``undefined.py``: which tagged bytes an instruction
reads or overwrites) and by the sweep (``sweep.py``: where to seed data for a memory
operand). Three kinds of memory access, from iced's ``InstructionInfoFactory``:

* explicit operands (``[bx+si+4]``, ``moffs``, XLAT's ``[bx+al]``): base + index*scale +
  displacement, wrapped to the address size, plus the segment base;
* string operands: one element, or with a REP prefix the whole ``count * size`` range
  (CMPS/SCAS may stop earlier: the range is an upper bound);
* implicit stack accesses (PUSH/POP/CALL/RET/IRET/ENTER/LEAVE/PUSHA/POPA/PUSHF/POPF):
  iced sizes SP/ESP (and BP/EBP for ENTER/LEAVE) by the *code* size, but the CPU uses the
  stack-address size, SS.B (SDM vol. 1, 6.2.3): these are recomputed with SS.B.
"""

from __future__ import annotations

from dataclasses import dataclass

import iced_x86 as X

from pykvm.x86.state import CpuState
from pykvm.x86.bits import FLAG_DF

_R = X.Register
_FACTORY = X.InstructionInfoFactory()

# iced register -> (GPR index, mask of the bits it names, shift of its low bit)
GPR_BITS: dict[int, tuple[int, int, int]] = {}
for _i, _n in enumerate(("AL", "CL", "DL", "BL")):
    GPR_BITS[getattr(_R, _n)] = (_i, 0xFF, 0)
for _i, _n in enumerate(("AH", "CH", "DH", "BH")):
    GPR_BITS[getattr(_R, _n)] = (_i, 0xFF00, 8)
for _i, _n in enumerate(("AX", "CX", "DX", "BX", "SP", "BP", "SI", "DI")):
    GPR_BITS[getattr(_R, _n)] = (_i, 0xFFFF, 0)
for _i, _n in enumerate(("EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI")):
    GPR_BITS[getattr(_R, _n)] = (_i, 0xFFFFFFFF, 0)
_SEGMENT_REGS = {_R.ES: 0, _R.CS: 1, _R.SS: 2, _R.DS: 3, _R.FS: 4, _R.GS: 5}
_STACK_BASES = {_R.SP: 4, _R.ESP: 4, _R.RSP: 4, _R.BP: 5, _R.EBP: 5, _R.RBP: 5}

_BIT_TESTS = {X.Mnemonic.BT, X.Mnemonic.BTS, X.Mnemonic.BTR, X.Mnemonic.BTC}
READ, WRITE, READ_WRITE = "r", "w", "rw"
_ACCESS = {X.OpAccess.READ: READ, X.OpAccess.COND_READ: READ, X.OpAccess.WRITE: WRITE,
           X.OpAccess.COND_WRITE: "w?", X.OpAccess.READ_WRITE: READ_WRITE,
           X.OpAccess.READ_COND_WRITE: READ_WRITE}


def register_value(state: CpuState, reg: int) -> int:
    """The value of an 8/16/32-bit GPR, or the base of a segment register (iced's convention)."""
    if reg in _SEGMENT_REGS:
        return state.seg[_SEGMENT_REGS[reg]].base
    index, mask, shift = GPR_BITS[reg]
    return (state.gpr[index] & mask) >> shift


def memory_bytes(ms: int) -> int:
    return X.MemorySizeExt.size(ms)


@dataclass(frozen=True)
class Access:
    """``size`` bytes at linear ``linear`` through segment register ``segment`` (ES..GS) at
    ``offset`` (the lowest of a REP range); ``access`` is READ, WRITE, READ_WRITE or "w?" (a
    conditional write)."""

    segment: int
    offset: int
    linear: int
    size: int
    access: str
    implicit_stack: bool = False
    first: int = 0          # the offset of the first element (a REP range may run downwards)
    address_bits: int = 32  # offsets wrap at 2**address_bits (16: SI/DI/BP/SP wrap at 64 KiB)


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _is_explicit(ins, m) -> bool:
    """Whether the used-memory entry ``m`` is the instruction's ModRM/moffs operand."""
    return (any(ins.op_kind(i) == X.OpKind.MEMORY for i in range(ins.op_count))
            and m.base == ins.memory_base and m.index == ins.memory_index
            and m.displacement == ins.memory_displacement)


def memory_accesses(ins, state: CpuState, stack32: bool) -> list[Access]:
    """Every memory access of ``ins`` (decoded for the current code size) before it runs."""
    out = []
    info = _FACTORY.info(ins)
    for m in info.used_memory():
        segment = _SEGMENT_REGS.get(m.segment)
        if segment is None:
            continue    # no memory behind it (LEA, NOP r/m, prefetch hints: iced reports none)
        size = memory_bytes(m.memory_size) or memory_bytes(ins.memory_size)
        access = _ACCESS.get(m.access)
        if access is None or not size:
            continue
        implicit = (m.segment == _R.SS and m.base in _STACK_BASES and m.index == _R.NONE
                    and not _is_explicit(ins, m))
        if implicit:
            bits = 32 if stack32 else 16
            offset = (state.gpr[_STACK_BASES[m.base]] + _signed(m.displacement, 16 if m.address_size ==
                                                                 X.CodeSize.CODE16 else 32)) % (1 << bits)
        else:
            bits = 16 if m.address_size == X.CodeSize.CODE16 else 32
            offset = m.displacement
            if m.base != _R.NONE:
                offset += register_value(state, m.base)
            if m.index != _R.NONE:
                offset += register_value(state, m.index) * m.scale
            offset %= 1 << bits
        if not implicit and ins.mnemonic in _BIT_TESTS and ins.op1_kind == X.OpKind.REGISTER:
            # BT/BTS/BTR/BTC m, r: the bit offset is signed and selects the operand-sized
            # word at EA + size * (offset SAR log2(8 * size)) (SDM BT, "bit base").
            width = 8 * size
            bit = _signed(register_value(state, ins.op1_register), width)
            offset = (offset + size * (bit >> (width.bit_length() - 1))) % (1 << bits)
        count = 1
        if ins.is_string_instruction and (ins.has_rep_prefix or ins.has_repe_prefix or ins.has_repne_prefix):
            count = state.gpr[1] & (0xFFFF if bits == 16 else 0xFFFFFFFF)
            if not count:
                continue
        first = offset
        if state.rflags & FLAG_DF and count > 1:
            offset = (offset - (count - 1) * size) % (1 << bits)     # the range runs downwards
        linear = (state.seg[segment].base + offset) & 0xFFFFFFFF
        out.append(Access(segment, offset, linear, size * count, access, implicit, first, bits))
    return out


def used_registers(ins) -> list[tuple[int, int, str]]:
    """(GPR index, bit mask, access) for every general-purpose register ``ins`` uses."""
    out = []
    for r in _FACTORY.info(ins).used_registers():
        bits = GPR_BITS.get(r.register)
        access = _ACCESS.get(r.access)
        if bits is not None and access is not None:
            out.append((bits[0], bits[1], access))
    return out
