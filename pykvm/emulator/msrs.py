"""The MSRs the emulator models beyond EFER, APIC_BASE and the TSC, and what a WRMSR may write.

Which MSRs exist is the vCPU's business: with a backend (the Machine gives the emulator its
vCPU, reached through KVM_GET_MSRS / KVM_SET_MSRS), every MSR outside ``OWN`` is read and
written there, so the emulator knows exactly the MSRs KVM implements. Without one (the
emulator on its own, in tests), ``PLAIN`` is the stand-alone table.

A value a CPU would refuse raises #GP(0), following the SDM and what KVM checks for the same
MSRs (so a guest sees the same processor on both sides of the PVM conversion): canonical
addresses in the base and entry-point MSRs, memory types in PAT and the MTRRs, no bits at or
above MAXPHYADDR in MTRR bases and masks, no reserved bits in MTRRdefType and APIC_BASE.
SYSENTER_ESP/EIP are made canonical rather than refused (AMD ignores their upper half, and KVM
keeps them canonical), and TSC_AUX keeps its low 32 bits.
"""

from __future__ import annotations

from pykvm.emulator.faults import CpuFault
from pykvm.x86 import bits as B

MTRR_CAP = 0xFE
MTRR_DEF_TYPE = 0x2FF
MTRR_PHYS_FIRST, MTRR_PHYS_LAST = 0x200, 0x20F          # eight base/mask pairs (MTRRcap.VCNT = 8)
MTRR_FIXED = frozenset((0x250, 0x258, 0x259, *range(0x268, 0x270)))

# MSRs the emulator keeps itself even when it has a backend: what its instructions use
# (SYSENTER, the segment bases, RDTSCP) and what moves with the vCPU state at a conversion.
OWN = frozenset({
    B.MSR_IA32_SYSENTER_CS, B.MSR_IA32_SYSENTER_ESP, B.MSR_IA32_SYSENTER_EIP, B.MSR_IA32_PAT,
    B.MSR_STAR, B.MSR_LSTAR, B.MSR_CSTAR, B.MSR_SYSCALL_MASK, B.MSR_FS_BASE, B.MSR_GS_BASE,
    B.MSR_KERNEL_GS_BASE, B.MSR_TSC_AUX,
})

# Through the backend the emulator's writes are KVM_SET_MSRS, i.e. host-initiated, which KVM
# treats differently for a few MSRs: these the guest may only read (WRMSR is #GP), and a guest
# write of the microcode revision is dropped, not stored.
GUEST_READ_ONLY = frozenset({
    0x34,        # MSR_SMI_COUNT
    0xCE,        # MSR_PLATFORM_INFO
    0x10A,       # IA32_ARCH_CAPABILITIES
    0x345,       # IA32_PERF_CAPABILITIES
})
GUEST_WRITE_IGNORED = frozenset({0x8B})     # IA32_BIOS_SIGN_ID / microcode revision

_MC_BANKS_END = B.MSR_IA32_MC0_CTL + 4 * 32            # KVM's most: 32 banks of CTL/STATUS/ADDR/MISC
_HWCR_MC_STATUS_WR_EN = 1 << 18


def guest_write_refused(index: int, value: int, cpuid, backend) -> bool:
    """Whether KVM refuses this WRMSR from the guest although it takes it from the host: a
    nonzero write to an MCi_STATUS register, which only an AMD processor with
    HWCR.McStatusWrEn set accepts (zero clears the register everywhere)."""
    if not (B.MSR_IA32_MC0_CTL <= index < _MC_BANKS_END and index & 3 == 1 and value):
        return False
    _, ebx, ecx, edx = cpuid(0, 0)
    if (ebx, edx, ecx) not in B.AMD_VENDORS:
        return True
    return not (backend.read(B.MSR_AMD64_HWCR) or 0) & _HWCR_MC_STATUS_WR_EN

# Without a backend, the emulator models these too (what boot code reads and writes).
PLAIN = frozenset({
    B.MSR_IA32_SYSENTER_CS, B.MSR_IA32_SYSENTER_ESP, B.MSR_IA32_SYSENTER_EIP, B.MSR_IA32_MISC_ENABLE,
    B.MSR_IA32_PAT, B.MSR_STAR, B.MSR_LSTAR, B.MSR_CSTAR, B.MSR_SYSCALL_MASK, B.MSR_FS_BASE,
    B.MSR_GS_BASE, B.MSR_KERNEL_GS_BASE, B.MSR_TSC_AUX,
    0x17,            # IA32_PLATFORM_ID
    0x8B,            # IA32_BIOS_SIGN_ID (microcode revision)
    0x179, 0x17A,    # MCG_CAP, MCG_STATUS
    MTRR_DEF_TYPE, *MTRR_FIXED, *range(MTRR_PHYS_FIRST, MTRR_PHYS_LAST + 1),
})
READ_ONLY = frozenset({MTRR_CAP})
DEFAULTS = {B.MSR_IA32_PAT: 0x0007040600070406, MTRR_CAP: 0x508}   # MTRRcap: WC, fixed ranges, 8 variable

_CANONICAL = frozenset({B.MSR_FS_BASE, B.MSR_GS_BASE, B.MSR_KERNEL_GS_BASE, B.MSR_LSTAR, B.MSR_CSTAR})
_MEMORY_TYPES = frozenset((0, 1, 4, 5, 6))            # UC, WC, WT, WP, WB (PAT adds 7, UC-)
_APIC_BASE_RESERVED = 0x2FF                             # bits 0-7 and 9
_APIC_EXTD, _APIC_EN = 1 << 10, 1 << 11


def _gp() -> CpuFault:
    return CpuFault(B.EXC_GP, 0)


def address_widths(cpuid) -> tuple[int, int]:
    """(MAXPHYADDR, linear address bits) from CPUID 0x80000008 (36 and 48 if it is absent)."""
    eax = cpuid(0x80000008, 0)[0]
    return (eax & 0xFF) or 36, (eax >> 8 & 0xFF) or 48


def canonical(value: int, linear_bits: int) -> int:
    """``value`` sign-extended from bit ``linear_bits - 1`` (64-bit)."""
    sign = 1 << (linear_bits - 1)
    return ((value & ((sign << 1) - 1)) ^ sign) - sign & 0xFFFFFFFFFFFFFFFF


def _memory_type_bytes_ok(value: int, types) -> bool:
    return all(value >> (8 * i) & 0xFF in types for i in range(8))


def checked_value(index: int, value: int, cpuid) -> int:
    """The value WRMSR stores into MSR ``index`` (one of ``PLAIN``), or #GP(0)."""
    phys_bits, linear_bits = address_widths(cpuid)
    if index in _CANONICAL:
        if canonical(value, linear_bits) != value:
            raise _gp()
    elif index in (B.MSR_IA32_SYSENTER_ESP, B.MSR_IA32_SYSENTER_EIP):
        value = canonical(value, linear_bits)
    elif index == B.MSR_TSC_AUX:
        value &= 0xFFFFFFFF
    elif index == B.MSR_IA32_PAT:
        if not _memory_type_bytes_ok(value, _MEMORY_TYPES | {7}):
            raise _gp()
    elif index == MTRR_DEF_TYPE:
        if value & ~0xCFF or value & 0xFF not in _MEMORY_TYPES:
            raise _gp()
    elif index in MTRR_FIXED:
        if not _memory_type_bytes_ok(value, _MEMORY_TYPES):
            raise _gp()
    elif MTRR_PHYS_FIRST <= index <= MTRR_PHYS_LAST:
        reserved = ~((1 << phys_bits) - 1) & 0xFFFFFFFFFFFFFFFF
        if index & 1:
            reserved |= 0x7FF                   # PHYSMASK: bits 0-10 reserved (11 is V)
        else:
            reserved |= 0xF00                   # PHYSBASE: bits 8-11 reserved, 0-7 the type
            if value & 0xFF not in _MEMORY_TYPES:
                raise _gp()
        if value & reserved:
            raise _gp()
    return value


def checked_apic_base(old: int, value: int, cpuid) -> int:
    """APIC_BASE: no reserved bits (x2APIC mode only where CPUID offers it), and no invalid
    state transition (x2APIC without the xAPIC enabled, or x2APIC straight back to xAPIC)."""
    phys_bits, _ = address_widths(cpuid)
    reserved = _APIC_BASE_RESERVED | (~((1 << phys_bits) - 1) & 0xFFFFFFFFFFFFFFFF)
    if not cpuid(1, 0)[2] >> 21 & 1:
        reserved |= _APIC_EXTD
    if value & reserved:
        raise _gp()
    mode = value & (_APIC_EN | _APIC_EXTD)
    if mode == _APIC_EXTD:
        raise _gp()
    if old & (_APIC_EN | _APIC_EXTD) == _APIC_EN | _APIC_EXTD and mode == _APIC_EN:
        raise _gp()
    return value
