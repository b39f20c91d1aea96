"""CPUID as the emulator answers it, and the control-register bits it makes valid.

``default_cpuid`` is the built-in table used when the caller gives no CPUID function (the
Machine gives the vCPU's own table): just enough for boot code to find what it checks, vendor
"pykvmPVM    ", the long-mode bit, the x86-64 baseline, and the extended leaves' address sizes.

``runtime_view`` applies what KVM keeps current at run time (kvm_update_cpuid_runtime) to a
table entry: OSXSAVE follows CR4.OSXSAVE, APIC follows APIC_BASE.EN, OSPKE follows CR4.PKE.
XCR0 is not modelled (XSETBV is not emulated), so leaf 0xD keeps the reset-time sizes the
table holds. ``cr4_valid_bits`` is the set of CR4 bits a MOV to CR4 may set with this CPUID,
as KVM decides it.
"""

from __future__ import annotations


def _vendor_regs(vendor: bytes) -> tuple[int, int, int]:
    b, d, c = (int.from_bytes(vendor[i:i + 4], "little") for i in (0, 4, 8))
    return b, d, c


_VENDOR = _vendor_regs(b"pykvmPVM    ")

# Leaf 1 EDX: FPU(0) PSE(3) TSC(4) MSR(5) PAE(6) CX8(8) SEP(11) PGE(13) CMOV(15) PAT(16) CLFSH(19)
# MMX(23) FXSR(24) SSE(25) SSE2(26): the baseline of every x86-64 processor.
_LEAF1_EDX = (1 << 0) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 11) | (1 << 13) \
    | (1 << 15) | (1 << 16) | (1 << 19) | (1 << 23) | (1 << 24) | (1 << 25) | (1 << 26)
# Leaf 0x80000001 EDX: SYSCALL(11) NX(20) LM(29)
_EXT1_EDX = (1 << 11) | (1 << 20) | (1 << 29)


def default_cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """(EAX, EBX, ECX, EDX) for ``leaf``/``subleaf``; unknown leaves read as zeros."""
    b, d, c = _VENDOR
    if leaf == 0:
        return 1, b, c, d
    if leaf == 1:
        # Family 6, model 0x2a-ish signature; one logical processor.
        return 0x000206A0, 0x00010800, 0, _LEAF1_EDX
    if leaf == 0x80000000:
        return 0x80000008, b, c, d
    if leaf == 0x80000001:
        return 0, 0, 0, _EXT1_EDX
    if leaf == 0x80000008:
        return 0x3028, 0, 0, 0   # 40 physical, 48 linear address bits
    return 0, 0, 0, 0


_CR4_OSXSAVE, _CR4_PKE = 1 << 18, 1 << 22
_APIC_BASE_ENABLE = 1 << 11


def _bit(value: int, bit: int, on) -> int:
    return value | (1 << bit) if on else value & ~(1 << bit)


def runtime_view(regs: tuple[int, int, int, int], leaf: int, subleaf: int, cr4: int, apic_base: int):
    """``regs`` of ``leaf``/``subleaf`` with the bits KVM derives from the vCPU's state."""
    eax, ebx, ecx, edx = regs
    if leaf == 1:
        if ecx >> 26 & 1:                                   # XSAVE: OSXSAVE mirrors CR4
            ecx = _bit(ecx, 27, cr4 & _CR4_OSXSAVE)
        edx = _bit(edx, 9, apic_base & _APIC_BASE_ENABLE)
    elif leaf == 7 and subleaf == 0 and ecx >> 3 & 1:      # PKU: OSPKE mirrors CR4.PKE
        ecx = _bit(ecx, 4, cr4 & _CR4_PKE)
    return eax, ebx, ecx, edx


# CR4 bits every processor pykvm describes accepts (VME..PGE, PCE, OSFXSR, OSXMMEXCPT), and the
# ones that need a CPUID feature: (CR4 bit, leaf, subleaf, register, bit).
_CR4_ALWAYS = 0x7FF
_CR4_BY_FEATURE = (
    (11, 7, 0, 2, 2),     # UMIP
    (12, 7, 0, 2, 16),    # LA57
    (13, 1, 0, 2, 5),     # VMXE
    (16, 7, 0, 1, 0),     # FSGSBASE
    (17, 1, 0, 2, 17),    # PCIDE
    (18, 1, 0, 2, 26),    # OSXSAVE
    (20, 7, 0, 1, 7),     # SMEP
    (21, 7, 0, 1, 20),    # SMAP
    (22, 7, 0, 2, 3),     # PKE
)


def cr4_valid_bits(cpuid) -> int:
    valid = _CR4_ALWAYS
    for cr4_bit, leaf, subleaf, reg, bit in _CR4_BY_FEATURE:
        if cpuid(leaf, subleaf)[reg] >> bit & 1:
            valid |= 1 << cr4_bit
    return valid
