"""Turning one decoded instruction into one specialised Python closure.

A handler describes an instruction as a few lines of Python source with the instance's
constants (register numbers, displacements, immediates, branch targets) replaced by
parameter names ``k0, k1, ...``. The source text is a *template*: it is compiled once
into a factory, cached by its text, and every later instruction of the same shape (say,
``add r32, [base+disp]``) reuses the factory with its own constants. So translation costs
one factory call per instruction, not a ``compile()``, and execution runs straight-line
code with no operand-kind dispatch.

Inside a template these names are bound: ``E`` (the emulator), ``R`` (the GPR list),
``M`` (the MMU), ``rd1/rd2/rd4/wr1/wr2/wr4/rdn/wrn`` (segment-relative memory access,
first argument the segment number), ``COND`` (condition evaluators), ``arith``/``carry``
(lazy-flag materialisation), ``Fault`` and the ``alu`` helpers. A template for a
block-ending ("terminal") instruction returns the next EIP; others return nothing.
"""

from __future__ import annotations

import contextlib

import iced_x86 as X

from pykvm.emulator import alu, flags
from pykvm.emulator.faults import CpuFault

OK = X.OpKind
_REG = X.Register

# iced register -> (gpr index, size in bytes, high-byte register)
REG_INFO: dict[int, tuple[int, int, bool]] = {}
for _i, _n in enumerate(("AL", "CL", "DL", "BL")):
    REG_INFO[getattr(_REG, _n)] = (_i, 1, False)
for _i, _n in enumerate(("AH", "CH", "DH", "BH")):
    REG_INFO[getattr(_REG, _n)] = (_i, 1, True)
for _i, _n in enumerate(("AX", "CX", "DX", "BX", "SP", "BP", "SI", "DI")):
    REG_INFO[getattr(_REG, _n)] = (_i, 2, False)
for _i, _n in enumerate(("EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI")):
    REG_INFO[getattr(_REG, _n)] = (_i, 4, False)

SEG_INDEX = {_REG.ES: 0, _REG.CS: 1, _REG.SS: 2, _REG.DS: 3, _REG.FS: 4, _REG.GS: 5}

MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}
SIGNS = {1: 0x80, 2: 0x8000, 4: 0x80000000, 8: 0x8000000000000000}
MEM_SIZE_BYTES: dict[int, int] = {}

IMM_KINDS = {OK.IMMEDIATE8: 1, OK.IMMEDIATE8_2ND: 1, OK.IMMEDIATE16: 2, OK.IMMEDIATE32: 4,
             OK.IMMEDIATE8TO16: 2, OK.IMMEDIATE8TO32: 4}
STRING_SRC_KINDS = {OK.MEMORY_SEG_SI: 2, OK.MEMORY_SEG_ESI: 4}
STRING_DST_KINDS = {OK.MEMORY_ESDI: 2, OK.MEMORY_ESEDI: 4}

CODE_NAMES = {getattr(X.Code, n): n for n in dir(X.Code) if not n.startswith("_")}
MNEMONIC_NAMES = {getattr(X.Mnemonic, n): n for n in dir(X.Mnemonic) if not n.startswith("_")}


def mem_size(ins) -> int:
    ms = ins.memory_size
    size = MEM_SIZE_BYTES.get(ms)
    if size is None:
        size = MEM_SIZE_BYTES[ms] = X.MemorySizeExt.size(ms)
    return size


class Unsupported(Exception):
    """Valid instruction the emulator does not implement (becomes an EmulationError when run)."""


class Invalid(Exception):
    """Encoding that raises #UD on a real CPU in this mode."""


def handler_table() -> tuple[dict, "callable"]:
    """A family module's part of the opcode table and its ``@handles(*mnemonics)`` decorator."""
    table: dict = {}

    def handles(*mnemonics):
        def register(fn):
            for m in mnemonics:
                table[m] = fn
            return fn
        return register

    return table, handles


class TranslateContext:
    """What a handler may bake into its code: the mode the block is translated for."""

    __slots__ = ("bitness", "stack32", "real", "emu", "cs_limit")

    def __init__(self, emu, bitness: int, stack32: bool, real: bool, cs_limit: int = 0xFFFFFFFF):
        self.emu = emu
        self.bitness = bitness
        self.stack32 = stack32
        self.real = real
        # Blocks are cached per CS limit too, so near branches can bake in their limit check.
        self.cs_limit = cs_limit


_GLOBALS = {
    "COND": flags.COND, "arith": flags.arith, "carry": flags.carry, "Fault": CpuFault,
    "PARITY": flags.PARITY, "SIGNK": flags.SIGNK, "alu": alu,
}
for _name in dir(alu):
    if not _name.startswith("_"):
        _GLOBALS[_name] = getattr(alu, _name)

_PRELUDE = (
    "def _factory(E, P):\n"
    "    R = E.R\n"
    "    M = E.mmu\n"
    "    rd1 = M.rd1; rd2 = M.rd2; rd4 = M.rd4; rdn = M.rdn\n"
    "    wr1 = M.wr1; wr2 = M.wr2; wr4 = M.wr4; wrn = M.wrn\n"
    "    ST = E.state\n"
)

_TEMPLATES: dict[tuple[str, int], object] = {}


def compile_template(body: str, nparams: int):
    key = (body, nparams)
    factory = _TEMPLATES.get(key)
    if factory is None:
        if nparams:
            unpack = "    " + ", ".join(f"k{i}" for i in range(nparams)) + (",", "")[nparams > 1] + " = P\n"
        else:
            unpack = ""
        indented = "".join("        " + line + "\n" for line in body.split("\n"))
        src = _PRELUDE + unpack + "    def f():\n" + indented + "    return f\n"
        ns: dict = {}
        exec(compile(src, "<x86-template>", "exec"), dict(_GLOBALS), ns)
        factory = _TEMPLATES[key] = ns["_factory"]
    return factory


def template_count() -> int:
    return len(_TEMPLATES)


class Operand:
    """One operand of the instruction being translated, as source-code expressions."""

    __slots__ = ("g", "kind", "size", "reg", "high", "seg", "ea", "value", "ea_var", "iced_reg")

    def __init__(self, g: "Gen", i: int, size: int | None = None):
        ins = g.ins
        kind = ins.op_kind(i)
        self.g = g
        self.ea_var = None
        self.high = False
        if kind == OK.REGISTER:
            reg = ins.op_register(i)
            self.iced_reg = reg
            info = REG_INFO.get(reg)
            if info is None:
                self.kind = "sreg" if reg in SEG_INDEX else "other"
                self.reg = SEG_INDEX.get(reg, reg)
                self.size = 2 if reg in SEG_INDEX else 0
            else:
                self.kind = "reg"
                self.reg, self.size, self.high = info
        elif kind == OK.MEMORY:
            self.kind = "mem"
            self.size = size or mem_size(ins)
            self.seg = SEG_INDEX[ins.memory_segment]
        elif kind in IMM_KINDS:
            self.kind = "imm"
            self.size = size or IMM_KINDS[kind]
            self.value = ins.immediate(i) & MASKS[self.size]
        else:
            self.kind = "other"
            self.size = 0
        if size is not None:
            self.size = size

    # -- addressing --------------------------------------------------------------------------
    def addr(self) -> str:
        """Emit the effective-address computation once; return the variable holding the offset."""
        if self.ea_var is None:
            self.ea_var = self.g.tmp("o")
            self.g.emit(f"{self.ea_var} = {self.g.ea_expr()}")
        return self.ea_var

    def segk(self) -> str:
        return self.g.k(self.seg)

    # -- access ------------------------------------------------------------------------------
    def read(self) -> str:
        """Source expression for the operand's value (may emit a memory read into a temp)."""
        g = self.g
        if self.kind == "reg":
            r = g.k(self.reg)
            if self.size == 4:
                return f"R[{r}]"
            if self.high:
                return f"(R[{r}] >> 8 & 0xFF)"
            return f"(R[{r}] & {MASKS[self.size]:#x})"
        if self.kind == "imm":
            return g.k(self.value)
        if self.kind == "mem":
            o = self.addr()
            v = g.tmp("v")
            g.emit(f"{v} = {_rd(self.size)}({self.segk()}, {o})")
            return v
        if self.kind == "sreg":
            return f"ST.seg[{g.k(self.reg)}].selector"
        raise Unsupported("operand kind")

    def write(self, expr: str) -> None:
        """Emit a store of ``expr`` (already truncated to the operand size)."""
        g = self.g
        if self.kind == "reg":
            r = g.k(self.reg)
            if self.size == 4:
                g.emit(f"R[{r}] = {expr}")
            elif self.high:
                g.emit(f"R[{r}] = R[{r}] & 0xFFFF00FF | ({expr}) << 8")
            else:
                g.emit(f"R[{r}] = R[{r}] & {~MASKS[self.size] & 0xFFFFFFFF:#x} | {expr}")
        elif self.kind == "mem":
            o = self.addr()
            g.emit(f"{_wr(self.size)}({self.segk()}, {o}, {expr})")
        else:
            raise Unsupported("write to operand kind " + self.kind)


def _rd(size: int) -> str:
    return {1: "rd1", 2: "rd2", 4: "rd4"}[size]


def _wr(size: int) -> str:
    return {1: "wr1", 2: "wr2", 4: "wr4"}[size]


class Gen:
    """Source builder for one instruction."""

    __slots__ = ("ctx", "ins", "lines", "params", "ntmp", "terminal", "eip", "next_eip", "indent",
                 "factory", "args", "body")

    def __init__(self, ctx: TranslateContext, ins, eip: int):
        self.ctx = ctx
        self.ins = ins
        self.lines: list[str] = []
        self.params: list = []
        self.ntmp = 0
        self.terminal = False
        self.eip = eip
        self.next_eip = ins.next_ip32   # fall-through: never truncated to 16 bits (see translate)
        self.indent = ""

    def k(self, value) -> str:
        self.params.append(value)
        return f"k{len(self.params) - 1}"

    def tmp(self, prefix: str = "t") -> str:
        self.ntmp += 1
        return f"{prefix}{self.ntmp}"

    def emit(self, *lines: str) -> None:
        for line in lines:
            self.lines.append(self.indent + line)

    @contextlib.contextmanager
    def block(self, header: str):
        """``with g.block("if c:"): ...``: emit ``header`` and indent what is emitted inside."""
        self.emit(header)
        outer = self.indent
        self.indent = outer + "    "
        try:
            yield
        finally:
            self.indent = outer

    def op(self, i: int, size: int | None = None) -> Operand:
        return Operand(self, i, size)

    def ea_expr(self) -> str:
        """Offset (address-size truncated) of the instruction's memory operand, as an expression."""
        ins = self.ins
        parts = []
        amask = None
        base = ins.memory_base
        index = ins.memory_index
        if base != _REG.NONE:
            idx, size, _ = REG_INFO[base]
            amask = MASKS[size]
            parts.append(f"R[{self.k(idx)}]")
        if index != _REG.NONE:
            idx, size, _ = REG_INFO[index]
            amask = MASKS[size]
            scale = ins.memory_index_scale
            shift = {1: "", 2: " << 1", 4: " << 2", 8: " << 3"}[scale]
            parts.append(f"(R[{self.k(idx)}]{shift})" if shift else f"R[{self.k(idx)}]")
        if amask is None:
            # Displacement only: the decoder already truncated it to the address size.
            return self.k(ins.memory_displacement & 0xFFFFFFFF)
        disp = ins.memory_displacement & amask
        if disp:
            parts.append(self.k(disp))
        if len(parts) == 1 and amask == 0xFFFFFFFF:
            return parts[0]
        return f"({' + '.join(parts)}) & {amask:#x}"

    def build(self, emu):
        self.body = body = "\n".join(self.lines) if self.lines else "pass"
        self.factory = factory = compile_template(body, len(self.params))
        self.args = args = tuple(self.params)
        return factory(emu, args)
