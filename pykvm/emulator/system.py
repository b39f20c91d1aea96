"""Runtime side of the privileged and stateful instructions, as methods of the emulator.

Instruction closures call these as ``E.<method>``; each checks privilege (CPL, IOPL)
and operand validity the way the SDM describes and raises ``CpuFault`` otherwise.
Writes to CR0/CR3/CR4/EFER go through ``write_cr``/``wrmsr`` which redo the mode
bookkeeping (LMA, paging, TLB, translated blocks) and ask the run loop to return.
"""

from __future__ import annotations

import time

from pykvm.emulator import control, interrupts, msrs, segments
from pykvm.emulator import cpuid as cpuid_tables
from pykvm.emulator.faults import CpuFault
from pykvm.x86.state import CS, LDTR, SS, TR, Segment
from pykvm.x86 import descriptors as D
from pykvm.x86 import bits as B

_CR4_LA57, _CR4_PCIDE = 1 << 12, 1 << 17
_EFER_VALID = B.EFER_SCE | B.EFER_LME | B.EFER_LMA | B.EFER_NXE
# Defined CR0 bits; MOV to CR0 ignores the others (SDM vol. 3, 2.5), as KVM does.
_CR0_DEFINED = (B.CR0_PE | B.CR0_MP | B.CR0_EM | B.CR0_TS | B.CR0_ET | B.CR0_NE | B.CR0_WP | B.CR0_AM
                | B.CR0_NW | B.CR0_CD | B.CR0_PG)

# System descriptors LAR reports (TSSs, LDT, call and task gates) and LSL (those with a limit).
_LAR_SYSTEM_TYPES = frozenset((D.SYS_TSS16_AVAIL, D.SYS_LDT, D.SYS_TSS16_BUSY, D.SYS_CALL_GATE16, D.SYS_TASK_GATE,
                               D.SYS_TSS32_AVAIL, D.SYS_TSS32_BUSY, D.SYS_CALL_GATE32))
_LSL_SYSTEM_TYPES = frozenset((D.SYS_TSS16_AVAIL, D.SYS_LDT, D.SYS_TSS16_BUSY, D.SYS_TSS32_AVAIL, D.SYS_TSS32_BUSY))


class SystemOps:
    """Mixin with the instruction-level helpers; ``Emulator`` inherits it."""

    # -- privilege checks -----------------------------------------------------------------
    def require_cpl0(self) -> None:
        if not self.real and self.state.cpl != 0:
            raise CpuFault(B.EXC_GP, 0)

    def iopl_ok(self) -> bool:
        return self.real or self.state.cpl <= (self.state.rflags >> 12) & 3

    def check_iopl(self) -> None:
        if not self.iopl_ok():
            raise CpuFault(B.EXC_GP, 0)

    def check_io(self, port: int, size: int) -> None:
        """IN/OUT/INS/OUTS privilege: CPL <= IOPL in protected mode (no TSS I/O bitmap)."""
        if not self.iopl_ok():
            raise CpuFault(B.EXC_GP, 0)

    # -- segments and stack ------------------------------------------------------------------
    def load_seg(self, i: int, selector: int) -> None:
        segments.load_data_segment(self, i, selector)
        if i == SS:
            self.mode_changed()

    def push_many(self, values, size: int) -> None:
        control.set_sp(self, control.push(self, values, size))

    def pop_many(self, count: int, size: int):
        return control.pop(self, count, size)

    def set_sp(self, sp: int) -> None:
        control.set_sp(self, sp)

    def enter(self, size: int, alloc: int, level: int) -> None:
        R = self.R
        smask = 0xFFFFFFFF if self.stack32 else 0xFFFF
        vmask = 0xFFFFFFFF if size == 4 else 0xFFFF
        wrn, rdn = self.mmu.wrn, self.mmu.rdn
        sp = (R[4] - size) & smask
        wrn(SS, sp, size, R[5] & vmask)
        frame = sp
        if level:
            # FrameTemp is ESP after that push (SDM ENTER): on a 16-bit stack an o32 ENTER pushes
            # ESP's upper half with SP (test386.asm checks it with ESP = 0x10000).
            frame_temp = (R[4] & ~smask | sp) & vmask
            bp = R[5] & smask
            for _ in range(1, level):
                bp = (bp - size) & smask
                sp = (sp - size) & smask
                wrn(SS, sp, size, rdn(SS, bp, size))
            sp = (sp - size) & smask
            wrn(SS, sp, size, frame_temp)
        sp = (sp - alloc) & smask
        # The stack size, not the operand size, says how much of EBP gets the frame pointer:
        # an o32 ENTER on a 16-bit stack keeps EBP's upper half (SDM ENTER, "BP <- FrameTemp").
        if self.stack32:
            R[5] = frame
        else:
            R[5] = (R[5] & 0xFFFF0000) | frame
        control.set_sp(self, sp)

    def popf(self, value: int, size: int) -> None:
        """POPF with the SDM's rules for IOPL, IF, VM/RF and the 16-bit form."""
        old = self.get_flags()
        if size == 2:
            value = (old & 0xFFFF0000) | (value & 0xFFFF)
        keep = B.FLAG_VM | B.FLAG_RF | 0x180000   # VM, RF, VIF, VIP never loaded by POPF here
        if not self.real:
            cpl = self.state.cpl
            if cpl > 0:
                keep |= B.FLAG_IOPL
            if cpl > (old >> 12) & 3:
                keep |= B.FLAG_IF
        new = (value & ~keep & 0x3F7FD5) | (old & keep)
        if size == 4:
            new &= ~(B.FLAG_RF | 0x180000) | (old & keep)
        self.set_flags(new)

    # -- far transfers and interrupts -------------------------------------------------------
    def far_jmp(self, selector: int, offset: int, next_eip: int) -> int:
        return control.far_jmp(self, selector, offset, next_eip)

    def far_call(self, selector: int, offset: int, size: int, ret: int) -> int:
        return control.far_call(self, selector, offset, size, ret)

    def far_ret(self, size: int, imm: int) -> int:
        return control.far_ret(self, size, imm)

    def iret(self, size: int, next_eip: int) -> int:
        eip = control.iret(self, size, next_eip)
        self.state.nmi_blocked = False          # the end of an NMI handler (or of any: SDM 6.7.1)
        return eip

    def sysenter(self) -> int:
        return control.sysenter(self)

    def sysexit(self) -> int:
        return control.sysexit(self)

    def software_interrupt(self, vector: int, next_eip: int, software: bool = True) -> None:
        """INT n / INT3 / INTO: deliver with the return address after the instruction."""
        interrupts.deliver(self, vector, None, next_eip, software=software)

    # -- control and debug registers ------------------------------------------------------------
    def read_cr(self, n: int) -> int:
        self.require_cpl0()
        st = self.state
        return {0: st.cr0, 2: st.cr2, 3: st.cr3, 4: st.cr4, 8: st.cr8}[n] & 0xFFFFFFFF

    def write_cr(self, n: int, value: int) -> None:
        self.require_cpl0()
        st = self.state
        value &= 0xFFFFFFFF
        if n == 0:
            self._write_cr0(value)
        elif n == 2:
            st.cr2 = value
        elif n == 3:
            st.cr3 = value
            self.flush_tlb()
        elif n == 4:
            self._check_cr4(value)
            st.cr4 = value
            self.flush_tlb()
        elif n == 8:
            if value & ~0xF:
                raise CpuFault(B.EXC_GP, 0)
            st.cr8 = value
        self.mode_changed()
        self.stop = True

    def _check_cr4(self, value: int) -> None:
        """#GP(0) for CR4 bits this CPUID does not offer, PAE cleared or LA57 toggled in long
        mode, PCIDE set outside long mode or with a nonzero PCID in CR3 (as KVM checks)."""
        st = self.state
        if self._cr4_valid is None:
            self._cr4_valid = cpuid_tables.cr4_valid_bits(self.cpuid)
        if value & ~self._cr4_valid:
            raise CpuFault(B.EXC_GP, 0)
        if st.efer & B.EFER_LMA and (not value & B.CR4_PAE or (value ^ st.cr4) & _CR4_LA57):
            raise CpuFault(B.EXC_GP, 0)
        if value & _CR4_PCIDE and not st.cr4 & _CR4_PCIDE and (not st.efer & B.EFER_LMA or st.cr3 & 0xFFF):
            raise CpuFault(B.EXC_GP, 0)

    def _write_cr0(self, value: int) -> None:
        st = self.state
        value &= _CR0_DEFINED
        if value & B.CR0_PG and not value & B.CR0_PE:
            raise CpuFault(B.EXC_GP, 0)
        if value & B.CR0_NW and not value & B.CR0_CD:
            raise CpuFault(B.EXC_GP, 0)
        old = st.cr0
        efer = st.efer
        if value & B.CR0_PG and not old & B.CR0_PG and efer & B.EFER_LME:
            if not st.cr4 & B.CR4_PAE or st.seg[CS].l:
                raise CpuFault(B.EXC_GP, 0)
            efer |= B.EFER_LMA
        elif not value & B.CR0_PG and old & B.CR0_PG and efer & B.EFER_LMA:
            efer &= ~B.EFER_LMA
        st.efer = efer
        st.cr0 = value | B.CR0_ET
        if (old ^ value) & (B.CR0_PG | B.CR0_PE | B.CR0_WP):
            self.flush_tlb()

    def lmsw(self, value: int) -> None:
        """LMSW loads PE/MP/EM/TS; it can set PE but never clear it."""
        self.require_cpl0()
        cr0 = self.state.cr0
        new = (cr0 & ~0xE) | (value & 0xF) | (cr0 & 1)
        self.write_cr(0, new)

    def read_dr(self, n: int) -> int:
        self.require_cpl0()
        return self.dr[self._dr_index(n)]

    def write_dr(self, n: int, value: int) -> None:
        self.require_cpl0()
        self.dr[self._dr_index(n)] = value & 0xFFFFFFFF

    def _dr_index(self, n: int) -> int:
        if n in (4, 5):
            if self.state.cr4 & B.CR4_DE:
                raise CpuFault(B.EXC_UD)
            return n + 2
        return n

    # -- descriptor tables --------------------------------------------------------------------
    def load_dtr(self, which: str, seg: int, off: int, opsize: int) -> None:
        self.require_cpl0()
        limit = self.mmu.rd2(seg, off)
        base = self.mmu.rdn(seg, (off + 2) & 0xFFFFFFFF, 4)
        if opsize == 2:
            base &= 0xFFFFFF
        table = getattr(self.state, which)
        table.base = base
        table.limit = limit

    def store_dtr(self, which: str, seg: int, off: int, opsize: int) -> None:
        table = getattr(self.state, which)
        base = table.base & (0xFFFFFF if opsize == 2 else 0xFFFFFFFF)
        self.mmu.check_write(seg, off, 6)
        self.mmu.wr2(seg, off, table.limit & 0xFFFF)
        self.mmu.wrn(seg, (off + 2) & 0xFFFFFFFF, 4, base)

    def lldt(self, selector: int) -> None:
        if self.real:
            raise CpuFault(B.EXC_UD)
        self.require_cpl0()
        st = self.state
        if selector & 0xFFFC == 0:
            st.seg[LDTR] = Segment(selector=selector, base=0, limit=0, type=2, present=0, dpl=0, db=0,
                                   s=0, l=0, g=0, avl=0, unusable=1)
            return
        if selector & 4:
            raise CpuFault(B.EXC_GP, selector & 0xFFFC)
        raw, _ = segments.read_descriptor(self, selector)
        d = D.decode_descriptor(raw)
        if d.s or d.type != D.SYS_LDT:
            raise CpuFault(B.EXC_GP, selector & 0xFFFC)
        if not d.present:
            raise CpuFault(B.EXC_NP, selector & 0xFFFC)
        st.seg[LDTR] = Segment(selector=selector, base=d.base, limit=d.limit, type=d.type, present=1,
                               dpl=d.dpl, db=d.db, s=0, l=0, g=d.g, avl=d.avl, unusable=0)

    # -- descriptor queries: LAR, LSL, VERR, VERW ---------------------------------------------
    def _visible_descriptor(self, selector: int, system_types) -> tuple | None:
        """(raw, decoded) of the descriptor ``selector`` names if LAR/LSL/VERR/VERW may see it
        at this CPL: in the table, of a code/data type or one of ``system_types``, and (unless
        conforming code) with DPL >= CPL and DPL >= RPL. None otherwise (ZF=0, no fault)."""
        if selector & 0xFFFC == 0:
            return None
        try:
            raw, _ = segments.read_descriptor(self, selector)
        except CpuFault as e:
            if e.vector == B.EXC_GP:
                return None            # beyond the GDT/LDT limit: not a fault for these
            raise
        d = D.decode_descriptor(raw)
        if not d.s and d.type not in system_types:
            return None
        conforming_code = d.s and d.type & D.TYPE_CODE and d.type & D.TYPE_CODE_CONFORMING
        if not conforming_code and (d.dpl < self.state.cpl or d.dpl < selector & 3):
            return None
        return raw, d

    def lar(self, selector: int) -> int | None:
        """Access rights: descriptor bits 8-15 and 20-23 (16-19, the limit's top, are undefined
        in the SDM; cleared, as QEMU does)."""
        found = self._visible_descriptor(selector, _LAR_SYSTEM_TYPES)
        return None if found is None else found[0] >> 32 & 0x00F0FF00

    def lsl(self, selector: int) -> int | None:
        found = self._visible_descriptor(selector, _LSL_SYSTEM_TYPES)
        return None if found is None else found[1].limit

    def verify(self, selector: int, write: bool) -> bool:
        """VERR / VERW: readable (data, or readable code) / writable data at this CPL."""
        found = self._visible_descriptor(selector, ())
        if found is None:
            return False
        t = found[1].type
        if write:
            return not t & D.TYPE_CODE and bool(t & D.TYPE_DATA_WRITABLE)
        return not t & D.TYPE_CODE or bool(t & D.TYPE_CODE_READABLE)

    def ltr(self, selector: int) -> None:
        if self.real:
            raise CpuFault(B.EXC_UD)
        self.require_cpl0()
        st = self.state
        if selector & 0xFFFC == 0:
            raise CpuFault(B.EXC_GP, 0)
        if selector & 4:
            raise CpuFault(B.EXC_GP, selector & 0xFFFC)
        raw, addr = segments.read_descriptor(self, selector)
        d = D.decode_descriptor(raw)
        if d.s or d.type not in (D.SYS_TSS16_AVAIL, D.SYS_TSS32_AVAIL):
            raise CpuFault(B.EXC_GP, selector & 0xFFFC)
        if not d.present:
            raise CpuFault(B.EXC_NP, selector & 0xFFFC)
        # Mark the TSS busy in the GDT (type bit 1, byte 5 bit 1).
        self.mmu.lin_write(addr + 5, 1, (raw >> 40 & 0xFF) | 2, True)
        st.seg[TR] = Segment(selector=selector, base=d.base, limit=d.limit, type=d.type | 2, present=1,
                             dpl=d.dpl, db=d.db, s=0, l=0, g=d.g, avl=d.avl, unusable=0)

    # -- MSRs, CPUID, TSC ---------------------------------------------------------------------
    def rdmsr(self, index: int) -> int:
        self.require_cpl0()
        st = self.state
        index &= 0xFFFFFFFF
        if index == B.MSR_EFER:
            return st.efer
        if index == B.MSR_IA32_APIC_BASE:
            return st.apic_base
        if index == B.MSR_IA32_TSC:
            return self.rdtsc()
        if index == B.MSR_FS_BASE:
            return st.seg[4].base
        if index == B.MSR_GS_BASE:
            return st.seg[5].base
        backend = self.msr_backend
        if index in msrs.OWN or (backend is None and (index in msrs.PLAIN or index in msrs.READ_ONLY)):
            return st.msrs.get(index, msrs.DEFAULTS.get(index, 0))
        value = backend.read(index) if backend is not None else None
        if value is None:
            raise CpuFault(B.EXC_GP, 0)
        return value

    def wrmsr(self, index: int, value: int) -> None:
        self.require_cpl0()
        st = self.state
        index &= 0xFFFFFFFF
        if index == B.MSR_EFER:
            self._write_efer(value)
        elif index == B.MSR_IA32_APIC_BASE:
            st.apic_base = msrs.checked_apic_base(st.apic_base, value, self.cpuid)
            if self.apic_base_observer is not None:
                self.apic_base_observer()
        elif index == B.MSR_IA32_TSC:
            if self.msr_backend is None or not self.msr_backend.write(index, value):
                self.tsc_offset = value - time.monotonic_ns()
        elif index in msrs.OWN or (self.msr_backend is None and index in msrs.PLAIN):
            value = msrs.checked_value(index, value, self.cpuid)
            if index in (B.MSR_FS_BASE, B.MSR_GS_BASE):
                seg = st.seg[4 if index == B.MSR_FS_BASE else 5]
                seg.base = value
            st.msrs[index] = value
        elif (self.msr_backend is None or index in msrs.GUEST_READ_ONLY
              or msrs.guest_write_refused(index, value, self.cpuid, self.msr_backend)):
            raise CpuFault(B.EXC_GP, 0)
        elif index in msrs.GUEST_WRITE_IGNORED:
            if self.msr_backend.read(index) is None:
                raise CpuFault(B.EXC_GP, 0)
        elif not self.msr_backend.write(index, value):
            raise CpuFault(B.EXC_GP, 0)
        self.mode_changed()
        self.stop = True

    def _write_efer(self, value: int) -> None:
        st = self.state
        if value & ~_EFER_VALID:
            raise CpuFault(B.EXC_GP, 0)
        if value & B.EFER_LME and not self.cpuid(0x80000001, 0)[3] & (1 << 29):
            raise CpuFault(B.EXC_GP, 0)
        if (value ^ st.efer) & B.EFER_LME and st.cr0 & B.CR0_PG:
            raise CpuFault(B.EXC_GP, 0)
        st.efer = (value & ~B.EFER_LMA) | (st.efer & B.EFER_LMA)
        self.flush_tlb()

    def cpuid_insn(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        """The CPUID instruction: the vCPU's table, with the bits KVM keeps current at run time."""
        st = self.state
        return cpuid_tables.runtime_view(self.cpuid(leaf, subleaf), leaf, subleaf, st.cr4, st.apic_base)

    def rdtsc(self) -> int:
        """The vCPU's time-stamp counter: KVM's (through the MSR backend), so it does not jump
        when the guest moves between the emulator and PVM mode; a nanosecond clock without one."""
        if self.state.cr4 & B.CR4_TSD and not self.real and self.state.cpl != 0:
            raise CpuFault(B.EXC_GP, 0)
        if self.msr_backend is not None:
            tsc = self.msr_backend.read(B.MSR_IA32_TSC)
            if tsc is not None:
                return tsc
        return (time.monotonic_ns() + self.tsc_offset) & 0xFFFFFFFFFFFFFFFF
