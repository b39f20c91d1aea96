"""The built-in CPUID table used when the caller gives no CPUID function.

Just enough for boot code to find what it checks: vendor "pykvmPVM    ", the long-mode bit,
PAE/PSE/MSR/TSC/CX8/CMOV, and the extended leaves' address sizes.
"""

from __future__ import annotations


def _vendor_regs(vendor: bytes) -> tuple[int, int, int]:
    b, d, c = (int.from_bytes(vendor[i:i + 4], "little") for i in (0, 4, 8))
    return b, d, c


_VENDOR = _vendor_regs(b"pykvmPVM    ")

# Leaf 1 EDX: FPU(0) VME(1)? no; PSE(3) TSC(4) MSR(5) PAE(6) CX8(8) APIC(9) SEP(11) PGE(13) CMOV(15) PAT(16)
_LEAF1_EDX = (1 << 0) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 11) | (1 << 13) \
    | (1 << 15) | (1 << 16)
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
