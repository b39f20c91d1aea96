"""Task switches (SDM vol. 3, 8.3): a far CALL or JMP to a TSS or a task gate, an interrupt or
exception through a task gate, and IRET with EFLAGS.NT set (the return to the previous task).

The order is the SDM's. Everything that can fault in the old task's context is checked first:
the new TSS descriptor (type, busy bit, present, limit of at least 0x67), the whole new TSS
read. Then the old task's dynamic state goes into its TSS (EIP, EFLAGS, the general registers,
the segment selectors), the busy bits and the back link change as the source of the switch
says, TR and CR0.TS are loaded, and from there on the new task runs: CR3, EIP, EFLAGS and the
registers come from its TSS, then LDTR and the segment registers are loaded and checked, and a
fault in that (#TS, #NP, #SS) is delivered in the new task, before its first instruction, as
is the error code of an exception that switched tasks. The TSS's debug trap flag (T) raises #DB
after the switch.

Only 32-bit TSSes are emulated, and only tasks at CPL 0: a task at CPL 3 or in virtual-8086
mode would run in user mode, which PVM allows only in PVM mode.
"""

from __future__ import annotations

from pykvm.emulator import segments
from pykvm.emulator.faults import CpuFault
from pykvm.x86 import descriptors as D
from pykvm.x86.bits import (CR0_PG, CR0_TS, EXC_DB, EXC_GP, EXC_NP, EXC_SS, EXC_TS, FLAG_FIXED, FLAG_NT,
                            FLAG_VM)
from pykvm.x86.state import CS, LDTR, SS, TR, Segment

CALL, JMP, IRET, INTERRUPT = "call", "jmp", "iret", "interrupt"
TSS32_MIN_LIMIT = 0x67
_EIP, _EFLAGS, _EAX, _ES, _LDT, _T = 0x20, 0x24, 0x28, 0x48, 0x60, 0x64
_BACK_LINK, _CR3 = 0x00, 0x1C
_BUSY = 2                             # type bit 1 of a TSS descriptor
_DATA_ORDER = (0, 3, 4, 5)            # ES, DS, FS, GS, loaded after CS and SS


def task_selector(emu, selector: int, raw: int, addr: int) -> int | None:
    """The TSS a far JMP or CALL to ``selector`` switches to, or None if it names no TSS or task
    gate. Checks the SDM's JMP/CALL rules: DPL >= CPL and >= RPL, present; a task gate's TSS
    selector must be in the GDT."""
    if raw >> 44 & 1:
        return None
    kind = raw >> 40 & 0xF
    if kind not in (D.SYS_TASK_GATE, D.SYS_TSS16_AVAIL, D.SYS_TSS32_AVAIL, D.SYS_TSS16_BUSY, D.SYS_TSS32_BUSY):
        return None
    dpl, present = raw >> 45 & 3, raw >> 47 & 1
    err = selector & 0xFFFC
    if dpl < emu.state.cpl or dpl < selector & 3:
        raise CpuFault(EXC_GP, err)
    if kind != D.SYS_TASK_GATE:
        if kind & _BUSY:
            raise CpuFault(EXC_GP, err)
        if not present:
            raise CpuFault(EXC_NP, err)
        return selector
    if not present:
        raise CpuFault(EXC_NP, err)
    tss = raw >> 16 & 0xFFFF
    if tss & 4:
        raise CpuFault(EXC_GP, tss & 0xFFFC)
    return tss


def switch(emu, selector: int, source: str, return_eip: int, error_code: int | None = None,
           ext: int = 0) -> tuple[int, int]:
    """Switch to the task whose TSS ``selector`` names; the old task resumes at ``return_eip``.
    Returns the linear address and size of the old task's saved EFLAGS image."""
    st = emu.state
    mmu = emu.mmu
    bad = EXC_GP if source in (CALL, JMP) else EXC_TS
    err = (selector & 0xFFFC) | ext
    if selector & 4:
        raise CpuFault(bad, err)
    raw, addr = segments.read_descriptor(emu, selector, bad, ext)
    d = D.decode_descriptor(raw)
    if d.s or d.type not in (D.SYS_TSS16_AVAIL, D.SYS_TSS32_AVAIL, D.SYS_TSS16_BUSY, D.SYS_TSS32_BUSY):
        raise CpuFault(bad, err)
    if bool(d.type & _BUSY) != (source == IRET):
        raise CpuFault(bad, err)
    if not d.present:
        raise CpuFault(EXC_NP, err)
    if not d.type & 8:
        raise NotImplementedError("a task switch to a 16-bit TSS")
    if d.limit < TSS32_MIN_LIMIT:
        raise CpuFault(EXC_TS, err)
    old = st.seg[TR]
    if not old.type & 8:
        raise NotImplementedError("a task switch from a 16-bit TSS")
    read, write = mmu.lin_read, mmu.lin_write
    new = [read((d.base + off) & 0xFFFFFFFF, 4, True) for off in range(0, TSS32_MIN_LIMIT + 1, 4)]

    # The old task: its busy bit, then its state into its TSS.
    flags = emu.get_flags()
    if source == IRET:
        flags &= ~FLAG_NT
    if source in (JMP, IRET):
        old_raw, old_addr = segments.read_descriptor(emu, old.selector, EXC_TS, ext)
        write(old_addr + 5, 1, (old_raw >> 40 & 0xFF) & ~_BUSY, True)
    base = old.base
    write((base + _EIP) & 0xFFFFFFFF, 4, return_eip & 0xFFFFFFFF, True)
    write((base + _EFLAGS) & 0xFFFFFFFF, 4, flags & 0xFFFFFFFF, True)
    for i in range(8):
        write((base + _EAX + 4 * i) & 0xFFFFFFFF, 4, emu.R[i] & 0xFFFFFFFF, True)
    for i in range(6):
        write((base + _ES + 4 * i) & 0xFFFFFFFF, 2, st.seg[i].selector, True)

    # The new task: back link and busy bit, TR, then its state.
    new_flags = new[_EFLAGS // 4]
    if source in (CALL, INTERRUPT):
        write((d.base + _BACK_LINK) & 0xFFFFFFFF, 2, old.selector, True)
        new_flags |= FLAG_NT
    if source != IRET:
        write(addr + 5, 1, (raw >> 40 & 0xFF) | _BUSY, True)
    st.seg[TR] = Segment(selector=selector, base=d.base, limit=d.limit, type=d.type | _BUSY, present=1,
                         dpl=d.dpl, db=d.db, s=0, l=0, g=d.g, avl=d.avl, unusable=0)
    st.cr0 |= CR0_TS
    if new_flags & FLAG_VM:
        raise NotImplementedError("a task switch to virtual-8086 mode")
    if new[_ES // 4 + CS] & 3:
        raise NotImplementedError(f"a task switch to CPL {new[_ES // 4 + CS] & 3} "
                                  "(user mode, which PVM runs only in PVM mode)")
    if st.cr0 & CR0_PG:
        st.cr3 = new[_CR3 // 4]
        emu.flush_tlb()
    st.rip = new[_EIP // 4]
    emu.set_flags((new_flags & 0x3F7FD5) | FLAG_FIXED)
    for i in range(8):
        emu.R[i] = new[_EAX // 4 + i]
    selectors = [new[_ES // 4 + i] & 0xFFFF for i in range(6)]
    for i, sel in enumerate(selectors):        # the selectors first: a fault below names them
        st.seg[i] = Segment(selector=sel, base=0, limit=0, type=0, present=0, dpl=0, db=0, s=0, l=0, g=0,
                            avl=0, unusable=1)
    try:
        _load_ldt(emu, new[_LDT // 4] & 0xFFFF, ext)
        _load_segments(emu, selectors, ext)
        emu.mode_changed()
        if error_code is not None:
            from pykvm.emulator import control
            control.set_sp(emu, control.push(emu, (error_code,), 4))
        if new[_T // 4] & 1:
            emu.dr[6] |= 0x8000                # DR6.BT: the task switch trap
            raise CpuFault(EXC_DB)
    except CpuFault as fault:
        from pykvm.emulator.interrupts import deliver_exception

        emu.mode_changed()
        deliver_exception(emu, fault)          # in the new task, before its first instruction
    return (base + _EFLAGS) & 0xFFFFFFFF, 4


def previous_task(emu) -> int:
    """IRET with NT set: the back link of the current TSS (it must name a GDT entry)."""
    st = emu.state
    link = emu.mmu.lin_read((st.seg[TR].base + _BACK_LINK) & 0xFFFFFFFF, 2, True)
    if link & 4:
        raise CpuFault(EXC_TS, link & 0xFFFC)
    return link


def _load_ldt(emu, selector: int, ext: int) -> None:
    st = emu.state
    if selector & 0xFFFC == 0:
        st.seg[LDTR] = Segment(selector=selector, base=0, limit=0, type=D.SYS_LDT, present=0, dpl=0, db=0, s=0,
                               l=0, g=0, avl=0, unusable=1)
        return
    err = (selector & 0xFFFC) | ext
    if selector & 4:
        raise CpuFault(EXC_TS, err)
    raw, _ = segments.read_descriptor(emu, selector, EXC_TS, ext)
    d = D.decode_descriptor(raw)
    if d.s or d.type != D.SYS_LDT or not d.present:
        raise CpuFault(EXC_TS, err)
    st.seg[LDTR] = Segment(selector=selector, base=d.base, limit=d.limit, type=d.type, present=1, dpl=d.dpl,
                           db=d.db, s=0, l=0, g=d.g, avl=d.avl, unusable=0)


def _load_segments(emu, selectors: list[int], ext: int) -> None:
    """CS, SS, then the data segments, with the task-switch checks (#TS, or #NP/#SS when absent)."""
    st = emu.state
    cpl = selectors[CS] & 3
    for i in (CS, SS, *_DATA_ORDER):
        sel = selectors[i]
        err = (sel & 0xFFFC) | ext
        if sel & 0xFFFC == 0:
            if i in (CS, SS):
                raise CpuFault(EXC_TS, err)
            continue
        raw, addr = segments.read_descriptor(emu, sel, EXC_TS, ext)
        d = D.decode_descriptor(raw)
        rpl, code = sel & 3, d.s and d.type & D.TYPE_CODE
        if i == CS:
            conforming = d.type & D.TYPE_CODE_CONFORMING
            if not code or (d.dpl > rpl if conforming else d.dpl != rpl):
                raise CpuFault(EXC_TS, err)
        elif i == SS:
            if rpl != cpl or not d.is_data or not d.type & D.TYPE_DATA_WRITABLE or d.dpl != cpl:
                raise CpuFault(EXC_TS, err)
        else:
            if not d.s or (code and not d.type & D.TYPE_CODE_READABLE):
                raise CpuFault(EXC_TS, err)
            if not (code and d.type & D.TYPE_CODE_CONFORMING) and (d.dpl < cpl or d.dpl < rpl):
                raise CpuFault(EXC_TS, err)
        if not d.present:
            raise CpuFault(EXC_SS if i == SS else EXC_NP, err)
        segments.set_accessed(emu, addr, raw)
        st.seg[i] = segments.segment_from_descriptor(sel, d)
