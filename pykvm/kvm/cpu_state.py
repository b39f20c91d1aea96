"""Moving a vCPU's architectural state between KVM's structs and the shared ``CpuState``.

Used only at mode boundaries (entering non-PVM mode, converting to PVM mode),
never per instruction.
"""

from __future__ import annotations

from pykvm.x86.state import (CS, DS, ES, FS, GS, LDTR, SS, TR, CpuState, DescriptorTable,
                                  Segment)
from pykvm.x86.bits import (MSR_CSTAR, MSR_IA32_PAT, MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_EIP,
                            MSR_IA32_SYSENTER_ESP, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_STAR,
                            MSR_SYSCALL_MASK)

# kvm_regs field for each GPR index (x86 encoding order).
_GPR_FIELDS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_SEGMENT_FIELDS = {ES: "es", CS: "cs", SS: "ss", DS: "ds", FS: "fs", GS: "gs", LDTR: "ldt", TR: "tr"}
_SEGMENT_ATTRS = ("selector", "base", "limit", "type", "present", "dpl", "db", "s", "l", "g", "avl",
                  "unusable")

# MSRs that travel with the vCPU across the boundary (EFER and APIC base are in sregs).
SYNCED_MSRS = (MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SYSCALL_MASK, MSR_KERNEL_GS_BASE,
               MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP, MSR_IA32_PAT)


def _segment_from_kvm(ks) -> Segment:
    return Segment(*(getattr(ks, a) for a in _SEGMENT_ATTRS))


def _segment_to_kvm(seg: Segment, ks) -> None:
    for a in _SEGMENT_ATTRS:
        setattr(ks, a, getattr(seg, a))


def state_from_kvm(regs, sregs, msrs: dict[int, int] | None = None, state: CpuState | None = None) -> CpuState:
    """Fill (or create) a CpuState from cdata ``kvm_regs`` and ``kvm_sregs`` and an MSR dict."""
    state = state or CpuState()
    state.gpr = [getattr(regs, f) for f in _GPR_FIELDS]
    state.rip = regs.rip
    state.rflags = regs.rflags
    state.seg = [None] * 8
    for index, name in _SEGMENT_FIELDS.items():
        state.seg[index] = _segment_from_kvm(getattr(sregs, name))
    state.gdt = DescriptorTable(sregs.gdt.base, sregs.gdt.limit)
    state.idt = DescriptorTable(sregs.idt.base, sregs.idt.limit)
    state.cr0, state.cr2, state.cr3, state.cr4, state.cr8 = sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8
    state.efer = sregs.efer
    state.apic_base = sregs.apic_base
    if msrs is not None:
        state.msrs.update(msrs)
    state.halted = False
    return state


def state_to_kvm(state: CpuState, regs, sregs) -> None:
    """Write a CpuState into cdata ``kvm_regs``/``kvm_sregs`` (MSRs go separately: ``state.msrs``)."""
    for f, value in zip(_GPR_FIELDS, state.gpr):
        setattr(regs, f, value)
    regs.rip = state.rip
    regs.rflags = state.rflags
    for index, name in _SEGMENT_FIELDS.items():
        _segment_to_kvm(state.seg[index], getattr(sregs, name))
    sregs.gdt.base, sregs.gdt.limit = state.gdt.base, state.gdt.limit
    sregs.idt.base, sregs.idt.limit = state.idt.base, state.idt.limit
    sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8 = state.cr0, state.cr2, state.cr3, state.cr4, state.cr8
    sregs.efer = state.efer
    sregs.apic_base = state.apic_base
    for i in range(4):
        sregs.interrupt_bitmap[i] = 0


def load_state(vcpu, state: CpuState | None = None) -> CpuState:
    """GET_REGS + GET_SREGS + GET_MSRS → CpuState."""
    regs = vcpu.get_regs()
    sregs = vcpu.get_sregs()
    return state_from_kvm(regs, sregs, vcpu.get_msrs(SYNCED_MSRS), state)


def store_state(vcpu, state: CpuState) -> None:
    """CpuState → SET_SREGS + SET_REGS + SET_MSRS (sregs first: KVM checks regs against the mode)."""
    regs = vcpu.get_regs()
    sregs = vcpu.get_sregs()
    state_to_kvm(state, regs, sregs)
    vcpu.set_sregs(sregs)
    vcpu.set_regs(regs)
    msrs = {i: v for i, v in state.msrs.items() if i in SYNCED_MSRS}
    if msrs:
        vcpu.set_msrs(msrs)
