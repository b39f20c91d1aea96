"""RFLAGS bits the Intel SDM leaves undefined (vol. 2, each instruction's "Flags Affected"
section) where iced-x86's static tables cannot say it: the count-dependent rules of the
shifts and rotates, used by the tracker (``undefined.py``) at run time, and a few family
masks for the random-sequence generator (``test_kernel_sequences.py``).

An emulator may leave any value in an undefined flag, and the kernel's emulator computes
most flags by running the host's own instruction (so it shows whatever this CPU does);
comparing those bits would test the host CPU, not the emulator.
"""

from __future__ import annotations

from pykvm.x86.bits import FLAG_AF, FLAG_CF, FLAG_OF, FLAG_PF, FLAG_SF, FLAG_ZF

CF, PF, AF, ZF, SF, OF = FLAG_CF, FLAG_PF, FLAG_AF, FLAG_ZF, FLAG_SF, FLAG_OF
ARITH = CF | PF | AF | ZF | SF | OF

# MUL/IMUL: "The SF, ZF, AF, and PF flags are undefined."
MUL = SF | ZF | AF | PF
# BT/BTS/BTR/BTC: "The ZF flag is unaffected. The OF, SF, AF, and PF flags are undefined."
BT = OF | SF | AF | PF
# BSF/BSR: "The ZF flag is set to 1 if the source operand is 0; otherwise, the ZF flag is
# cleared. The CF, OF, SF, AF, and PF flags are undefined."
BSF = CF | OF | SF | AF | PF


def shift(op: str, count: int, width: int) -> int:
    """Undefined flags after SHL/SAL/SHR/SAR/ROL/ROR/RCL/RCR/SHLD/SHRD of a ``width``-bit
    operand by ``count`` (before masking), from the SDM's SAL/SAR/SHL/SHR, RCL/RCR/ROL/ROR
    and SHLD/SHRD pages."""
    masked = count & 0x1F
    if op in ("rcl", "rcr"):
        # "the OF flag is defined only for the 1-bit rotates; it is undefined in all other
        # cases (except RCL and RCR instructions only: a zero-bit rotate does nothing...)"
        return OF if masked not in (0, 1) else 0
    if op in ("rol", "ror"):
        return OF if masked not in (0, 1) else 0
    if masked == 0:
        return 0   # "If the count is 0, the flags are not affected."
    undefined = AF   # "For a non-zero count, the AF flag is undefined."
    if masked != 1:
        undefined |= OF   # "The OF flag is affected only for 1-bit shifts ... otherwise undefined"
    if op in ("shl", "sal", "shr") and masked >= width:
        # "[CF] is undefined for SHL and SHR instructions where the count is greater than or
        # equal to the size (in bits) of the destination operand."
        undefined |= CF
    if op in ("shld", "shrd") and masked > width:
        # "If the count is greater than the operand size, the result is undefined"
        # (flags included: only possible for 16-bit operands).
        undefined |= ARITH
    return undefined
