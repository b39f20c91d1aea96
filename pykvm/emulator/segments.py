"""Segment-register loads (real and protected mode) and the per-segment access bounds.

Real mode: a load changes only the selector and base (``selector << 4``); the limit and
attributes in the hidden descriptor cache survive, which is what makes "unreal" mode work.
Protected mode: the descriptor is read from the GDT/LDT and checked as the SDM's MOV/POP
Sreg pseudo-code says (null selector rules, type, RPL/DPL against CPL, present), the
accessed bit is set in memory, and the cache gets the decoded fields.
"""

from __future__ import annotations

from pykvm.emulator.faults import CpuFault
from pykvm.x86.state import CS, LDTR, SS, Segment
from pykvm.x86 import descriptors as D
from pykvm.x86.bits import CR0_PE, EFER_LMA, EXC_GP, EXC_NP, EXC_SS


def refresh_bounds(emu, i: int) -> None:
    """Recompute the MMU's base / offset bounds for segment register ``i`` (ES..GS)."""
    st = emu.state
    seg = st.seg[i]
    m = emu.mmu
    m.sbase[i] = seg.base & 0xFFFFFFFF
    if not st.cr0 & CR0_PE:
        m.slo[i] = 0
        m.rhi[i] = m.whi[i] = seg.limit
        return
    if st.efer & EFER_LMA and st.seg[CS].l:
        # 64-bit code: no limit checks, FS/GS bases only. (Not executed here; kept consistent.)
        m.slo[i] = 0
        m.rhi[i] = m.whi[i] = 0xFFFFFFFFFFFFFFFF
        if i not in (4, 5):
            m.sbase[i] = 0
        return
    if seg.unusable or not seg.present:
        m.slo[i] = 0
        m.rhi[i] = m.whi[i] = -1
        return
    t = seg.type
    if t & D.TYPE_CODE:
        m.slo[i] = 0
        m.rhi[i] = seg.limit if t & D.TYPE_CODE_READABLE else -1
        m.whi[i] = -1
        return
    if t & D.TYPE_DATA_EXPAND_DOWN:
        lo, hi = seg.limit + 1, 0xFFFFFFFF if seg.db else 0xFFFF
    else:
        lo, hi = 0, seg.limit
    m.slo[i] = lo
    m.rhi[i] = hi
    m.whi[i] = hi if t & D.TYPE_DATA_WRITABLE else -1


def segment_from_descriptor(selector: int, d: D.Descriptor) -> Segment:
    return Segment(selector=selector, base=d.base, limit=d.limit, type=d.type | D.TYPE_ACCESSED,
                   present=d.present, dpl=d.dpl, db=d.db, s=d.s, l=d.l, g=d.g, avl=d.avl, unusable=0)


def read_descriptor(emu, selector: int, vector: int = EXC_GP, ext: int = 0):
    """Fetch the 8-byte descriptor for ``selector``; returns (raw, linear address).

    Raises ``vector`` (#GP, or #TS for task-state checks) with the selector as error code when
    the index is beyond the GDT/LDT limit.
    """
    st = emu.state
    index = selector & 0xFFF8
    if selector & 4:
        ldt = st.seg[LDTR]
        if ldt.unusable or not ldt.present or index + 7 > ldt.limit:
            raise CpuFault(vector, (selector & 0xFFFC) | ext)
        base = ldt.base
    else:
        if index + 7 > st.gdt.limit:
            raise CpuFault(vector, (selector & 0xFFFC) | ext)
        base = st.gdt.base
    addr = (base + index) & 0xFFFFFFFF
    return emu.mmu.lin_read(addr, 8, True), addr


def set_accessed(emu, addr: int, raw: int) -> None:
    """Set the descriptor's accessed bit (type bit 0, byte 5 bit 0) if it is clear."""
    if not raw >> 40 & 1:
        emu.mmu.lin_write(addr + 5, 1, (raw >> 40 & 0xFF) | 1, True)


def load_data_segment(emu, i: int, selector: int) -> None:
    """MOV/POP/LxS into ES, SS, DS, FS or GS."""
    st = emu.state
    selector &= 0xFFFF
    if not st.cr0 & CR0_PE:
        seg = st.seg[i]
        st.seg[i] = Segment(selector, selector << 4, seg.limit, seg.type, 1, seg.dpl, seg.db, seg.s,
                            seg.l, seg.g, seg.avl, 0)
        refresh_bounds(emu, i)
        return
    cpl = st.cpl
    rpl = selector & 3
    if selector & 0xFFFC == 0:
        if i == SS:
            # A null SS is only legal in 64-bit mode at CPL < 3; here it is #GP(0).
            raise CpuFault(EXC_GP, 0)
        st.seg[i] = Segment(selector=selector, base=0, limit=0, type=0, present=0, dpl=0, db=0, s=0,
                            l=0, g=0, avl=0, unusable=1)
        refresh_bounds(emu, i)
        return
    raw, addr = read_descriptor(emu, selector)
    d = D.decode_descriptor(raw)
    err = selector & 0xFFFC
    if i == SS:
        if rpl != cpl or not d.is_data or not d.type & D.TYPE_DATA_WRITABLE or d.dpl != cpl:
            raise CpuFault(EXC_GP, err)
        if not d.present:
            raise CpuFault(EXC_SS, err)
    else:
        if not d.s or (d.type & D.TYPE_CODE and not d.type & D.TYPE_CODE_READABLE):
            raise CpuFault(EXC_GP, err)
        if not (d.type & D.TYPE_CODE and d.type & D.TYPE_CODE_CONFORMING):
            if rpl > d.dpl or cpl > d.dpl:
                raise CpuFault(EXC_GP, err)
        if not d.present:
            raise CpuFault(EXC_NP, err)
    set_accessed(emu, addr, raw)
    st.seg[i] = segment_from_descriptor(selector, d)
    refresh_bounds(emu, i)


_CALL_GATES = (D.SYS_CALL_GATE16, D.SYS_CALL_GATE32)


def far_target(emu, selector: int, offset: int, jump: bool):
    """Where a protected-mode far JMP or CALL to ``selector:offset`` goes: straight to a code
    segment, or through a call gate (legacy mode). Returns (CS selector, descriptor, raw,
    address, EIP, size): ``size`` is the gate's push size (2 or 4), None without a gate. A TSS
    or a task gate (legacy mode) returns (None, the TSS selector): a task switch."""
    fetched = None
    if selector & 0xFFFC and not emu.state.efer & EFER_LMA:
        fetched = read_descriptor(emu, selector)
        raw = fetched[0]
        if not raw >> 44 & 1 and raw >> 40 & 0xF in _CALL_GATES:
            return _through_call_gate(emu, selector, D.decode_gate(raw), jump)
        from pykvm.emulator import tasks

        tss = tasks.task_selector(emu, selector, *fetched)
        if tss is not None:
            return None, tss
    d, raw, addr = check_code_segment(emu, selector, fetched=fetched)
    return selector, d, raw, addr, offset, None


def _through_call_gate(emu, selector: int, gate: D.Gate, jump: bool):
    """SDM JMP and CALL, "call gate": the gate's DPL must admit CPL and RPL, the gate be present,
    and its code segment be one CPL may reach (JMP: a non-conforming one of DPL = CPL only).
    A call to a more privileged level (a stack switch through the TSS) is not emulated: in
    non-PVM mode CPL is 0, so there is none."""
    cpl = emu.state.cpl
    if gate.dpl < cpl or gate.dpl < selector & 3:
        raise CpuFault(EXC_GP, selector & 0xFFFC)
    if not gate.present:
        raise CpuFault(EXC_NP, selector & 0xFFFC)
    target = gate.selector
    if target & 0xFFFC == 0:
        raise CpuFault(EXC_GP, 0)
    raw, addr = read_descriptor(emu, target)
    d = D.decode_descriptor(raw)
    err = target & 0xFFFC
    conforming = d.type & D.TYPE_CODE_CONFORMING
    if not d.is_code or d.dpl > cpl or jump and not conforming and d.dpl != cpl:
        raise CpuFault(EXC_GP, err)
    if not d.present:
        raise CpuFault(EXC_NP, err)
    if not conforming and d.dpl < cpl:
        raise NotImplementedError("a call gate to a more privileged level")
    return target, d, raw, addr, gate.offset, 4 if gate.type == D.SYS_CALL_GATE32 else 2


def check_code_segment(emu, selector: int, for_return: bool = False, ext: int = 0, fetched=None):
    """Validate a far JMP/CALL target code segment at the current CPL (no gates).

    Returns (descriptor, raw, address); ``fetched`` is (raw, address) when the caller has read
    the descriptor already. Call gates in IA-32e mode raise ``NotImplementedError`` so the
    emulator reports them as unemulated (``far_target`` takes the legacy-mode gates and TSSes).
    """
    st = emu.state
    if selector & 0xFFFC == 0:
        raise CpuFault(EXC_GP, ext)
    raw, addr = fetched or read_descriptor(emu, selector, ext=ext)
    d = D.decode_descriptor(raw)
    err = (selector & 0xFFFC) | ext
    if not d.s:
        # Only JMP and CALL go through gates or switch tasks; a return to a system descriptor
        # is an ordinary #GP(selector).
        if not for_return and d.type in (D.SYS_CALL_GATE16, D.SYS_CALL_GATE32, D.SYS_TASK_GATE,
                                         D.SYS_TSS16_AVAIL, D.SYS_TSS32_AVAIL):
            raise NotImplementedError("far transfer through an IA-32e call gate or task gate")
        raise CpuFault(EXC_GP, err)
    if not d.type & D.TYPE_CODE:
        raise CpuFault(EXC_GP, err)
    cpl = st.cpl
    rpl = selector & 3
    if for_return:
        if rpl < cpl:
            raise CpuFault(EXC_GP, err)
        if d.type & D.TYPE_CODE_CONFORMING:
            if d.dpl > rpl:
                raise CpuFault(EXC_GP, err)
        elif d.dpl != rpl:
            raise CpuFault(EXC_GP, err)
    elif d.type & D.TYPE_CODE_CONFORMING:
        if d.dpl > cpl:
            raise CpuFault(EXC_GP, err)
    elif rpl > cpl or d.dpl != cpl:
        raise CpuFault(EXC_GP, err)
    if not d.present:
        raise CpuFault(EXC_NP, err)
    if st.efer & EFER_LMA and d.l and d.db:
        raise CpuFault(EXC_GP, err)
    return d, raw, addr


def check_stack_segment(emu, selector: int, new_cpl: int, vector: int = EXC_GP, ext: int = 0):
    """Validate SS for a privilege change (return to outer level or inner stack from the TSS)."""
    if selector & 0xFFFC == 0:
        raise CpuFault(vector, ext)
    raw, addr = read_descriptor(emu, selector, vector, ext)
    d = D.decode_descriptor(raw)
    err = (selector & 0xFFFC) | ext
    if selector & 3 != new_cpl or not d.is_data or not d.type & D.TYPE_DATA_WRITABLE or d.dpl != new_cpl:
        raise CpuFault(vector, err)
    if not d.present:
        raise CpuFault(EXC_SS, err)
    return d, raw, addr


def null_outer_data_segments(emu, new_cpl: int) -> None:
    """After a return to an outer level, data segments more privileged than it become null."""
    st = emu.state
    for i in (0, 3, 4, 5):
        seg = st.seg[i]
        if seg.unusable:
            continue
        conforming_code = seg.type & D.TYPE_CODE and seg.type & D.TYPE_CODE_CONFORMING
        if not conforming_code and seg.dpl < new_cpl:
            st.seg[i] = Segment(selector=0, base=0, limit=0, type=0, present=0, dpl=0, db=0, s=0,
                                l=0, g=0, avl=0, unusable=1)
            refresh_bounds(emu, i)
