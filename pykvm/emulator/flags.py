"""Lazy arithmetic flags.

Most instructions set CF/PF/AF/ZF/SF/OF, and most of those values are never read: the
next instruction overwrites them. So an instruction only records *how* the flags would be
computed, as one tuple ``lf = (kind, a, b, res)`` stored on the emulator, and the six
flags are materialised only when something reads them (Jcc, SETcc, PUSHF, ...).

``kind`` is ``op << 3 | size`` (size in bytes: 1, 2, 4), or 0 (``KNOWN``) when ``res``
already holds the six flag bits. ``res`` is always the result truncated to ``size``.

- ADD: ``a + b`` (CF = carry out); SUB: ``a - b`` (also CMP and NEG as ``0 - b``);
- INC/DEC: ``a ± 1``; they preserve CF, so ``b`` is the lazy-flags tuple that was current
  before them (never itself an INC/DEC tuple: chains are collapsed, so CF is found in one step);
- RES: flags SF/ZF/PF come from ``res``, CF/OF/AF are given precomputed in ``b``
  (logic ops with ``b = 0``, shifts, multiplies, ADC/SBB).
"""

from __future__ import annotations

CF = 0x001
PF = 0x004
AF = 0x010
ZF = 0x040
SF = 0x080
OF = 0x800
ARITH = CF | PF | AF | ZF | SF | OF

KNOWN = 0
OP_ADD = 1
OP_SUB = 2
OP_INC = 3
OP_DEC = 4
OP_RES = 5

MASK = (0, 0xFF, 0xFFFF, 0, 0xFFFFFFFF, 0, 0, 0, 0xFFFFFFFFFFFFFFFF)
SIGN = (0, 0x80, 0x8000, 0, 0x80000000, 0, 0, 0, 0x8000000000000000)

# SIGNK[kind] = the sign bit for a lazy-flags kind (indexed by the whole kind, no shift needed).
SIGNK = tuple(SIGN[k & 7] for k in range(64))

# PARITY[b] = PF for a low result byte b (set when the number of 1 bits is even).
PARITY = tuple(PF if bin(i).count("1") % 2 == 0 else 0 for i in range(256))

# ZSP[b] for 8-bit results: ZF|SF|PF at once.
ZSP8 = tuple(PARITY[i] | (ZF if i == 0 else 0) | (SF if i & 0x80 else 0) for i in range(256))


def kind(op: int, size: int) -> int:
    return op << 3 | size


def arith(lf) -> int:
    """Materialise the six arithmetic flag bits from a lazy-flags tuple."""
    k, a, b, r = lf
    if not k:
        return r
    size = k & 7
    sign = SIGN[size]
    f = PARITY[r & 0xFF]
    if r == 0:
        f |= ZF
    elif r & sign:
        f |= SF
    op = k >> 3
    if op == OP_SUB:
        if a < b:
            f |= CF
        if (a ^ b) & (a ^ r) & sign:
            f |= OF
        return f | ((a ^ b ^ r) & AF)
    if op == OP_ADD:
        if r < a:
            f |= CF
        if (a ^ r) & (b ^ r) & sign:
            f |= OF
        return f | ((a ^ b ^ r) & AF)
    if op == OP_RES:
        return f | b
    if op == OP_INC:
        if r == sign:
            f |= OF
        if not r & 0xF:
            f |= AF
        return f | carry(b)
    # OP_DEC
    if r == sign - 1:
        f |= OF
    if r & 0xF == 0xF:
        f |= AF
    return f | carry(b)


def carry(lf) -> int:
    """CF alone (1 or 0), cheaper than materialising everything (ADC/SBB/RCL/RCR/INC read it)."""
    k, a, b, r = lf
    if not k:
        return r & CF
    op = k >> 3
    if op == OP_SUB:
        return 1 if a < b else 0
    if op == OP_ADD:
        return 1 if r < a else 0
    if op == OP_RES:
        return b & CF
    return carry(b)


# Condition codes in x86 encoding order (the low nibble of Jcc/SETcc/CMOVcc opcodes).
def _c_o(lf):
    return bool(arith(lf) & OF)


def _c_b(lf):
    k, a, b, r = lf
    if k >> 3 == OP_SUB:
        return a < b
    return bool(carry(lf))


def _c_e(lf):
    if lf[0]:
        return lf[3] == 0
    return bool(lf[3] & ZF)


def _c_be(lf):
    k, a, b, r = lf
    if k >> 3 == OP_SUB:
        return a <= b
    return bool(arith(lf) & (CF | ZF))


def _c_s(lf):
    k = lf[0]
    if k:
        return bool(lf[3] & SIGN[k & 7])
    return bool(lf[3] & SF)


def _c_p(lf):
    return bool(arith(lf) & PF)


def _c_l(lf):
    k, a, b, r = lf
    if k >> 3 == OP_SUB:
        s = SIGN[k & 7]
        return (a ^ s) < (b ^ s)
    f = arith(lf)
    return bool(f & SF) != bool(f & OF)


def _c_le(lf):
    k, a, b, r = lf
    if k >> 3 == OP_SUB:
        s = SIGN[k & 7]
        return (a ^ s) <= (b ^ s)
    f = arith(lf)
    return bool(f & ZF) or bool(f & SF) != bool(f & OF)


def _neg(fn):
    def negated(lf):
        return not fn(lf)
    negated.__name__ = "not" + fn.__name__
    return negated


COND = (_c_o, _neg(_c_o), _c_b, _neg(_c_b), _c_e, _neg(_c_e), _c_be, _neg(_c_be),
        _c_s, _neg(_c_s), _c_p, _neg(_c_p), _c_l, _neg(_c_l), _c_le, _neg(_c_le))
