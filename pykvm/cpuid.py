"""The vCPU's CPUID: built once from what KVM supports, given to KVM and answered by the emulator.

Both sides of the PVM boundary must describe the same processor, so the table handed
to KVM_SET_CPUID2 is also what the userspace emulator's CPUID instruction returns.
"""

from __future__ import annotations

from pykvm.kvm._ffi import ffi

_FLAG_SIGNIFICANT_INDEX = 1  # KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the leaf has subleaves


def vcpu_cpuid(supported, apic_id: int):
    """A copy of ``supported`` (a ``struct kvm_cpuid2 *``) with the APIC IDs made this vCPU's own.

    KVM_GET_SUPPORTED_CPUID reports the initial APIC ID of whichever host core answered
    (leaf 1 EBX[31:24], leaves 0xB/0x1F EDX), so a VMM must set them, as QEMU and
    Firecracker do; otherwise CPUID would differ from run to run.
    """
    n = supported.nent
    cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
    cpuid.nent = n
    ffi.memmove(cpuid.entries, supported.entries, ffi.sizeof("struct kvm_cpuid_entry2") * n)
    for i in range(n):
        e = cpuid.entries[i]
        if e.function == 1:
            e.ebx = (e.ebx & 0x00FFFFFF) | ((apic_id & 0xFF) << 24)
        elif e.function in (0xB, 0x1F):
            e.edx = apic_id
    return cpuid


class CpuidTable:
    """CPUID lookups over a ``struct kvm_cpuid2``: call it with (leaf, subleaf)."""

    def __init__(self, cpuid):
        self._entries = {}
        for i in range(cpuid.nent):
            e = cpuid.entries[i]
            index = e.index if e.flags & _FLAG_SIGNIFICANT_INDEX else 0
            self._entries[(e.function, index)] = (e.eax, e.ebx, e.ecx, e.edx)

    def __call__(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        entries = self._entries
        return entries.get((leaf, subleaf)) or entries.get((leaf, 0)) or (0, 0, 0, 0)
