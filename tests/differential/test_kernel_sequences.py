"""Random instruction *sequences* vs the host kernel's emulator: hypothesis strings together
ALU, shift, multiply, bit, exchange, condition and flag instructions on random registers,
memory and immediates, in real mode and 32-bit protected mode.

Interactions are what this adds over the one-instruction tests: lazily computed flags
consumed by a later ADC, SETcc, CMOVcc, LAHF or PUSHF, flags carried across instructions
that do not write them, partial-register writes, and memory read back after a write.

The generator tracks which flags the SDM leaves undefined at each point so that an
instruction that would *read* an undefined flag is never chosen (its result would be
undefined too: the harness's tracker, ``undefined.py``, would fail the case); what is still
undefined at the end, in RFLAGS or in a pushed image, the harness masks. Division (faults)
and BSF/BSR (undefined destination) are left to their own tests.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.differential import flags as F
from tests.differential.harness import DATA, Snippet, assert_same, examples, run_kernel, run_userspace

pytestmark = pytest.mark.kvm

REGS = {8: ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh"),
        16: ("ax", "cx", "dx", "bx", "bp", "si", "di"),
        32: ("eax", "ecx", "edx", "ebx", "ebp", "esi", "edi")}
PTR = {8: "byte", 16: "word", 32: "dword"}
CONDITIONS = {"o": F.OF, "no": F.OF, "b": F.CF, "ae": F.CF, "e": F.ZF, "ne": F.ZF, "be": F.CF | F.ZF,
              "a": F.CF | F.ZF, "s": F.SF, "ns": F.SF, "p": F.PF, "np": F.PF, "l": F.SF | F.OF,
              "ge": F.SF | F.OF, "le": F.ZF | F.SF | F.OF, "g": F.ZF | F.SF | F.OF}
ALL = F.ARITH


class Instruction:
    """One generated instruction: its text and what it does to flag definedness."""

    __slots__ = ("text", "reads", "defines", "undefines")

    def __init__(self, text: str, reads: int = 0, defines: int = 0, undefines: int = 0):
        self.text, self.reads, self.defines, self.undefines = text, reads, defines, undefines


def _operand(draw, width: int, allow_memory: bool = True) -> str:
    if allow_memory and draw(st.integers(0, 3)) == 0:
        return f"{PTR[width]} ptr [{DATA + draw(st.integers(0, 15)) * 4:#x}]"
    return draw(st.sampled_from(REGS[width]))


def instruction(draw) -> Instruction:
    kind = draw(st.sampled_from(["alu", "alu", "unary", "shift", "double_shift", "multiply", "bit",
                                 "exchange", "setcc", "cmov", "move", "flags", "convert"]))
    width = draw(st.sampled_from([8, 16, 32]))
    reg = lambda w=width: draw(st.sampled_from(REGS[w]))  # noqa: E731
    if kind == "alu":
        op = draw(st.sampled_from(["add", "adc", "sub", "sbb", "cmp", "and", "or", "xor", "test"]))
        dst = _operand(draw, width)
        src = reg() if dst.endswith("]") or draw(st.booleans()) else _operand(draw, width)
        if draw(st.integers(0, 3)) == 0:
            src = str(draw(st.integers(-128, 127)))
        logic = op in ("and", "or", "xor", "test")
        return Instruction(f"{op} {dst}, {src}", reads=F.CF if op in ("adc", "sbb") else 0,
                           defines=ALL & ~F.AF if logic else ALL, undefines=F.AF if logic else 0)
    if kind == "unary":
        op = draw(st.sampled_from(["inc", "dec", "neg", "not"]))
        defines = {"inc": ALL & ~F.CF, "dec": ALL & ~F.CF, "neg": ALL, "not": 0}[op]
        return Instruction(f"{op} {_operand(draw, width)}", defines=defines)
    if kind == "shift":
        op = draw(st.sampled_from(["shl", "shr", "sar", "rol", "ror", "rcl", "rcr"]))
        count = draw(st.integers(0, 33))
        undefined = F.shift(op, count, width)
        rotate = op in ("rol", "ror", "rcl", "rcr")
        written = (F.CF | F.OF if rotate else ALL) if count & 0x1F else 0
        return Instruction(f"{op} {_operand(draw, width)}, {count}", reads=F.CF if op in ("rcl", "rcr") else 0,
                           defines=written & ~undefined, undefines=undefined)
    if kind == "double_shift":
        width = draw(st.sampled_from([16, 32]))
        count = draw(st.integers(0, 16 if width == 16 else 31))
        undefined = F.shift("shld", count, width)
        return Instruction(f"{draw(st.sampled_from(['shld', 'shrd']))} {_operand(draw, width)}, {reg(width)}, {count}",
                           defines=(ALL if count else 0) & ~undefined, undefines=undefined)
    if kind == "multiply":
        width = draw(st.sampled_from([16, 32]))
        form = draw(st.sampled_from(["imul {r}, {m}", "imul {r}, {m}, {i}", "mul {m}", "imul {m}"]))
        text = form.format(r=reg(width), m=_operand(draw, width), i=draw(st.integers(-300, 300)))
        return Instruction(text, defines=F.CF | F.OF, undefines=F.MUL)
    if kind == "bit":
        width = draw(st.sampled_from([16, 32]))
        op = draw(st.sampled_from(["bt", "bts", "btr", "btc"]))
        return Instruction(f"{op} {_operand(draw, width)}, {draw(st.integers(0, 31))}", defines=F.CF,
                           undefines=F.BT)
    if kind == "exchange":
        op = draw(st.sampled_from(["xchg", "xadd", "cmpxchg"]))
        text = f"{op} {_operand(draw, width)}, {reg()}"
        return Instruction(text, defines=0 if op == "xchg" else ALL)
    if kind == "setcc":
        cc = draw(st.sampled_from(sorted(CONDITIONS)))
        return Instruction(f"set{cc} {_operand(draw, 8)}", reads=CONDITIONS[cc])
    if kind == "cmov":
        cc = draw(st.sampled_from(sorted(CONDITIONS)))
        width = draw(st.sampled_from([16, 32]))
        return Instruction(f"cmov{cc} {reg(width)}, {_operand(draw, width)}", reads=CONDITIONS[cc])
    if kind == "move":
        form = draw(st.sampled_from(["mov {d}, {s}", "movzx {r32}, {s8}", "movsx {r32}, {s8}",
                                     "movzx {r32}, {s16}", "movsx {r16}, {s8}", "bswap {r32}",
                                     "lea {r32}, [{a} + {b}*4 + 0x1234]"]))
        dst = _operand(draw, width)
        src = reg() if dst.endswith("]") else _operand(draw, width)
        text = form.format(d=dst, s=src, r32=reg(32), r16=reg(16), s8=_operand(draw, 8),
                           s16=_operand(draw, 16), a=reg(32), b=reg(32))
        return Instruction(text)
    if kind == "flags":
        op = draw(st.sampled_from(["clc", "stc", "cmc", "lahf", "sahf", "pushf\npop {r16}"]))
        return {"clc": Instruction("clc", defines=F.CF), "stc": Instruction("stc", defines=F.CF),
                "cmc": Instruction("cmc", reads=F.CF, defines=F.CF),
                "lahf": Instruction("lahf", reads=F.SF | F.ZF | F.AF | F.PF | F.CF),
                "sahf": Instruction("sahf", defines=F.SF | F.ZF | F.AF | F.PF | F.CF),
                }.get(op) or Instruction(op.format(r16=reg(16)), reads=ALL)
    return Instruction(draw(st.sampled_from(["cbw", "cwde", "cwd", "cdq"])))


@st.composite
def sequences(draw, length=8):
    """Instruction texts that never read a flag the SDM leaves undefined at that point."""
    undefined = 0
    texts = []
    while len(texts) < length:
        ins = instruction(draw)
        if ins.reads & undefined:
            continue
        undefined = (undefined & ~ins.defines) | ins.undefines
        texts.append(ins.text)
    return texts


u32 = st.integers(0, 0xFFFFFFFF)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=sequences(), mode=st.sampled_from([16, 32]), regs=st.lists(u32, min_size=7, max_size=7),
       memory=st.binary(min_size=64, max_size=64), flags=st.integers(0, 0xFFF))
def test_random_sequences_match_the_kernel(program, mode, regs, memory, flags):
    names = ("rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi")
    snippet = Snippet("\n".join(program), bits=mode, regs=dict(zip(names, regs)), rflags=flags & F.ARITH,
                      memory=[(DATA, memory)])
    kernel = run_kernel(snippet)
    assert kernel.outcome == "halted", kernel.outcome
    assert_same(kernel, run_userspace(snippet))
