"""ALU operations too long to inline into a template: shifts, rotates, multiply, divide, BCD.

Each returns the result and a lazy-flags tuple (see ``flags``) so templates stay short.
Operands are unsigned and already truncated to ``size`` bytes; counts are already masked
by the caller where the SDM masks them (``& 0x1F``). Flag values the SDM leaves undefined
follow what current Intel CPUs (and the kernel's emulator) produce where that is known,
else a documented choice.
"""

from __future__ import annotations

from pykvm.emulator.faults import CpuFault
from pykvm.emulator.flags import AF, CF, KNOWN, OF, OP_RES, PARITY, SF, ZF, arith, carry
from pykvm.x86.bits import EXC_DE

_M = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


def sx(v: int, size: int) -> int:
    """Sign-extend a ``size``-byte value to a Python int."""
    bits = size * 8
    return v - (1 << bits) if v >> (bits - 1) & 1 else v


def _res(size, extra, r):
    return (OP_RES << 3 | size, 0, extra, r)


def shl(a, c, size):
    bits = size * 8
    full = a << c
    r = full & _M[size]
    cf = (full >> bits) & 1
    of = ((r >> (bits - 1)) & 1) ^ cf
    return r, _res(size, cf | (of << 11), r)


def shr(a, c, size):
    bits = size * 8
    r = a >> c
    cf = (a >> (c - 1)) & 1
    of = (a >> (bits - 1)) & 1 if c == 1 else 0
    return r, _res(size, cf | (of << 11), r)


def sar(a, c, size):
    sa = sx(a, size)
    r = (sa >> c) & _M[size]
    cf = (sa >> (c - 1)) & 1 if c <= size * 8 else (1 if sa < 0 else 0)
    return r, _res(size, cf, r)


def _with_cf_of(lf, cf, of):
    return (KNOWN, 0, 0, (arith(lf) & ~(CF | OF)) | cf | (of << 11))


def rol(a, c, size, lf):
    bits = size * 8
    n = c % bits
    r = ((a << n) | (a >> (bits - n))) & _M[size] if n else a
    cf = r & 1
    return r, _with_cf_of(lf, cf, ((r >> (bits - 1)) & 1) ^ cf)


def ror(a, c, size, lf):
    bits = size * 8
    n = c % bits
    r = ((a >> n) | (a << (bits - n))) & _M[size] if n else a
    cf = (r >> (bits - 1)) & 1
    return r, _with_cf_of(lf, cf, cf ^ ((r >> (bits - 2)) & 1))


def rcl(a, c, size, lf):
    """RCL; ``c`` masked by 0x1F and nonzero. Returns (r, lf); lf unchanged if the rotate is a no-op."""
    bits = size * 8
    n = c % (bits + 1)
    cf = carry(lf)
    if not n:
        return a, lf
    x = (cf << bits) | a
    wide = (1 << (bits + 1)) - 1
    x = ((x << n) | (x >> (bits + 1 - n))) & wide
    r = x & _M[size]
    cf = x >> bits
    return r, _with_cf_of(lf, cf, ((r >> (bits - 1)) & 1) ^ cf)


def rcr(a, c, size, lf):
    bits = size * 8
    n = c % (bits + 1)
    cf = carry(lf)
    if not n:
        return a, lf
    x = (cf << bits) | a
    wide = (1 << (bits + 1)) - 1
    x = ((x >> n) | (x << (bits + 1 - n))) & wide
    r = x & _M[size]
    cf = x >> bits
    return r, _with_cf_of(lf, cf, ((r >> (bits - 1)) ^ (r >> (bits - 2))) & 1)


def shld(d, s, c, size):
    """SHLD with ``c`` = count & 0x1F, nonzero. For 16-bit counts above 16 (undefined in the SDM)
    the bits come from the 48-bit value d:s:d (a documented choice; the result is undefined)."""
    bits = size * 8
    if c > bits:
        x = (d << 32) | (s << 16) | d
        r = (x >> (32 - c)) & 0xFFFF
        cf = (x >> (48 - c)) & 1
    else:
        r = ((d << c) | (s >> (bits - c))) & _M[size]
        cf = (d >> (bits - c)) & 1
    of = ((r ^ d) >> (bits - 1)) & 1
    return r, _res(size, cf | (of << 11), r)


def shrd(d, s, c, size):
    bits = size * 8
    if c > bits:
        x = (d << 32) | (s << 16) | d
        r = (x >> c) & 0xFFFF
        cf = (x >> (c - 1)) & 1
    else:
        r = ((d >> c) | (s << (bits - c))) & _M[size]
        cf = (d >> (c - 1)) & 1
    of = ((r ^ d) >> (bits - 1)) & 1
    return r, _res(size, cf | (of << 11), r)


def mul(a, b, size):
    """Unsigned multiply: returns (low, high, lf). CF=OF=high half nonzero."""
    p = a * b
    bits = size * 8
    lo = p & _M[size]
    hi = p >> bits
    return lo, hi, _res(size, CF | OF if hi else 0, lo)


def imul(a, b, size):
    """Signed multiply of two ``size``-byte values: (low, high, lf). CF=OF=product does not fit."""
    p = sx(a, size) * sx(b, size)
    bits = size * 8
    lo = p & _M[size]
    hi = (p >> bits) & _M[size]
    return lo, hi, _res(size, 0 if sx(lo, size) == p else CF | OF, lo)


def div(n, d, size):
    """Unsigned divide of a 2*size-byte dividend: (quotient, remainder); #DE on zero/overflow."""
    if d == 0:
        raise CpuFault(EXC_DE)
    q, r = divmod(n, d)
    if q > _M[size]:
        raise CpuFault(EXC_DE)
    return q, r


def idiv(n, d, size):
    """Signed divide (quotient truncated toward zero); ``n`` is the 2*size-byte dividend."""
    if d == 0:
        raise CpuFault(EXC_DE)
    n = sx(n, size * 2)
    d = sx(d, size)
    q = abs(n) // abs(d)
    if (n < 0) != (d < 0):
        q = -q
    r = n - q * d
    bits = size * 8
    if not -(1 << (bits - 1)) <= q < (1 << (bits - 1)):
        raise CpuFault(EXC_DE)
    return q & _M[size], r & _M[size]


def bsf(v):
    return (v & -v).bit_length() - 1


def bsr(v):
    return v.bit_length() - 1


def zf_only(lf, zero):
    """Flags after BSF/BSR: ZF from the source; the others (undefined) keep their old values."""
    f = arith(lf) & ~ZF
    return (KNOWN, 0, 0, f | (ZF if zero else 0))


def count_flags(lf, cf, zero):
    """Flags after TZCNT/LZCNT: CF = the source was 0, ZF = the count is 0; the others
    (undefined) keep their old values."""
    f = arith(lf) & ~(CF | ZF)
    return (KNOWN, 0, 0, f | (CF if cf else 0) | (ZF if zero else 0))


def cf_only(lf, cf):
    """Flags after BT/BTS/BTR/BTC: CF = the bit; the others keep their values."""
    return (KNOWN, 0, 0, (arith(lf) & ~CF) | cf)


def szp(r, size):
    f = PARITY[r & 0xFF]
    if r == 0:
        f |= ZF
    elif r >> (size * 8 - 1) & 1:
        f |= SF
    return f


def daa(al, lf):
    f = arith(lf)
    old_al, old_cf = al, f & CF
    cf = 0
    if (al & 0xF) > 9 or f & AF:
        al = (al + 6) & 0xFF
        cf = old_cf or (old_al + 6 > 0xFF)
        af = AF
    else:
        af = 0
    if old_al > 0x99 or old_cf:
        al = (al + 0x60) & 0xFF
        cf = 1
    else:
        cf = 0 if not cf else 1
    return al, (KNOWN, 0, 0, szp(al, 1) | af | (CF if cf else 0) | (f & OF))


def das(al, lf):
    f = arith(lf)
    old_al, old_cf = al, f & CF
    cf = 0
    if (al & 0xF) > 9 or f & AF:
        cf = old_cf or old_al < 6
        al = (al - 6) & 0xFF
        af = AF
    else:
        af = 0
    if old_al > 0x99 or old_cf:
        al = (al - 0x60) & 0xFF
        cf = 1
    return al, (KNOWN, 0, 0, szp(al, 1) | af | (CF if cf else 0) | (f & OF))


def aaa(ax, lf, sub):
    """AAA (sub=False) / AAS (sub=True) on AX."""
    f = arith(lf)
    if (ax & 0xF) > 9 or f & AF:
        # SDM: AAA does AX += 106h (the +6 may carry into AH); AAS does AX -= 6, AH -= 1.
        if sub:
            ax = (ax - 6) & 0xFFFF
            ax = (ax - 0x100) & 0xFFFF
        else:
            ax = (ax + 0x106) & 0xFFFF
        ax &= 0xFF0F
        return ax, (KNOWN, 0, 0, (f & ~(CF | AF)) | CF | AF)
    return ax & 0xFF0F, (KNOWN, 0, 0, f & ~(CF | AF))


def _crc32c_table() -> tuple:
    poly = 0x82F63B78          # CRC-32C (Castagnoli), bit-reflected, as the CRC32 instruction uses
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (poly if c & 1 else 0)
        table.append(c)
    return tuple(table)


CRC32C = _crc32c_table()


def crc32c(crc: int, value: int, size: int) -> int:
    """CRC32 r32, r/m: accumulate the ``size`` bytes of ``value`` (least significant first)."""
    for _ in range(size):
        crc = CRC32C[(crc ^ value) & 0xFF] ^ (crc >> 8)
        value >>= 8
    return crc


def popcnt_flags(source: int):
    """Flags after POPCNT: ZF = the source was 0; OF, SF, AF, CF, PF cleared."""
    return (KNOWN, 0, 0, 0 if source else ZF)
