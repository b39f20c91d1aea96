"""The sweep's inputs: opcode forms from iced-x86's tables, the machine setting of each mode,
and one random case (bytes, CPU state, seeded memory) of a form in a mode with a prefix.

Forms
  Every legacy-encoded iced ``Code`` valid in 16- or 32-bit code (no decoder option needed)
  is grouped by what selects it in the opcode map: table (one-byte, 0F, 0F 38, 0F 3A),
  mandatory prefix, opcode byte(s) and ModRM.reg group (fixed ModRM bytes such as 0F 01 D0
  or D8 C0+i are part of iced's opcode). Codes that differ only in operand or address size
  (``o16``/``o32``, ``a16``/``a32``) are one form: the 66/67 prefixes pick among them. A form
  with a ModRM r/m operand that may be a register or memory becomes two forms (``reg``,
  ``mem``); a memory-only form also gets a ``reg!`` probe (mod = 3, which the CPU refuses
  with #UD: LEA, LDS/LES, LGDT, ...; kept only where iced decodes no other instruction
  there, or a VEX prefix). A form is *claimed* when one of its mnemonics has a handler in
  ``pykvm/emulator/handlers.py::HANDLERS`` (x87/MMX/SSE namesakes excepted: iced calls SSE2
  MOVSD/CMPSD like the string instructions). Prefix variants: none, 66, 67, 66 67 (no 66
  where it is the form's mandatory prefix or would select another form, "NP"), times
  none/F3/F2 for the string instructions.

Modes (``MODES``)
  real mode; 16-bit protected-mode code on a 16- or 32-bit stack (SS.B); 32-bit code on a
  32- or 16-bit stack. CPL 0, paging off. Data segments come from a GDT with flat, 64 KiB,
  4 KiB, read-only, expand-down, not-present, DPL-3 and accessed-clear descriptors (and an
  LDT); 16-bit code runs in a 64 KiB or a 4 GiB code segment. Every mode has the same RAM
  layout:

  ============== ==================================================================
  0x0 - 0x3ff    IVT: vector v -> 0x1f00:v (real mode)
  0x10000        code segment (CS.base in every mode); the instruction, then HLT
  0x1f000 + v    the handler of vector v: a HLT (IVT, and IDT gates to CS:0xf000+v or
                 0x1f000+v), so a fault or INT n stops with its frame on the stack
  0x1fe000       GDT (``GDT``), then LDT, TSS; 0x1ff000 the IDT: interrupt gates to the
                 mode's code segment, 286 (16-bit) gates in a tenth of the cases
  elsewhere      HLT (0xf4), so any control transfer into RAM lands on a HLT
  ============== ==================================================================

Cases (``make_case``)
  Bytes: [segment override] [66] [67] [F3/F2 for string forms] [mandatory prefix] [0F [38|3A]]
  opcode (+ a random register for +r forms) [ModRM with reg = the group, mod 3 for
  register forms and 0-2 for memory forms, random rm] [random SIB/displacement] and random
  immediate bytes, decoded back with iced to confirm the form and find the length. GPRs
  and the arithmetic flags, DF, IOPL and NT are random (IF = TF = AC = 0), drawn from
  boundary values, small values, selectors and full 32-bit randoms. Memory operands (and
  string operands at DS:SI / ES:DI) are moved by adjusting their base or index register (or
  their displacement) into RAM inside the segment limit most of the time, near or past the
  limit sometimes, and left where the random registers put them otherwise; random bytes
  (with plausible offsets and selectors among them) are seeded there and around SS:SP.
  Everything derives from one integer seed, so a case is replayed from its id.
"""

from __future__ import annotations

import functools
import random
import re
import struct
from dataclasses import dataclass, field

import iced_x86 as X

from pykvm.emulator.handlers import HANDLERS
from pykvm.x86 import boot
from pykvm.x86 import descriptors as D
from pykvm.x86.bits import (CR0_ET, CR0_NE, CR0_PE, FLAG_AF, FLAG_CF, FLAG_DF, FLAG_FIXED, FLAG_IOPL,
                            FLAG_NT, FLAG_OF, FLAG_PF, FLAG_SF, FLAG_ZF)
from pykvm.x86.state import CS, DS, ES, FS, GS, SS, CpuState, DescriptorTable, Segment
from tests.differential import accesses as A

MEMORY_SIZE = 2 << 20
HLT = 0xF4

CODE_BASE = 0x10000            # CS.base in every mode (real-mode CS = 0x1000)
HANDLERS_BASE = 0x1F000        # vector v's handler: a HLT at 0x1f000 + v
HANDLER_SEGMENT = 0x1F00
GDT_BASE = 0x1FE000
LDT_BASE = 0x1FE400
TSS_BASE = 0x1FE500
IDT_BASE = 0x1FF000

# -- the GDT every protected-mode case sees (and real-mode LGDT/SGDT) ----------------------
_CODE, _DATA = 0xB, 0x3
SEL_CODE32, SEL_DATA32, SEL_CODE16, SEL_CODE16_BIG, SEL_STACK16 = 0x08, 0x10, 0x18, 0x20, 0x28
SEL_LDT, SEL_TSS = 0x70, 0x78
GDT = [
    0,                                                             # 0x00 null
    D.encode_descriptor(0, 0xFFFFF, _CODE, db=1, g=1),             # 0x08 flat 32-bit code
    D.encode_descriptor(0, 0xFFFFF, _DATA, db=1, g=1),             # 0x10 flat data / 32-bit stack
    D.encode_descriptor(CODE_BASE, 0xFFFF, _CODE),                 # 0x18 16-bit code, 64 KiB
    D.encode_descriptor(CODE_BASE, 0xFFFFF, _CODE, g=1),           # 0x20 16-bit code, 4 GiB limit
    D.encode_descriptor(0, 0xFFFF, _DATA),                         # 0x28 16-bit stack/data at 0
    D.encode_descriptor(0x40000, 0xFFFF, _DATA),                   # 0x30 16-bit data at 0x40000
    D.encode_descriptor(0x50000, 0xFFF, _DATA, db=1),              # 0x38 small data (4 KiB)
    D.encode_descriptor(0x60000, 0xFFFF, 0x1),                     # 0x40 read-only data
    D.encode_descriptor(0x70000, 0xFFF, 0x7, db=1),                # 0x48 expand-down data
    D.encode_descriptor(0, 0xFFFFF, _DATA, present=0, db=1, g=1),  # 0x50 not present
    D.encode_descriptor(0, 0xFFFFF, _DATA, dpl=3, db=1, g=1),      # 0x58 DPL-3 data
    D.encode_descriptor(0, 0xFFFFF, 0x2, db=1, g=1),               # 0x60 data, accessed bit clear
    D.encode_descriptor(0x30000, 0xFFFF, _DATA),                   # 0x68 16-bit stack at 0x30000
    D.encode_descriptor(LDT_BASE, 0x1F, D.SYS_LDT, s=0),           # 0x70 LDT
    D.encode_descriptor(TSS_BASE, 0x67, D.SYS_TSS32_AVAIL, s=0),   # 0x78 32-bit TSS (available)
    D.encode_descriptor(0, 0xFFFFF, 0x9, db=1, g=1),               # 0x80 execute-only 32-bit code
]
LDT = [0, D.encode_descriptor(0x40000, 0xFFFF, _DATA), D.encode_descriptor(0, 0xFFFFF, _CODE, db=1, g=1), 0]
SELECTORS = tuple(range(0, len(GDT) * 8, 8)) + (0x0C, 0x14)      # + two LDT selectors
DATA_SELECTORS = (SEL_DATA32,) * 6 + (0x30, 0x38, 0x40, 0x48, 0x58, 0x60, 0x0C)
REAL_SEGMENTS = (0x0000, 0x1000, 0x2000, 0x3000, 0x4000, 0x6789, 0xF000, 0xFFFF)


@dataclass(frozen=True)
class Mode:
    name: str
    real: bool
    code: int       # code size (CS.D)
    stack: int      # stack size (SS.B)


MODES = {m.name: m for m in (Mode("real", True, 16, 16), Mode("pm16-s16", False, 16, 16),
                             Mode("pm16-s32", False, 16, 32), Mode("pm32-s32", False, 32, 32),
                             Mode("pm32-s16", False, 32, 16))}
PREFIXES = ("", "66", "67", "66 67")
STRING_PREFIXES = ("F3", "F2")


def handler(mode: Mode, gate16: bool, vector: int) -> tuple[int, int]:
    """(CS selector, IP/EIP) of vector ``vector``'s handler."""
    if mode.real:
        return HANDLER_SEGMENT, vector
    if gate16 or mode.code == 16:
        return SEL_CODE16, HANDLERS_BASE - CODE_BASE + vector
    return SEL_CODE32, HANDLERS_BASE + vector


@functools.lru_cache(maxsize=None)
def memory_template(mode: Mode, gate16: bool = False) -> bytes:
    """Guest RAM before a case is written in: HLT everywhere but the tables."""
    ram = bytearray([HLT]) * MEMORY_SIZE
    ram[0:0x400] = b"".join(struct.pack("<HH", v, HANDLER_SEGMENT) for v in range(256))
    ram[GDT_BASE:GDT_BASE + 8 * len(GDT)] = struct.pack(f"<{len(GDT)}Q", *GDT)
    ram[LDT_BASE:LDT_BASE + 8 * len(LDT)] = struct.pack(f"<{len(LDT)}Q", *LDT)
    tss = bytearray(0x68)
    struct.pack_into("<IIH", tss, 4, 0x80000, SEL_DATA32, 0)     # ESP0, SS0
    struct.pack_into("<H", tss, 0x66, 0x68)                       # no I/O bitmap
    ram[TSS_BASE:TSS_BASE + 0x68] = tss
    kind = D.SYS_INT_GATE16 if gate16 else D.SYS_INT_GATE32
    gates = [D.encode_gate(*handler(mode, gate16, v), kind) for v in range(256)]
    ram[IDT_BASE:IDT_BASE + 0x800] = struct.pack("<256Q", *gates)
    return bytes(ram)


GUARDED = ((0, 0x400), (HANDLERS_BASE, 0x100), (GDT_BASE, IDT_BASE + 0x800 - GDT_BASE))


# -- forms ------------------------------------------------------------------------------------
_OK = X.OpCodeOperandKind
_KIND_NAMES = {getattr(_OK, n): n for n in dir(_OK) if n.isupper()}
_MNEMONIC_NAMES = {getattr(X.Mnemonic, n): n for n in dir(X.Mnemonic) if n.isupper()}
_CODE_NAMES = {getattr(X.Code, n): n for n in dir(X.Code) if n.isupper()}
_ESCAPES = {X.OpCodeTableKind.NORMAL: b"", X.OpCodeTableKind.T0F: b"\x0f",
            X.OpCodeTableKind.T0F38: b"\x0f\x38", X.OpCodeTableKind.T0F3A: b"\x0f\x3a"}
_MANDATORY = {X.MandatoryPrefix.P66: 0x66, X.MandatoryPrefix.PF3: 0xF3, X.MandatoryPrefix.PF2: 0xF2}
_STRING_MNEMONICS = {getattr(X.Mnemonic, n) for n in (
    "MOVSB", "MOVSW", "MOVSD", "CMPSB", "CMPSW", "CMPSD", "STOSB", "STOSW", "STOSD", "LODSB", "LODSW",
    "LODSD", "SCASB", "SCASW", "SCASD", "INSB", "INSW", "INSD", "OUTSB", "OUTSW", "OUTSD")}


@dataclass(frozen=True)
class Form:
    """One opcode form (see the module docstring); ``operands`` is "none", "reg", "mem" or
    "reg!" (mod = 3 of a memory-only form)."""

    key: tuple
    operands: str
    label: str
    mnemonics: tuple
    claimed: bool
    escape: bytes
    opcode: bytes
    mandatory: int | None
    no_prefix: bool           # "NP": 66/F2/F3 would select another form
    modrm: bool
    group: int | None
    plus_r: bool
    string: bool
    sizes: frozenset          # code sizes the form exists in (16, 32)
    operand_kinds: frozenset  # iced OpCodeOperandKind names of its operands

    @property
    def name(self) -> str:
        return self.label if self.operands == "none" else f"{self.label} [{self.operands}]"


def mnemonic(ins) -> str:
    return _MNEMONIC_NAMES.get(ins.mnemonic, "?")


_FOREIGN_OPERANDS = ("XMM", "YMM", "MM_", "ST", "K_", "BND", "TMM")


def handled(info) -> bool:
    """Whether pykvm's emulator has a handler for the iced ``OpCodeInfo``'s instruction: its
    mnemonic is in HANDLERS, and it is not an x87/MMX/SSE namesake of one (iced calls the
    SSE2 MOVSD/CMPSD by the string instructions' mnemonics)."""
    kinds = (_KIND_NAMES[info.op_kind(k)] for k in range(info.op_count))
    return info.mnemonic in HANDLERS and not any(k.startswith(_FOREIGN_OPERANDS) for k in kinds)


def claims(ins) -> bool:
    """Whether pykvm's emulator claims the decoded instruction."""
    return ins.code != X.Code.INVALID and handled(X.OpCodeInfo(ins.code))


def form_key(info) -> tuple:
    return (info.table, info.mandatory_prefix, info.op_code, info.op_code_len,
            info.group_index if info.is_group else -1)


def _label(infos) -> str:
    tokens = [t for t in infos[0].op_code_string.split() if t not in ("o16", "o32", "a16", "a32")]
    tokens = [{"iw": "imm", "id": "imm", "cw": "rel", "cd": "rel", "mo": "moffs"}.get(t, t) for t in tokens]
    mnemonics = sorted({_MNEMONIC_NAMES[i.mnemonic] for i in infos})
    return " ".join(tokens) + " " + "/".join(mnemonics)


def enumerate_forms() -> list[Form]:
    groups: dict[tuple, list] = {}
    for code in sorted(_CODE_NAMES):
        info = X.OpCodeInfo(code)
        if (info.encoding != X.EncodingKind.LEGACY or not info.is_instruction or not (info.mode16 or info.mode32)
                or info.decoder_option != X.DecoderOptions.NONE):
            continue
        groups.setdefault(form_key(info), []).append(info)
    forms = []
    for key, infos in sorted(groups.items()):
        kinds = frozenset(_KIND_NAMES[i.op_kind(k)] for i in infos for k in range(i.op_count))
        text = infos[0].op_code_string
        modrm = "/r" in text or re.search(r"/[0-7]\b", text) is not None
        if not modrm:
            variants = ["none"]
        elif any(k.endswith(("_OR_MEM", "_REG_MEM", "_OR_MEM_MPX")) for k in kinds):
            variants = ["reg", "mem"]
        elif kinds & {"MEM", "MEM_MIB", "MEM_MPX", "SIBMEM"}:
            variants = ["mem", "reg!"]
        else:
            variants = ["reg"]
        info = infos[0]
        mnemonics = tuple(sorted({_MNEMONIC_NAMES[i.mnemonic] for i in infos}))
        for operands in variants:
            forms.append(Form(
                key=key, operands=operands, label=_label(infos), mnemonics=mnemonics,
                claimed=any(handled(i) for i in infos),
                escape=_ESCAPES[info.table], opcode=info.op_code.to_bytes(info.op_code_len, "big"),
                mandatory=_MANDATORY.get(info.mandatory_prefix),
                no_prefix=info.mandatory_prefix == X.MandatoryPrefix.PNP, modrm=modrm,
                group=info.group_index if info.is_group else None,
                plus_r=bool(kinds & {"R8_OPCODE", "R16_OPCODE", "R32_OPCODE", "STI_OPCODE"}),
                string=any(i.mnemonic in _STRING_MNEMONICS and handled(i) for i in infos),
                sizes=frozenset(s for i in infos for s, ok in ((16, i.mode16), (32, i.mode32)) if ok),
                operand_kinds=kinds))
    return forms


FORMS = enumerate_forms()
FORMS_BY_NAME = {f.name: f for f in FORMS}


def prefixes_for(form: Form) -> tuple[str, ...]:
    base = PREFIXES
    if form.mandatory == 0x66 or form.no_prefix:
        base = ("", "67")      # 66 is the form's own opcode prefix, or selects another form
    if form.string:
        return tuple(" ".join(p for p in (b, r) if p) for b in base for r in ("",) + STRING_PREFIXES)
    return base


# -- random values -------------------------------------------------------------------------------
BOUNDARY = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
            0x80000000, 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFF0000, 0x0000FFFE)


def value(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.25:
        return rng.choice(BOUNDARY)
    if r < 0.5:
        return rng.randrange(0x100) if rng.random() < 0.7 else (-rng.randrange(1, 0x100)) & 0xFFFFFFFF
    if r < 0.6:
        return rng.choice(SELECTORS) | rng.randrange(4) | rng.getrandbits(16) << 16
    return rng.getrandbits(32)


def plausible_bytes(rng: random.Random, n: int) -> bytes:
    """Seed data: dwords that are random, small, in-RAM offsets, or offset:selector pairs."""
    out = bytearray()
    while len(out) < n:
        r = rng.random()
        if r < 0.3:
            word = rng.getrandbits(32)
        elif r < 0.5:
            word = rng.choice(BOUNDARY)
        elif r < 0.75:
            word = rng.randrange(0x100, 0xE000) | rng.choice(SELECTORS) << 16
        else:
            word = CODE_BASE + rng.randrange(0x100, 0xE000) if rng.random() < 0.5 else rng.choice(SELECTORS)
        out += struct.pack("<I", word & 0xFFFFFFFF)
    return bytes(out[:n])


# -- cases -----------------------------------------------------------------------------------------
@dataclass
class Case:
    """One generated instruction in one mode, ready to run: ``writes`` go over the mode's
    memory template (``memory_template``), ``state`` is the state before it."""

    id: str
    form: Form
    mode: Mode
    prefix: str
    code: bytes
    text: str
    state: CpuState
    gate16: bool = False        # the IDT holds 286 (16-bit) gates
    writes: list = field(default_factory=list)
    ins: object = None          # the decoded iced Instruction

    @property
    def linear(self) -> int:
        return (self.state.seg[CS].base + self.state.rip) & 0xFFFFFFFF


def _segment(selector: int) -> Segment:
    table = LDT if selector & 4 else GDT
    return boot.segment_from_descriptor(selector, table[selector >> 3] | (1 << 40))   # loaded: accessed


def initial_state(mode: Mode, rng: random.Random, msrs: dict) -> CpuState:
    st = CpuState()
    st.gpr = [value(rng) for _ in range(8)] + [0] * 8
    flags = rng.getrandbits(12) & (FLAG_CF | FLAG_PF | FLAG_AF | FLAG_ZF | FLAG_SF | FLAG_OF | FLAG_DF)
    if rng.random() < 0.2:
        flags |= rng.getrandbits(2) << 12 & FLAG_IOPL
    if rng.random() < 0.05:
        flags |= FLAG_NT
    st.rflags = flags | FLAG_FIXED
    st.gdt = DescriptorTable(GDT_BASE, len(GDT) * 8 - 1)
    st.cr0 = CR0_ET | CR0_NE | (0 if mode.real else CR0_PE)
    st.msrs = dict(msrs)
    st.seg[6] = Segment(selector=0, base=0, limit=0xFFFF, type=2, s=0)       # LDTR
    st.seg[7] = Segment(selector=0, base=0, limit=0xFFFF, type=0xB, s=0)     # TR: busy TSS
    if mode.real:
        st.idt = DescriptorTable(0, 0x3FF)
        st.seg[CS] = boot.real_mode_segment(CODE_BASE >> 4, code=True)
        for i in (ES, SS, DS, FS, GS):
            st.seg[i] = boot.real_mode_segment(rng.choice(REAL_SEGMENTS))
        st.gpr[4] = _stack_pointer16(rng)
        return st
    st.idt = DescriptorTable(IDT_BASE, 0x7FF)
    if mode.code == 32:
        st.seg[CS] = _segment(SEL_CODE32)
    else:
        st.seg[CS] = _segment(SEL_CODE16_BIG if rng.random() < 0.25 else SEL_CODE16)
    if mode.stack == 32:
        st.seg[SS] = _segment(SEL_DATA32)
        st.gpr[4] = rng.randrange(0x80000, MEMORY_SIZE - 0x2000) & ~3 if rng.random() < 0.92 else value(rng)
    else:
        st.seg[SS] = _segment(0x68 if rng.random() < 0.1 else SEL_STACK16)
        st.gpr[4] = _stack_pointer16(rng)
    ldt = rng.random() < 0.8
    # Without LLDT, LDTR is null: unusable, so LDT selectors fault (the reset value, base 0
    # and limit 0xffff, would make them name whatever lies at address 0).
    st.seg[6] = (Segment(selector=SEL_LDT, base=LDT_BASE, limit=0x1F, type=2, s=0) if ldt
                 else Segment(selector=0, base=0, limit=0, type=2, present=0, s=0, unusable=1))
    for i in (ES, DS, FS, GS):
        st.seg[i] = _segment(rng.choice([s for s in DATA_SELECTORS if ldt or not s & 4]))
    if rng.random() < 0.1:
        st.seg[rng.choice((ES, FS, GS))] = Segment(selector=0, base=0, limit=0, type=0, present=0, s=0,
                                                    unusable=1)
    return st


def _stack_pointer16(rng: random.Random) -> int:
    """SP for a 16-bit stack: any 16 bits, sometimes with random upper bits of ESP."""
    if rng.random() < 0.1:
        return value(rng)
    return rng.getrandbits(16) | (rng.getrandbits(16) << 16 if rng.random() < 0.1 else 0)


def _modrm(form: Form, mode: Mode, prefix: str, rng: random.Random) -> bytes:
    """ModRM (+ SIB + displacement) for ``form``: reg = the group, mod by the operand kind."""
    kinds = form.operand_kinds
    if form.group is not None:
        reg = form.group
    elif "SEG_REG" in kinds:
        reg = rng.randrange(6) if rng.random() < 0.9 else rng.randrange(8)
    elif "CR_REG" in kinds:
        reg = rng.choice((0, 0, 2, 3, 4)) if rng.random() < 0.9 else rng.randrange(8)
    else:
        reg = rng.randrange(8)
    rm = rng.randrange(8)
    if form.operands in ("reg", "reg!"):
        return bytes([0xC0 | reg << 3 | rm])
    mod = rng.choice((0, 0, 1, 2))
    a32 = (mode.code == 32) != ("67" in prefix.split())
    out = bytes([mod << 6 | reg << 3 | rm])
    if a32:
        if rm == 4:
            out += bytes([rng.getrandbits(8)])
            if mod == 0 and out[-1] & 7 == 5:
                out += rng.getrandbits(32).to_bytes(4, "little")
        if mod == 0 and rm == 5:
            out += rng.getrandbits(32).to_bytes(4, "little")
        disp = {1: 1, 2: 4}.get(mod, 0)
    else:
        disp = 2 if mod == 0 and rm == 6 else {1: 1, 2: 2}.get(mod, 0)
    return out + bytes(rng.getrandbits(8) for _ in range(disp))


def _instruction_bytes(form: Form, mode: Mode, prefix: str, rng: random.Random) -> bytes:
    out = bytearray()
    if form.operands == "mem" and rng.random() < 0.3:
        out.append(rng.choice((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65)))
    out += bytes.fromhex(prefix.replace(" ", ""))
    if form.mandatory is not None:
        out.append(form.mandatory)
    out += form.escape
    opcode = bytearray(form.opcode)
    if form.plus_r:
        opcode[-1] += rng.randrange(8)
    out += opcode
    if form.modrm:
        out += _modrm(form, mode, prefix, rng)
    return bytes(out) + plausible_bytes(rng, 8)


def _decodes_as(form: Form, ins) -> bool:
    if form.operands == "reg!":
        # A #UD probe: iced finds no instruction there (or, for C4/C5 in 32-bit code, a VEX
        # prefix); a register form of another group member is that form's business.
        return ins.code == X.Code.INVALID or ins.encoding != X.EncodingKind.LEGACY
    return ins.code != X.Code.INVALID and form_key(X.OpCodeInfo(ins.code)) == form.key


def _place(state: CpuState, ins, mode: Mode, rng: random.Random, code: bytes) -> bytes:
    """Move explicit and string memory operands into RAM inside their segment (usually) or
    near its limit (sometimes) by adjusting a base or index register, or the displacement
    when there is neither; returns the instruction bytes (re-encoded in that last case)."""
    for acc in A.memory_accesses(ins, state, mode.stack == 32):
        if acc.implicit_stack or rng.random() > 0.85:
            continue
        seg = state.seg[acc.segment]
        top = min(seg.limit, MEMORY_SIZE - 0x100 - seg.base)
        if top <= 0 or seg.unusable:
            continue
        r = rng.random()
        if seg.type & 0xC == 0x4:      # expand-down: valid offsets lie above the limit
            target = seg.limit + 1 + rng.randrange(0x1000) if r < 0.8 else seg.limit + 1 - rng.randrange(4)
        elif r < 0.85:
            target = rng.randrange(0, top)
        else:
            target = seg.limit - rng.randrange(-1, 4)
        delta = (target - acc.offset) & 0xFFFFFFFF
        register = _adjustable_register(ins, acc)
        if register is not None:
            i, mask, _ = A.GPR_BITS[register]
            state.gpr[i] = (state.gpr[i] & ~mask) | ((state.gpr[i] + delta) & mask)
            continue
        decoder = X.Decoder(mode.code, code, ip=ins.ip)
        offsets = decoder.get_constant_offsets(decoder.decode())    # of the instruction just decoded
        if offsets.has_displacement and offsets.displacement_size >= 2:
            at, size = offsets.displacement_offset, offsets.displacement_size
            disp = (int.from_bytes(code[at:at + size], "little") + delta) % (1 << (8 * size))
            code = code[:at] + disp.to_bytes(size, "little") + code[at + size:]
    return code


def _adjustable_register(ins, acc):
    """The base (else the scale-1 index) register of the access ``acc``, if it has one
    other than (E)SP."""
    for m in X.InstructionInfoFactory().info(ins).used_memory():
        if A.memory_bytes(m.memory_size) not in (acc.size, 0) and not ins.is_string_instruction:
            continue
        for reg, scale in ((m.base, 1), (m.index, m.scale)):
            if reg in A.GPR_BITS and A.GPR_BITS[reg][1] in (0xFFFF, 0xFFFFFFFF) and scale == 1 \
                    and reg not in (X.Register.SP, X.Register.ESP):
                return reg
    return None


def _seed(writes: list, linear: int, data: bytes, code_range) -> None:
    """Write ``data`` at physical = linear (paging is off), in RAM, around guarded bytes
    (the tables, the handlers and the instruction itself)."""
    start, end = max(linear, 0), min(linear + len(data), MEMORY_SIZE)
    guards = sorted([(code_range[0], code_range[1] - code_range[0])] + list(GUARDED))
    for g_start, g_len in guards:
        if start >= end:
            return
        if g_start + g_len <= start or g_start >= end:
            continue
        if g_start > start:
            writes.append((start, data[start - linear:g_start - linear]))
        start = max(start, g_start + g_len)
    if start < end:
        writes.append((start, data[start - linear:end - linear]))


def make_case(form: Form, mode: Mode, prefix: str, seed: int, msrs: dict | None = None) -> Case | None:
    """A random case of ``form`` (None if the form does not exist in this code size, or no
    random encoding decoded to it)."""
    if mode.code not in form.sizes:
        return None
    rng = random.Random(seed)
    for _ in range(8):
        code = _instruction_bytes(form, mode, prefix, rng)
        ins = X.Decoder(mode.code, code).decode()
        if _decodes_as(form, ins) and ins.len:
            break
    else:
        return None
    code = code[:ins.len]
    state = initial_state(mode, rng, msrs or {})
    offset = rng.randrange(0x100, 0xE000)
    if mode.code == 16 and rng.random() < 0.1:
        offset = (0x10000 - len(code) + rng.randrange(-1, 2)) & 0xFFFF   # fall through or straddle 64 KiB
    state.rip = offset if state.seg[CS].base == CODE_BASE else CODE_BASE + offset
    if form.string and prefix.split()[-1:] in (["F3"], ["F2"]):
        state.gpr[1] = rng.randrange(0x41) if rng.random() < 0.9 else rng.randrange(0x1000)
    ins = X.Decoder(mode.code, code, ip=state.rip).decode()
    placed = _place(state, ins, mode, rng, code)
    if placed != code:
        code = placed
        ins = X.Decoder(mode.code, code, ip=state.rip).decode()
    linear = (state.seg[CS].base + state.rip) & 0xFFFFFFFF
    code_range = (linear, linear + len(code) + 1)
    if any(a.access != "r" and a.linear < code_range[1] and code_range[0] < a.linear + a.size
           for a in A.memory_accesses(ins, state, mode.stack == 32) if a.size > 8):
        return None    # a REP store over its own bytes: each oracle re-fetches them differently
    writes: list = []
    for acc in A.memory_accesses(ins, state, mode.stack == 32):
        _seed(writes, acc.linear - 8, plausible_bytes(rng, min(acc.size, 0x1000) + 24), code_range)
    sp = state.gpr[4] if mode.stack == 32 else state.gpr[4] & 0xFFFF
    _seed(writes, (state.seg[SS].base + sp - 32) & 0xFFFFFFFF, plausible_bytes(rng, 96), code_range)
    writes.append((linear, code))
    text = X.Formatter(X.FormatterSyntax.INTEL).format(ins)
    case_id = f"{form.name}|{mode.name}|{prefix or '-'}|{seed}"
    gate16 = not mode.real and rng.random() < 0.1
    return Case(case_id, form, mode, prefix, code, text, state, gate16, writes, ins)
