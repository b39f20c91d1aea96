"""Far control transfers: far JMP/CALL/RET, IRET, SYSENTER/SYSEXIT, and the stack helpers they share.

Every function validates first, then writes the stack (which may fault), and only then
commits registers, so a fault leaves the architectural state as before the instruction.
They return the new EIP; the caller (an instruction closure) ends its block and asks the
run loop to return, since CS (and maybe CPL) changed.
"""

from __future__ import annotations

from pykvm.emulator import segments, tasks
from pykvm.emulator.faults import CpuFault
from pykvm.x86.state import CS, SS, Segment
from pykvm.x86 import descriptors as D
from pykvm.x86.bits import (CR0_PE, EXC_GP, FLAG_FIXED, FLAG_IF, FLAG_IOPL, FLAG_NT, FLAG_RF, FLAG_VM,
                            MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_EIP, MSR_IA32_SYSENTER_ESP)

_MASK = {2: 0xFFFF, 4: 0xFFFFFFFF}


# -- stack helpers ------------------------------------------------------------------------
def stack_mask(emu) -> int:
    return 0xFFFFFFFF if emu.stack32 else 0xFFFF


def push(emu, values, size, sp=None) -> int:
    """Write ``values`` (in push order) below SS:ESP; returns the new ESP, not committed."""
    smask = stack_mask(emu)
    if sp is None:
        sp = emu.R[4]
    sp &= smask
    wrn = emu.mmu.wrn
    for v in values:
        sp = (sp - size) & smask
        wrn(SS, sp, size, v & _MASK[size])
    return sp


def pop(emu, count, size, sp=None):
    """Read ``count`` values from SS:ESP upward; returns (values, new ESP), not committed."""
    smask = stack_mask(emu)
    if sp is None:
        sp = emu.R[4]
    sp &= smask
    rdn = emu.mmu.rdn
    out = []
    for _ in range(count):
        out.append(rdn(SS, sp, size))
        sp = (sp + size) & smask
    return out, sp


def set_sp(emu, sp: int) -> None:
    R = emu.R
    if emu.stack32:
        R[4] = sp & 0xFFFFFFFF
    else:
        R[4] = (R[4] & 0xFFFF0000) | (sp & 0xFFFF)


def set_sp_for(R, sp: int, stack32: bool) -> None:
    if stack32:
        R[4] = sp & 0xFFFFFFFF
    else:
        R[4] = (R[4] & 0xFFFF0000) | (sp & 0xFFFF)


# -- CS loads -----------------------------------------------------------------------------
def load_cs_real(emu, selector: int) -> None:
    st = emu.state
    seg = st.seg[CS]
    st.seg[CS] = Segment(selector, selector << 4, seg.limit, seg.type, 1, seg.dpl, seg.db, seg.s,
                         seg.l, seg.g, seg.avl, 0)
    emu.mode_changed()


def load_cs_protected(emu, selector: int, d: D.Descriptor, raw: int, addr: int, cpl: int) -> None:
    segments.set_accessed(emu, addr, raw)
    emu.state.seg[CS] = segments.segment_from_descriptor((selector & 0xFFFC) | cpl, d)
    emu.mode_changed()


def _check_target(d: D.Descriptor, offset: int, lma: bool) -> None:
    if not (lma and d.l) and offset > d.limit:
        raise CpuFault(EXC_GP, 0)


# -- far JMP / CALL / RET ------------------------------------------------------------------
def far_jmp(emu, selector: int, offset: int, next_eip: int) -> int:
    st = emu.state
    if not st.cr0 & CR0_PE:
        if offset > st.seg[CS].limit:
            raise CpuFault(EXC_GP, 0)
        load_cs_real(emu, selector)
        return offset
    target = segments.far_target(emu, selector, offset, jump=True)
    if target[0] is None:                      # a TSS or a task gate
        tasks.switch(emu, target[1], tasks.JMP, next_eip)
        return st.rip
    selector, d, raw, addr, offset, _ = target
    _check_target(d, offset, emu.lma)
    load_cs_protected(emu, selector, d, raw, addr, st.cpl)
    return offset


def far_call(emu, selector: int, offset: int, size: int, return_eip: int) -> int:
    st = emu.state
    old_cs = st.seg[CS].selector
    if not st.cr0 & CR0_PE:
        if offset > st.seg[CS].limit:
            raise CpuFault(EXC_GP, 0)
        sp = push(emu, (old_cs, return_eip), size)
        load_cs_real(emu, selector)
        set_sp(emu, sp)
        return offset
    target = segments.far_target(emu, selector, offset, jump=False)
    if target[0] is None:                      # a TSS or a task gate
        tasks.switch(emu, target[1], tasks.CALL, return_eip)
        return st.rip
    selector, d, raw, addr, offset, gate_size = target
    _check_target(d, offset, emu.lma)
    # Through a call gate, the gate's size says how CS:EIP are pushed.
    sp = push(emu, (old_cs, return_eip), gate_size or size)
    load_cs_protected(emu, selector, d, raw, addr, st.cpl)
    set_sp(emu, sp)
    return offset


def far_ret(emu, size: int, imm: int) -> int:
    st = emu.state
    (eip, cs), sp = pop(emu, 2, size)
    cs &= 0xFFFF
    if not st.cr0 & CR0_PE:
        if eip > st.seg[CS].limit:
            raise CpuFault(EXC_GP, 0)
        load_cs_real(emu, cs)
        set_sp(emu, sp + imm)
        return eip
    cpl = st.cpl
    d, raw, addr = segments.check_code_segment(emu, cs, for_return=True)
    rpl = cs & 3
    if rpl == cpl:
        _check_target(d, eip, emu.lma)
        load_cs_protected(emu, cs, d, raw, addr, cpl)
        set_sp(emu, sp + imm)
        return eip
    # Return to an outer privilege level: SS:ESP follow on the stack (after the imm bytes).
    (new_esp, new_ss), _ = pop(emu, 2, size, sp=(sp + imm) & stack_mask(emu))
    sd, sraw, saddr = segments.check_stack_segment(emu, new_ss & 0xFFFF, rpl)
    _check_target(d, eip, emu.lma)
    _enter_outer(emu, cs, d, raw, addr, new_ss & 0xFFFF, sd, sraw, saddr, rpl, (new_esp + imm))
    return eip


def _enter_outer(emu, cs, d, raw, addr, ss_sel, sd, sraw, saddr, rpl, esp) -> None:
    st = emu.state
    segments.set_accessed(emu, saddr, sraw)
    st.seg[SS] = segments.segment_from_descriptor(ss_sel, sd)
    load_cs_protected(emu, cs, d, raw, addr, rpl)
    set_sp_for(emu.R, esp, bool(sd.db))
    segments.null_outer_data_segments(emu, rpl)
    emu.mode_changed()


# -- IRET ---------------------------------------------------------------------------------
def iret(emu, size: int, next_eip: int) -> int:
    st = emu.state
    if st.cr0 & CR0_PE and emu.get_flags() & FLAG_NT:
        if emu.lma:
            raise CpuFault(EXC_GP, 0)
        # The return from a nested task (SDM IRET, TASK-RETURN): nothing is popped.
        tasks.switch(emu, tasks.previous_task(emu), tasks.IRET, next_eip)
        return st.rip
    (eip, cs, fl), sp = pop(emu, 3, size)
    cs &= 0xFFFF
    old = emu.get_flags()
    if not st.cr0 & CR0_PE:
        if eip > st.seg[CS].limit:
            raise CpuFault(EXC_GP, 0)
        if size == 2:
            # Bits 1, 3, 5 and 15 are reserved: IRET, like POPF, never loads them.
            new = (old & 0xFFFF0000) | (fl & 0x7FD5) | FLAG_FIXED
        else:
            new = (fl & 0x257FD5) | (old & 0x1A0000) | FLAG_FIXED   # SDM: RF, AC, ID loaded, VM/VIF/VIP kept
        load_cs_real(emu, cs)
        set_sp(emu, sp)
        _load_flags(emu, new)
        return eip
    cpl = st.cpl
    if size == 4 and fl & FLAG_VM and cpl == 0:
        raise NotImplementedError("IRET to virtual-8086 mode")
    d, raw, addr = segments.check_code_segment(emu, cs, for_return=True)
    rpl = cs & 3
    new = _iret_flags(old, fl, size, cpl)
    if rpl == cpl:
        _check_target(d, eip, emu.lma)
        load_cs_protected(emu, cs, d, raw, addr, cpl)
        set_sp(emu, sp)
        _load_flags(emu, new)
        return eip
    (new_esp, new_ss), _ = pop(emu, 2, size, sp=sp)
    sd, sraw, saddr = segments.check_stack_segment(emu, new_ss & 0xFFFF, rpl)
    _check_target(d, eip, emu.lma)
    _enter_outer(emu, cs, d, raw, addr, new_ss & 0xFFFF, sd, sraw, saddr, rpl, new_esp)
    _load_flags(emu, new)
    return eip


def _iret_flags(old: int, fl: int, size: int, cpl: int) -> int:
    """EFLAGS after a protected-mode IRET: IOPL only changes at CPL 0, IF only when CPL <= IOPL."""
    if size == 2:
        fl = (old & 0xFFFF0000) | fl
    keep = FLAG_VM | 0x180000  # VM, VIF, VIP are not loaded by a same-mode IRET
    if cpl > 0:
        keep |= FLAG_IOPL
    if cpl > (old & FLAG_IOPL) >> 12:
        keep |= FLAG_IF
    new = (fl & ~keep) | (old & keep)
    return (new & 0x3F7FD5 & ~FLAG_VM) | (old & FLAG_VM) | FLAG_FIXED


def _load_flags(emu, new: int) -> None:
    """EFLAGS from an IRET image. RF comes from the image too (SDM IRET): it stays set until the
    next instruction completes, which the run loop sees to (``rf_loaded``)."""
    emu.set_flags(new)
    emu.rf_loaded = bool(new & FLAG_RF)



# -- SYSENTER / SYSEXIT ---------------------------------------------------------------------
def _flat(selector: int, code: bool, dpl: int) -> Segment:
    """The fixed flat 4 GiB segments SYSENTER/SYSEXIT load (nothing is read from the GDT)."""
    return Segment(selector=selector, base=0, limit=0xFFFFFFFF, type=0xB if code else 0x3, present=1,
                   dpl=dpl, db=1, s=1, l=0, g=1, avl=0, unusable=0)


def sysenter(emu) -> int:
    """SYSENTER (legacy mode): CPL 0 at SYSENTER_CS:SYSENTER_EIP with SS = CS + 8 and
    ESP = SYSENTER_ESP; VM, IF and RF cleared. #GP(0) in real mode or with a null SYSENTER_CS."""
    st = emu.state
    cs = st.msrs.get(MSR_IA32_SYSENTER_CS, 0) & 0xFFFF
    if not st.cr0 & CR0_PE or not cs & 0xFFFC:
        raise CpuFault(EXC_GP, 0)
    st.seg[CS] = _flat(cs & 0xFFFC, True, 0)
    st.seg[SS] = _flat((cs & 0xFFFC) + 8, False, 0)
    emu.R[4] = st.msrs.get(MSR_IA32_SYSENTER_ESP, 0) & 0xFFFFFFFF
    emu.set_flags(emu.get_flags() & ~(FLAG_VM | FLAG_IF | FLAG_RF))
    emu.mode_changed()
    return st.msrs.get(MSR_IA32_SYSENTER_EIP, 0) & 0xFFFFFFFF


def sysexit(emu) -> int:
    """SYSEXIT (legacy mode): CPL 3 at (SYSENTER_CS + 16):EDX with SS = SYSENTER_CS + 24 and
    ESP = ECX. #GP(0) in real mode, at CPL > 0 or with a null SYSENTER_CS."""
    st = emu.state
    cs = st.msrs.get(MSR_IA32_SYSENTER_CS, 0) & 0xFFFC
    if not st.cr0 & CR0_PE or st.cpl or not cs:
        raise CpuFault(EXC_GP, 0)
    st.seg[CS] = _flat((cs + 16) | 3, True, 3)
    st.seg[SS] = _flat((cs + 24) | 3, False, 3)
    emu.R[4] = emu.R[1]
    emu.mode_changed()
    return emu.R[2]
