"""String instructions (MOVS, STOS, LODS, CMPS, SCAS, INS, OUTS) with REP/REPE/REPNE.

Element by element they follow the SDM exactly: registers are updated after each element,
so a fault in the middle leaves (E)SI/(E)DI/(E)CX describing the work done and RIP on the
instruction, which then restarts. The same makes a long REP interruptible: between elements
(and bulk chunks) it stops for a pending event or interrupt and resumes later. REP MOVS and REP STOS on RAM are done in bulk: one
slice assignment per page-sized chunk (after the segment limit, page walk and
self-modifying-code checks for that chunk). Overlapping MOVS chunks fall back to single
elements, because x86 copies element by element and a memmove would differ.
"""

from __future__ import annotations

from pykvm.emulator.faults import CpuFault, Preempted
from pykvm.emulator.flags import OP_SUB, arith
from pykvm.x86 import paging
from pykvm.x86.bits import FLAG_DF

MOVS, STOS, LODS, CMPS, SCAS, INS, OUTS = range(7)
PREEMPT_CHECK = 1024    # elements between looks at the run loop's events (a few hundred µs at most)
REP_NONE, REP_E, REP_NE = 0, 1, 2
ES = 0
_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


def string_op(emu, op: int, size: int, a32: bool, seg: int, rep: int) -> None:
    R = emu.R
    amask = 0xFFFFFFFF if a32 else 0xFFFF
    if op in (INS, OUTS):
        emu.check_io(R[2] & 0xFFFF, size)
    if rep:
        count = R[1] & amask
        if not count:
            return
        if op in (MOVS, STOS) and count > 1:
            count = _bulk(emu, op, size, amask, seg, count)
            if not count:
                return
    else:
        count = 1
    if rep and op in (CMPS, SCAS):
        # SDM (REP): a fault during REPE/REPNE CMPS or SCAS restores EFLAGS to their value
        # before the instruction (the registers keep the progress of completed iterations).
        saved = emu.lf
        try:
            _elements(emu, op, size, amask, seg, rep, count)
        except CpuFault:
            emu.lf = saved
            raise
        return
    _elements(emu, op, size, amask, seg, rep, count)


def _elements(emu, op: int, size: int, amask: int, seg: int, rep: int, count: int) -> None:
    """The string operation one element at a time, ``count`` elements (1 without REP); every
    ``PREEMPT_CHECK`` elements a REP may stop for an event (``Preempted``)."""
    R = emu.R
    back = emu.state.rflags & FLAG_DF
    step = -size if back else size
    mmu = emu.mmu
    rdn, wrn = mmu.rdn, mmu.wrn
    mask = _MASK[size]
    bus = emu.bus
    until_check = PREEMPT_CHECK
    while True:
        si = R[6] & amask
        di = R[7] & amask
        if op == MOVS:
            wrn(ES, di, size, rdn(seg, si, size))
            _set(R, 6, si + step, amask)
            _set(R, 7, di + step, amask)
        elif op == STOS:
            wrn(ES, di, size, R[0] & mask)
            _set(R, 7, di + step, amask)
        elif op == LODS:
            v = rdn(seg, si, size)
            R[0] = v if size == 4 else (R[0] & ~mask & 0xFFFFFFFF) | v
            _set(R, 6, si + step, amask)
        elif op == SCAS:
            b = rdn(ES, di, size)
            a = R[0] & mask
            emu.lf = (OP_SUB << 3 | size, a, b, (a - b) & mask)
            _set(R, 7, di + step, amask)
        elif op == CMPS:
            a = rdn(seg, si, size)
            b = rdn(ES, di, size)
            emu.lf = (OP_SUB << 3 | size, a, b, (a - b) & mask)
            _set(R, 6, si + step, amask)
            _set(R, 7, di + step, amask)
        elif op == INS:
            mmu.check_write(ES, di, size)
            wrn(ES, di, size, bus.pio_read(R[2] & 0xFFFF, size) & mask)
            _set(R, 7, di + step, amask)
        else:  # OUTS
            bus.pio_write(R[2] & 0xFFFF, size, rdn(seg, si, size))
            _set(R, 6, si + step, amask)
        if not rep:
            return
        count -= 1
        _set(R, 1, count, amask)
        if not count:
            return
        if op in (CMPS, SCAS):
            zf = arith(emu.lf) & 0x40
            if (rep == REP_E and not zf) or (rep == REP_NE and zf):
                return
        until_check -= 1
        if not until_check:
            until_check = PREEMPT_CHECK
            if emu.preempt_requested():
                raise Preempted()


def _set(R, i, value, amask):
    if amask == 0xFFFFFFFF:
        R[i] = value & 0xFFFFFFFF
    else:
        R[i] = (R[i] & 0xFFFF0000) | (value & 0xFFFF)


def _ram_offset(emu, lin: int, write: bool):
    """RAM offset of ``lin`` after a page walk (None if it is not RAM); handles code pages."""
    mmu = emu.mmu
    acc = paging.PF_WRITE if write else 0
    pa = mmu.translate(lin, acc | paging.PF_USER if mmu.user else mmu.explicit(acc))
    mem = emu.memory
    off = pa - mem.base
    if not 0 <= off < mem.size or mem.hole_start <= pa < mem.hole_end:
        return None
    return off


def _code_check(emu, ram_off: int, nbytes: int) -> None:
    """Drop translated blocks that a bulk store over [ram_off, ram_off+nbytes) overwrites."""
    mmu = emu.mmu
    pa = ram_off + emu.memory.base
    page = pa >> 12
    if page in mmu.code_pages:
        from pykvm.emulator.mmu import line_mask
        if mmu.code_lines.get(page, 0) & line_mask(pa & 0xFFF, nbytes):
            mmu.on_code_write(page, pa & 0xFFF, nbytes)


def _room(emu, seg: int, ptr: int, size: int, amask: int, back: bool, write: bool) -> tuple[int, int]:
    """(linear address of the element at ``ptr``, how many elements fit in this chunk)."""
    mmu = emu.mmu
    hi = mmu.whi[seg] if write else mmu.rhi[seg]
    lo = mmu.slo[seg]
    if ptr < lo or ptr + size - 1 > hi:
        raise mmu.seg_fault(seg, ptr, size, write)
    lin = (mmu.sbase[seg] + ptr) & 0xFFFFFFFF
    in_page = lin & 0xFFF
    if in_page + size > 0x1000:
        return lin, 0
    if back:
        n = min(in_page // size + 1, ptr // size + 1, (ptr - lo) // size + 1)
    else:
        n = min((0x1000 - in_page) // size, (amask - ptr) // size + 1, (hi - ptr + 1) // size)
    return lin, n


def _bulk(emu, op: int, size: int, amask: int, seg: int, count: int) -> int:
    """Do as much of a REP MOVS/STOS as possible with slice copies; return the count left."""
    R = emu.R
    view = emu.memory.view
    back = bool(emu.state.rflags & FLAG_DF)
    pattern = (R[0] & _MASK[size]).to_bytes(size, "little") if op == STOS else None
    while count > 1:
        # Same order of checks as the first element would do them: the load (segment, page
        # walk, accessed bit) before the store, so a fault leaves the same traces.
        if op == MOVS:
            si = R[6] & amask
            slin, ns = _room(emu, seg, si, size, amask, back, False)
            soff = _ram_offset(emu, slin, False)
            if soff is None:
                return count
        di = R[7] & amask
        dlin, n = _room(emu, ES, di, size, amask, back, True)
        if op == MOVS:
            n = min(n, ns)
        n = min(n, count)
        if n < 2:
            return count
        doff = _ram_offset(emu, dlin, True)
        if doff is None:
            return count
        nbytes = n * size
        dstart = doff - (nbytes - size if back else 0)
        _code_check(emu, dstart, nbytes)
        if op == STOS:
            view[dstart:dstart + nbytes] = pattern * n
        else:
            sstart = soff - (nbytes - size if back else 0)
            if sstart < dstart + nbytes and dstart < sstart + nbytes:
                return count   # overlapping: element by element
            view[dstart:dstart + nbytes] = view[sstart:sstart + nbytes]
            _set(R, 6, si - nbytes if back else si + nbytes, amask)
        _set(R, 7, di - nbytes if back else di + nbytes, amask)
        count -= n
        _set(R, 1, count, amask)
        if emu.preempt_requested():
            raise Preempted()
    return count

