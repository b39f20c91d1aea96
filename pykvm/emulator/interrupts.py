"""Exception and interrupt delivery: real-mode IVT, protected-mode IDT, IA-32e IDT,
and the double-fault / triple-fault escalation of SDM vol. 3, table 6-5.

``deliver`` performs one delivery and raises ``CpuFault`` if the delivery itself faults,
leaving registers untouched (everything is validated and the stack written before
anything is committed). ``deliver_exception`` wraps it with the escalation rules.
After a delivery, ``emu.delivery_observer(vector, flags_linear, flags_size)`` (if set) is
told where the pushed EFLAGS image lies (differential tests mask its undefined bits there;
a debugger can stop on exceptions).
"""

from __future__ import annotations

from pykvm.emulator import control, segments, tasks
from pykvm.emulator.faults import CpuFault, TripleFault
from pykvm.x86.state import CS, SS, TR, Segment
from pykvm.x86 import descriptors as D
from pykvm.x86.bits import (CR0_PE, EXC_AC, EXC_DF, EXC_GP, EXC_NP, EXC_PF, EXC_SS, EXC_TS,
                            FLAG_AC, FLAG_IF, FLAG_NT, FLAG_RF, FLAG_TF, FLAG_VM)

CONTRIBUTORY = frozenset((0, 10, 11, 12, 13))
# Fault-class exceptions: the EFLAGS image they push has RF set (SDM vol. 3, 6.12.1 / 17.3.1.1),
# so that returning to the faulting instruction does not re-trigger an instruction breakpoint.
FAULTS = frozenset((0, 5, 6, 7, 10, 11, 12, 13, 14, 16, 17, 19, 20))
HAS_ERROR_CODE = frozenset((EXC_DF, EXC_TS, EXC_NP, EXC_SS, EXC_GP, EXC_PF, EXC_AC))


def deliver_exception(emu, fault: CpuFault) -> None:
    """Deliver a fault raised by the instruction at ``state.rip``, escalating to #DF / triple fault."""
    rip = emu.state.rip
    vectors = [fault.vector]
    current = fault
    while True:
        try:
            deliver(emu, current.vector, current.error_code, rip, software=False, cr2=current.cr2, fault=True)
            return
        except CpuFault as nested:
            vectors.append(nested.vector)
            if current.vector == EXC_DF:
                raise TripleFault(emu.linear_rip(), vectors) from None
            first, second = current.vector, nested.vector
            if ((first in CONTRIBUTORY and second in CONTRIBUTORY)
                    or (first == EXC_PF and (second in CONTRIBUTORY or second == EXC_PF))):
                current = CpuFault(EXC_DF, 0)
                vectors.append(EXC_DF)
            else:
                current = nested
        except NotImplementedError:
            raise


def deliver_external(emu, vector: int) -> None:
    """Deliver an external interrupt (INTR, already acknowledged at the interrupt controller)
    at the current instruction boundary: no error code, EXT set in the error code of any fault
    its delivery raises, no RF in the pushed image. External interrupts are benign: a fault
    while delivering one is delivered as that exception (escalating from there)."""
    try:
        deliver(emu, vector, None, emu.state.rip)
    except CpuFault as e:
        deliver_exception(emu, e)


def deliver(emu, vector: int, error_code, return_eip: int, software: bool = False, cr2=None,
            fault: bool = False) -> None:
    """Transfer control to the handler of ``vector``; the pushed return address is ``return_eip``.

    ``fault``: a fault-class exception, whose pushed EFLAGS image gets RF set.
    """
    st = emu.state
    rf = FLAG_RF if fault and vector in FAULTS else 0
    if not st.cr0 & CR0_PE:
        flags_slot = _deliver_real(emu, vector, return_eip)
    elif emu.lma:
        flags_slot = _deliver_long(emu, vector, error_code, return_eip, software, rf)
    else:
        flags_slot = _deliver_protected(emu, vector, error_code, return_eip, software, rf)
    if cr2 is not None:
        st.cr2 = cr2
    emu.stop = True
    observer = emu.delivery_observer
    if observer is not None:
        observer(vector, *flags_slot)


def _deliver_real(emu, vector: int, return_eip: int) -> tuple[int, int]:
    st = emu.state
    if vector * 4 + 3 > st.idt.limit:
        raise CpuFault(EXC_GP, vector * 8 + 2)
    entry = emu.mmu.lin_read((st.idt.base + vector * 4) & 0xFFFFFFFF, 4, True)
    flags = emu.get_flags()
    sp = control.push(emu, (flags, st.seg[CS].selector, return_eip), 2)
    control.load_cs_real(emu, entry >> 16)
    control.set_sp(emu, sp)
    emu.set_flags(flags & ~(FLAG_IF | FLAG_TF | FLAG_AC | FLAG_RF))
    st.rip = entry & 0xFFFF
    return (st.seg[SS].base + ((sp + 4) & control.stack_mask(emu))) & 0xFFFFFFFF, 2


def _gate_error(vector: int, ext: int) -> int:
    return vector * 8 + 2 + ext


def _gate_target(emu, gate, vector: int, ext: int, software: bool, cpl: int, long_mode: bool):
    """The checks shared by legacy and IA-32e delivery on a gate and the code segment it names.

    Returns (selector, raw descriptor, descriptor address, decoded descriptor). In IA-32e
    mode the target must be 64-bit code (L=1, D=0).
    """
    if software and gate.dpl < cpl:
        raise CpuFault(EXC_GP, _gate_error(vector, 0))
    if not gate.present:
        raise CpuFault(EXC_NP, _gate_error(vector, ext))
    sel = gate.selector
    if sel & 0xFFFC == 0:
        raise CpuFault(EXC_GP, ext)
    raw, addr = segments.read_descriptor(emu, sel, ext=ext)
    d = D.decode_descriptor(raw)
    if not d.is_code or d.dpl > cpl or (long_mode and (not d.l or d.db)):
        raise CpuFault(EXC_GP, (sel & 0xFFFC) | ext)
    if not d.present:
        raise CpuFault(EXC_NP, (sel & 0xFFFC) | ext)
    return sel, raw, addr, d


def _deliver_protected(emu, vector, error_code, return_eip, software, rf=0) -> tuple[int, int]:
    st = emu.state
    ext = 0 if software else 1
    if vector * 8 + 7 > st.idt.limit:
        raise CpuFault(EXC_GP, _gate_error(vector, ext))
    gate = D.decode_gate(emu.mmu.lin_read((st.idt.base + vector * 8) & 0xFFFFFFFF, 8, True))
    if gate.type == D.SYS_TASK_GATE:
        if software and gate.dpl < st.cpl:
            raise CpuFault(EXC_GP, _gate_error(vector, ext))
        if not gate.present:
            raise CpuFault(EXC_NP, _gate_error(vector, ext))
        return tasks.switch(emu, gate.selector, tasks.INTERRUPT, return_eip, error_code, ext)
    if gate.type not in (D.SYS_INT_GATE16, D.SYS_TRAP_GATE16, D.SYS_INT_GATE32, D.SYS_TRAP_GATE32):
        raise CpuFault(EXC_GP, _gate_error(vector, ext))
    cpl = st.cpl
    sel, raw, addr, d = _gate_target(emu, gate, vector, ext, software, cpl, long_mode=False)
    if gate.offset > d.limit:
        raise CpuFault(EXC_GP, ext)
    size = 4 if gate.type & 8 else 2
    flags = emu.get_flags()
    if flags & FLAG_VM:
        raise NotImplementedError("interrupt from virtual-8086 mode")
    frame = [flags | rf, st.seg[CS].selector, return_eip]
    if error_code is not None:
        frame.append(error_code)
    conforming = d.type & D.TYPE_CODE_CONFORMING
    if not conforming and d.dpl < cpl:
        # Inner privilege: the new stack comes from the TSS.
        new_cpl = d.dpl
        ss_sel, esp = _tss_stack(emu, new_cpl, ext)
        sd, sraw, saddr = segments.check_stack_segment(emu, ss_sel, new_cpl, EXC_TS, ext)
        new_ss = segments.segment_from_descriptor(ss_sel, sd)
        frame = [st.seg[SS].selector, emu.R[4]] + frame
        esp = _push_on(emu, new_ss, esp, frame, size)
        segments.set_accessed(emu, saddr, sraw)
        st.seg[SS] = new_ss
        control.load_cs_protected(emu, sel, d, raw, addr, new_cpl)
        control.set_sp_for(emu.R, esp, bool(sd.db))
    else:
        sp = control.push(emu, frame, size)
        control.load_cs_protected(emu, sel, d, raw, addr, cpl)
        control.set_sp(emu, sp)
    clear = FLAG_TF | FLAG_NT | FLAG_RF | FLAG_VM
    if gate.type in (D.SYS_INT_GATE16, D.SYS_INT_GATE32):
        clear |= FLAG_IF
    emu.set_flags(flags & ~clear)
    emu.mode_changed()
    st.rip = gate.offset
    flags_offset = (2 if error_code is None else 3) * size
    mask = 0xFFFFFFFF if st.seg[SS].db else 0xFFFF
    return (st.seg[SS].base + ((emu.R[4] + flags_offset) & mask)) & 0xFFFFFFFF, size


def _tss_stack(emu, cpl: int, ext: int):
    """SSn:ESPn for privilege level ``cpl`` from the current TSS (16- or 32-bit)."""
    tr = emu.state.seg[TR]
    if tr.type & 8:
        off, width = 4 + cpl * 8, 4
    else:
        off, width = 2 + cpl * 4, 2
    if off + 2 * width - 1 > tr.limit:
        raise CpuFault(EXC_TS, (tr.selector & 0xFFFC) | ext)
    read = emu.mmu.lin_read
    esp = read((tr.base + off) & 0xFFFFFFFF, width, True)
    ss = read((tr.base + off + width) & 0xFFFFFFFF, 2, True)
    return ss, esp


def _push_on(emu, seg: Segment, sp: int, values, size: int) -> int:
    """Push onto a stack that is not the current SS (inner-level entry); checks its limit."""
    smask = 0xFFFFFFFF if seg.db else 0xFFFF
    expand_down = seg.type & D.TYPE_DATA_EXPAND_DOWN
    write = emu.mmu.lin_write
    for v in values:
        sp = (sp - size) & smask
        if expand_down:
            ok = sp > seg.limit and sp + size - 1 <= smask
        else:
            ok = sp + size - 1 <= seg.limit
        if not ok:
            raise CpuFault(EXC_SS, seg.selector & 0xFFFC)
        write((seg.base + sp) & 0xFFFFFFFF, size, v & (0xFFFFFFFF if size == 4 else 0xFFFF), True)
    return sp


def _deliver_long(emu, vector, error_code, return_eip, software, rf=0) -> tuple[int, int]:
    """IA-32e delivery (compatibility mode code took an exception): 16-byte gates, 64-bit frame."""
    st = emu.state
    ext = 0 if software else 1
    if vector * 16 + 15 > st.idt.limit:
        raise CpuFault(EXC_GP, _gate_error(vector, ext))
    base = st.idt.base + vector * 16
    lo = emu.mmu.lin_read(base, 8, True)
    hi = emu.mmu.lin_read(base + 8, 8, True)
    gate = D.decode_gate64(lo, hi)
    if gate.type not in (D.SYS_INT_GATE32, D.SYS_TRAP_GATE32):
        raise CpuFault(EXC_GP, _gate_error(vector, ext))
    cpl = st.cpl
    sel, raw, addr, d = _gate_target(emu, gate, vector, ext, software, cpl, long_mode=True)
    flags = emu.get_flags()
    new_cpl = cpl if d.type & D.TYPE_CODE_CONFORMING else d.dpl
    ist = (lo >> 32) & 7
    tr = st.seg[TR]
    if ist or new_cpl < cpl:
        off = 0x24 + (ist - 1) * 8 if ist else 4 + new_cpl * 8
        rsp = emu.mmu.lin_read(tr.base + off, 8, True)
    else:
        rsp = st.gpr[4]
    rsp &= ~0xF
    frame = [st.seg[SS].selector, st.gpr[4], flags | rf, st.seg[CS].selector, return_eip]
    if error_code is not None:
        frame.append(error_code)
    for v in frame:
        rsp = (rsp - 8) & 0xFFFFFFFFFFFFFFFF
        emu.mmu.lin_write(rsp, 8, v, True)
    if new_cpl < cpl:
        st.seg[SS] = Segment(selector=new_cpl, base=0, limit=0, type=0, present=0, dpl=new_cpl, db=0,
                             s=0, l=0, g=0, avl=0, unusable=1)
    control.load_cs_protected(emu, sel, d, raw, addr, new_cpl)
    st.gpr[4] = rsp
    clear = FLAG_TF | FLAG_NT | FLAG_RF | FLAG_VM
    if gate.type == D.SYS_INT_GATE32:
        clear |= FLAG_IF
    emu.set_flags(flags & ~clear)
    emu.mode_changed()
    st.rip = gate.offset
    return rsp + (16 if error_code is None else 24), 8
