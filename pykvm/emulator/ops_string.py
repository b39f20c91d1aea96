"""Translation of the string instructions into calls of ``strings.string_op``."""

from __future__ import annotations

import iced_x86 as X

from pykvm.emulator import strings
from pykvm.emulator.codegen import CODE_NAMES, SEG_INDEX, STRING_DST_KINDS, STRING_SRC_KINDS, Unsupported

M = X.Mnemonic
OK = X.OpKind

_OPS = {
    M.MOVSB: (strings.MOVS, 1), M.MOVSW: (strings.MOVS, 2), M.MOVSD: (strings.MOVS, 4),
    M.STOSB: (strings.STOS, 1), M.STOSW: (strings.STOS, 2), M.STOSD: (strings.STOS, 4),
    M.LODSB: (strings.LODS, 1), M.LODSW: (strings.LODS, 2), M.LODSD: (strings.LODS, 4),
    M.CMPSB: (strings.CMPS, 1), M.CMPSW: (strings.CMPS, 2), M.CMPSD: (strings.CMPS, 4),
    M.SCASB: (strings.SCAS, 1), M.SCASW: (strings.SCAS, 2), M.SCASD: (strings.SCAS, 4),
    M.INSB: (strings.INS, 1), M.INSW: (strings.INS, 2), M.INSD: (strings.INS, 4),
    M.OUTSB: (strings.OUTS, 1), M.OUTSW: (strings.OUTS, 2), M.OUTSD: (strings.OUTS, 4),
}


def _string(g):
    ins = g.ins
    op, size = _OPS[ins.mnemonic]
    name = CODE_NAMES[ins.code]
    if ins.mnemonic in (M.MOVSD, M.CMPSD) and "xmm" in name.lower():
        raise Unsupported("SSE instruction")
    a32 = None
    for i in range(ins.op_count):
        kind = ins.op_kind(i)
        if kind in STRING_SRC_KINDS:
            a32 = STRING_SRC_KINDS[kind] == 4
        elif kind in STRING_DST_KINDS:
            a32 = STRING_DST_KINDS[kind] == 4
    if a32 is None:
        a32 = g.ctx.bitness == 32
    seg = SEG_INDEX.get(ins.memory_segment, 3)
    if op in (strings.CMPS, strings.SCAS):
        rep = strings.REP_E if ins.has_repe_prefix else strings.REP_NE if ins.has_repne_prefix else 0
    else:
        rep = strings.REP_E if ins.has_rep_prefix or ins.has_repne_prefix else 0
    emu = g.ctx.emu
    fn = strings.string_op
    if op in (strings.INS, strings.OUTS):
        # Port I/O ends the block, as IN/OUT do (a device may change the interrupt line).
        g.terminal = True
        nxt = g.next_eip

        def io():
            fn(emu, op, size, a32, seg, rep)
            return nxt
        return io

    def f():
        fn(emu, op, size, a32, seg, rep)
    return f


HANDLERS = {m: _string for m in _OPS}
