"""Integer arithmetic, logic, shifts, bit tests, SETcc/CMOVcc: templates with lazy flags."""

from __future__ import annotations

import iced_x86 as X

from pykvm.emulator.codegen import Invalid, MASKS, MNEMONIC_NAMES, REG_INFO, SEG_INDEX, SIGNS, handler_table
from pykvm.emulator.features import falls_back
from pykvm.emulator.flags import OP_ADD, OP_DEC, OP_INC, OP_RES, OP_SUB

M = X.Mnemonic
HANDLERS, handles = handler_table()



def kind(op, size):
    return op << 3 | size


# -- condition expressions -------------------------------------------------------------------
def cond_expr(g, cc: int) -> str:
    """Emit ``p = E.lf`` and return an expression testing condition ``cc`` (x86 encoding)."""
    g.emit("p = E.lf")
    if cc == 4:
        return "(p[3] == 0 if p[0] else p[3] & 64)"
    if cc == 5:
        return "(p[3] != 0 if p[0] else not p[3] & 64)"
    fn = g.k(cc)
    sub = {2: "p[1] < p[2]", 3: "p[1] >= p[2]", 6: "p[1] <= p[2]", 7: "p[1] > p[2]",
           12: "(p[1] ^ SIGNK[p[0]]) < (p[2] ^ SIGNK[p[0]])",
           13: "(p[1] ^ SIGNK[p[0]]) >= (p[2] ^ SIGNK[p[0]])",
           14: "(p[1] ^ SIGNK[p[0]]) <= (p[2] ^ SIGNK[p[0]])",
           15: "(p[1] ^ SIGNK[p[0]]) > (p[2] ^ SIGNK[p[0]])"}.get(cc)
    if sub:
        return f"({sub} if p[0] >> 3 == 2 else COND[{fn}](p))"
    return f"COND[{fn}](p)"


CC_OF = {}
for _cc, _names in enumerate((("O",), ("NO",), ("B",), ("AE",), ("E",), ("NE",), ("BE",), ("A",),
                              ("S",), ("NS",), ("P",), ("NP",), ("L",), ("GE",), ("LE",), ("G",))):
    for _prefix in ("J", "SET", "CMOV"):
        _m = getattr(M, _prefix + _names[0], None)
        if _m is not None:
            CC_OF[_m] = _cc


# -- two-operand arithmetic -------------------------------------------------------------------
def _binary(g, op: str):
    d = g.op(0)
    size = d.size
    s = g.op(1, size)
    mask = MASKS[size]
    g.emit(f"a = {d.read()}", f"b = {s.read()}")
    if op == "add":
        g.emit(f"r = (a + b) & {mask:#x}")
        d.write("r")
        g.emit(f"E.lf = ({kind(OP_ADD, size)}, a, b, r)")
    elif op in ("sub", "cmp"):
        g.emit(f"r = (a - b) & {mask:#x}")
        if op == "sub":
            d.write("r")
        g.emit(f"E.lf = ({kind(OP_SUB, size)}, a, b, r)")
    elif op in ("and", "or", "xor", "test"):
        sym = {"and": "&", "or": "|", "xor": "^", "test": "&"}[op]
        g.emit(f"r = a {sym} b")
        if op != "test":
            d.write("r")
        g.emit(f"E.lf = ({kind(OP_RES, size)}, 0, 0, r)")
    elif op in ("adc", "sbb"):
        sign = SIGNS[size]
        g.emit("c = carry(E.lf)")
        if op == "adc":
            g.emit("w = a + b + c", f"r = w & {mask:#x}",
                   f"x = (w >> {size * 8}) | (((a ^ r) & (b ^ r) & {sign:#x}) and 0x800) | ((a ^ b ^ r) & 0x10)")
        else:
            g.emit("w = a - b - c", f"r = w & {mask:#x}",
                   f"x = (1 if w < 0 else 0) | (((a ^ b) & (a ^ r) & {sign:#x}) and 0x800) | ((a ^ b ^ r) & 0x10)")
        d.write("r")
        g.emit(f"E.lf = ({kind(OP_RES, size)}, 0, x, r)")


for _m, _op in ((M.ADD, "add"), (M.SUB, "sub"), (M.CMP, "cmp"), (M.AND, "and"), (M.OR, "or"),
                (M.XOR, "xor"), (M.TEST, "test"), (M.ADC, "adc"), (M.SBB, "sbb")):
    HANDLERS[_m] = (lambda op: lambda g: _binary(g, op))(_op)


@handles(M.INC, M.DEC)
def _incdec(g):
    d = g.op(0)
    size = d.size
    inc = g.ins.mnemonic == M.INC
    g.emit(f"a = {d.read()}", f"r = (a {'+' if inc else '-'} 1) & {MASKS[size]:#x}")
    d.write("r")
    g.emit("p = E.lf", "if 24 <= p[0] < 40:", "    p = p[2]",
           f"E.lf = ({kind(OP_INC if inc else OP_DEC, size)}, a, p, r)")


@handles(M.NEG)
def _neg(g):
    d = g.op(0)
    size = d.size
    g.emit(f"a = {d.read()}", f"r = -a & {MASKS[size]:#x}")
    d.write("r")
    g.emit(f"E.lf = ({kind(OP_SUB, size)}, 0, a, r)")


@handles(M.NOT)
def _not(g):
    d = g.op(0)
    g.emit(f"a = {d.read()}")
    d.write(f"a ^ {MASKS[d.size]:#x}")


# -- multiply / divide ----------------------------------------------------------------------
def _acc_write(g, size, lo, hi):
    """Store a double-width result into AX / DX:AX / EDX:EAX."""
    if size == 1:
        g.emit(f"R[0] = R[0] & 0xFFFF0000 | {hi} << 8 | {lo}")
    elif size == 2:
        g.emit(f"R[0] = R[0] & 0xFFFF0000 | {lo}", f"R[2] = R[2] & 0xFFFF0000 | {hi}")
    else:
        g.emit(f"R[0] = {lo}", f"R[2] = {hi}")


def _acc_read(g, size):
    """Dividend for DIV/IDIV: AX, DX:AX or EDX:EAX."""
    if size == 1:
        return "(R[0] & 0xFFFF)"
    if size == 2:
        return "((R[2] & 0xFFFF) << 16 | (R[0] & 0xFFFF))"
    return "(R[2] << 32 | R[0])"


@handles(M.MUL)
def _mul(g):
    s = g.op(0)
    size = s.size
    g.emit(f"b = {s.read()}", f"lo, hi, lf = mul(R[0] & {MASKS[size]:#x}, b, {size})")
    _acc_write(g, size, "lo", "hi")
    g.emit("E.lf = lf")


@handles(M.IMUL)
def _imul(g):
    ins = g.ins
    if ins.op_count == 1:
        s = g.op(0)
        size = s.size
        g.emit(f"b = {s.read()}", f"lo, hi, lf = imul(R[0] & {MASKS[size]:#x}, b, {size})")
        _acc_write(g, size, "lo", "hi")
        g.emit("E.lf = lf")
        return
    d = g.op(0)
    size = d.size
    if ins.op_count == 2:
        g.emit(f"a = {d.read()}", f"b = {g.op(1, size).read()}")
    else:
        g.emit(f"a = {g.op(1, size).read()}", f"b = {g.op(2, size).read()}")
    g.emit(f"lo, hi, lf = imul(a, b, {size})")
    d.write("lo")
    g.emit("E.lf = lf")


@handles(M.DIV, M.IDIV)
def _div(g):
    s = g.op(0)
    size = s.size
    fn = "div" if g.ins.mnemonic == M.DIV else "idiv"
    g.emit(f"b = {s.read()}", f"q, r = {fn}({_acc_read(g, size)}, b, {size})")
    _acc_write(g, size, "q", "r") if size != 1 else g.emit("R[0] = R[0] & 0xFFFF0000 | r << 8 | q")


# -- shifts and rotates -------------------------------------------------------------------------
_SHIFTS = {M.SHL: "shl", M.SAL: "shl", M.SHR: "shr", M.SAR: "sar",
           M.ROL: "rol", M.ROR: "ror", M.RCL: "rcl", M.RCR: "rcr"}


def _emit_counted(g, d, call: str) -> None:
    """The body shared by shifts and rotates: ``a`` and ``c`` (count & 0x1F) are set, and
    ``call`` computes ``r, lf``. A count of 0 changes nothing, but a memory destination is
    still written back (with its own value): the CPU's write check does not depend on the
    count, so a read-only segment or page faults even then."""
    with g.block("if c:"):
        g.emit(f"r, lf = {call}")
        d.write("r")
        g.emit("E.lf = lf")
    if d.kind == "mem":
        with g.block("else:"):
            d.write("a")


@handles(*_SHIFTS)
def _shift(g):
    d = g.op(0)
    size = d.size
    fn = _SHIFTS[g.ins.mnemonic]
    cnt = g.op(1, 1)
    g.emit(f"a = {d.read()}", f"c = {cnt.read()} & 0x1F")
    lazy = "" if fn in ("shl", "shr", "sar") else ", E.lf"
    _emit_counted(g, d, f"{fn}(a, c, {size}{lazy})")


@handles(M.SHLD, M.SHRD)
def _shxd(g):
    d = g.op(0)
    size = d.size
    fn = "shld" if g.ins.mnemonic == M.SHLD else "shrd"
    g.emit(f"a = {d.read()}", f"b = {g.op(1, size).read()}", f"c = {g.op(2, 1).read()} & 0x1F")
    _emit_counted(g, d, f"{fn}(a, b, c, {size})")


# -- bit operations --------------------------------------------------------------------------
def _addr_mask(g) -> int:
    ins = g.ins
    for r in (ins.memory_base, ins.memory_index):
        if r != X.Register.NONE:
            return MASKS[REG_INFO[r][1]]
    return MASKS[ins.memory_displ_size or (4 if g.ctx.bitness == 32 else 2)]


@handles(M.BT, M.BTS, M.BTR, M.BTC)
def _bt(g):
    ins = g.ins
    d = g.op(0)
    size = d.size
    bits = size * 8
    src = g.op(1, size)
    mn = ins.mnemonic
    if d.kind == "mem" and src.kind == "reg":
        # A register bit offset is signed and may address memory outside the operand.
        o = d.addr()
        shift = 4 if size == 2 else 5
        g.emit(f"b = {src.read()}",
               f"sb = b - {1 << bits:#x} if b >> {bits - 1} else b",
               f"o2 = ({o} + (sb >> {shift}) * {size}) & {_addr_mask(g):#x}",
               f"bit = b & {bits - 1}")
        seg = d.segk()
        g.emit(f"a = rdn({seg}, o2, {size})")
        store = f"wrn({seg}, o2, {size}, %s)"
    else:
        g.emit(f"a = {d.read()}", f"bit = {src.read()} & {bits - 1}")
        store = None
    new = {M.BTS: "a | (1 << bit)", M.BTR: "a & ~(1 << bit)", M.BTC: "a ^ (1 << bit)"}.get(mn)
    if new:
        if store:
            g.emit(store % new)
        else:
            d.write(f"({new})")
    g.emit("E.lf = cf_only(E.lf, a >> bit & 1)")


@handles(M.BOUND)
def _bound(g):
    """BOUND: #BR (a fault) unless lower <= index <= upper, all signed; the bounds are two
    operand-size words at the memory operand."""
    d = g.op(0)
    if g.ins.op1_kind != X.OpKind.MEMORY:
        raise Invalid()
    size = d.size
    sign = SIGNS[size]
    o = g.op(1, size).addr()
    seg = g.k(SEG_INDEX[g.ins.memory_segment])
    g.emit(f"lo = rdn({seg}, {o}, {size}) ^ {sign:#x}",
           f"hi = rdn({seg}, ({o} + {size}) & 0xFFFFFFFF, {size}) ^ {sign:#x}",   # same operand: no wrap
           f"i = {d.read()} ^ {sign:#x}",
           "if i < lo or i > hi:", "    raise Fault(5)")


@handles(M.BSF, M.BSR)
def _bsf(g, fn: str | None = None):
    d = g.op(0)
    s = g.op(1, d.size)
    fn = fn or ("bsf" if g.ins.mnemonic == M.BSF else "bsr")
    g.emit(f"b = {s.read()}")
    with g.block("if b:"):
        d.write(f"{fn}(b)")
    g.emit("E.lf = zf_only(E.lf, not b)")


# TZCNT/LZCNT (F3 0F BC/BD) where CPUID offers BMI1 / LZCNT; elsewhere the F3 prefix is ignored
# and they run as BSF/BSR, as on the processors without them (GCC emits ``rep bsf`` for ctz).
@handles(M.TZCNT, M.LZCNT)
def _tzcnt(g):
    mn = g.ins.mnemonic
    if falls_back(g.ctx.emu.cpuid, mn):
        return _bsf(g, "bsf" if mn == M.TZCNT else "bsr")
    d = g.op(0)
    bits = d.size * 8
    g.emit(f"b = {g.op(1, d.size).read()}")
    if mn == M.TZCNT:
        g.emit(f"r = bsf(b) if b else {bits}")
    else:
        g.emit(f"r = {bits} - b.bit_length()")
    d.write("r")
    g.emit("E.lf = count_flags(E.lf, not b, not r)")


@handles(M.POPCNT)
def _popcnt(g):
    d = g.op(0)
    g.emit(f"b = {g.op(1, d.size).read()}")
    d.write("b.bit_count()")
    g.emit("E.lf = popcnt_flags(b)")


@handles(M.CRC32)
def _crc32(g):
    d = g.op(0)
    s = g.op(1)
    g.emit(f"c = crc32c(R[{g.k(d.reg)}], {s.read()}, {s.size})")
    d.write("c")


# -- SETcc / CMOVcc -----------------------------------------------------------------------------
def _setcc(g):
    d = g.op(0)
    expr = cond_expr(g, CC_OF[g.ins.mnemonic])
    d.write(f"(1 if {expr} else 0)")


def _cmovcc(g):
    d = g.op(0)
    s = g.op(1, d.size)
    g.emit(f"v = {s.read()}")
    expr = cond_expr(g, CC_OF[g.ins.mnemonic])
    with g.block(f"if {expr}:"):
        d.write("v")


for _m in CC_OF:
    if MNEMONIC_NAMES[_m].startswith("SET"):
        HANDLERS[_m] = _setcc
    elif MNEMONIC_NAMES[_m].startswith("CMOV"):
        HANDLERS[_m] = _cmovcc


# -- flag instructions and conversions --------------------------------------------------------
@handles(M.CLC, M.STC, M.CMC)
def _cf_ops(g):
    expr = {M.CLC: "arith(E.lf) & ~1", M.STC: "arith(E.lf) | 1", M.CMC: "arith(E.lf) ^ 1"}[g.ins.mnemonic]
    g.emit(f"E.lf = (0, 0, 0, {expr})")


@handles(M.SALC)
def _salc(g):
    """SALC (D6, undocumented on Intel, documented by AMD): AL = CF ? 0xFF : 0; flags unchanged."""
    g.emit("R[0] = R[0] & 0xFFFFFF00 | (0xFF if carry(E.lf) else 0)")


@handles(M.LAHF)
def _lahf(g):
    g.emit("R[0] = R[0] & 0xFFFF00FF | ((arith(E.lf) & 0xD5) | 2) << 8")


@handles(M.SAHF)
def _sahf(g):
    g.emit("E.lf = (0, 0, 0, (arith(E.lf) & ~0xD5) | (R[0] >> 8 & 0xD5))")


@handles(M.CBW, M.CWDE, M.CWD, M.CDQ)
def _convert(g):
    mn = g.ins.mnemonic
    if mn == M.CBW:
        g.emit("a = R[0] & 0xFF", "R[0] = R[0] & 0xFFFF0000 | ((a ^ 0x80) - 0x80) & 0xFFFF")
    elif mn == M.CWDE:
        g.emit("a = R[0] & 0xFFFF", "R[0] = ((a ^ 0x8000) - 0x8000) & 0xFFFFFFFF")
    elif mn == M.CWD:
        g.emit("R[2] = R[2] & 0xFFFF0000 | (0xFFFF if R[0] & 0x8000 else 0)")
    else:
        g.emit("R[2] = 0xFFFFFFFF if R[0] & 0x80000000 else 0")


@handles(M.DAA, M.DAS)
def _daa(g):
    fn = "daa" if g.ins.mnemonic == M.DAA else "das"
    g.emit(f"al, lf = {fn}(R[0] & 0xFF, E.lf)", "R[0] = R[0] & 0xFFFFFF00 | al", "E.lf = lf")


@handles(M.AAA, M.AAS)
def _aaa(g):
    sub = g.ins.mnemonic == M.AAS
    g.emit(f"ax, lf = aaa(R[0] & 0xFFFF, E.lf, {sub})", "R[0] = R[0] & 0xFFFF0000 | ax", "E.lf = lf")


@handles(M.AAM)
def _aam(g):
    base = g.ins.immediate(0) & 0xFF
    if base == 0:
        g.emit("raise Fault(0)")
        return
    g.emit(f"al = R[0] & 0xFF", f"r = al % {base}", f"R[0] = R[0] & 0xFFFF0000 | (al // {base}) << 8 | r",
           f"E.lf = ({kind(OP_RES, 1)}, 0, 0, r)")


@handles(M.AAD)
def _aad(g):
    base = g.ins.immediate(0) & 0xFF
    g.emit(f"r = ((R[0] & 0xFF) + (R[0] >> 8 & 0xFF) * {base}) & 0xFF",
           "R[0] = R[0] & 0xFFFF0000 | r", f"E.lf = ({kind(OP_RES, 1)}, 0, 0, r)")


@handles(M.XADD)
def _xadd(g):
    d = g.op(0)
    size = d.size
    s = g.op(1, size)
    g.emit(f"a = {d.read()}", f"b = {s.read()}", f"r = (a + b) & {MASKS[size]:#x}")
    if d.kind == "mem":      # the store may fault: do it before touching registers
        d.write("r")
        s.write("a")
    else:                    # xadd r, r with the same register ends with the sum
        s.write("a")
        d.write("r")
    g.emit(f"E.lf = ({kind(OP_ADD, size)}, a, b, r)")


@handles(M.CMPXCHG)
def _cmpxchg(g):
    d = g.op(0)
    size = d.size
    s = g.op(1, size)
    mask = MASKS[size]
    acc = "R[0]" if size == 4 else f"(R[0] & {mask:#x})"
    g.emit(f"a = {d.read()}", f"b = {s.read()}", f"acc = {acc}", f"r = (acc - a) & {mask:#x}")
    with g.block("if acc == a:"):
        d.write("b")
    with g.block("else:"):
        # The destination is written back even when the compare fails (a locked RMW on real CPUs).
        if d.kind == "mem":
            d.write("a")
        if size == 4:
            g.emit("R[0] = a")
        elif size == 2:
            g.emit("R[0] = R[0] & 0xFFFF0000 | a")
        else:
            g.emit("R[0] = R[0] & 0xFFFFFF00 | a")
    g.emit(f"E.lf = ({kind(OP_SUB, size)}, acc, a, r)")


@handles(M.CMPXCHG8B)
def _cmpxchg8b(g):
    d = g.op(0)
    if d.kind != "mem":
        raise Invalid()
    o = d.addr()
    seg = d.segk()
    g.emit(f"lo = rd4({seg}, {o})", f"hi = rd4({seg}, ({o} + 4) & 0xFFFFFFFF)",
           "if lo == R[0] and hi == R[2]:",
           f"    M.check_write({seg}, {o}, 8)",
           f"    wr4({seg}, {o}, R[3])", f"    wr4({seg}, ({o} + 4) & 0xFFFFFFFF, R[1])",
           "    E.lf = (0, 0, 0, arith(E.lf) | 0x40)",
           "else:",
           f"    M.check_write({seg}, {o}, 8)",
           f"    wr4({seg}, {o}, lo)", f"    wr4({seg}, ({o} + 4) & 0xFFFFFFFF, hi)",
           "    R[0] = lo", "    R[2] = hi",
           "    E.lf = (0, 0, 0, arith(E.lf) & ~0x40)")

