"""The vCPU's CPUID: built once from what KVM supports, given to KVM and answered by the emulator.

Both sides of the PVM boundary must describe the same processor, so the emulator's CPUID
instruction answers from the vCPU's own table as KVM holds it after KVM_SET_CPUID2 (read back
with KVM_GET_CPUID2: PVM adjusts the table it is given), looked up with KVM's rules.
"""

from __future__ import annotations

from pykvm.kvm._ffi import ffi
from pykvm.x86.bits import AMD_VENDORS

_FLAG_SIGNIFICANT_INDEX = 1  # KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the leaf has subleaves
_ZEROS = (0, 0, 0, 0)
_X2APIC, _TSC_DEADLINE = 1 << 21, 1 << 24       # leaf 1 ECX


def vcpu_cpuid(supported, apic_id: int):
    """A copy of ``supported`` (a ``struct kvm_cpuid2 *``) with the APIC IDs made this vCPU's own
    and only the local APIC pykvm models.

    KVM_GET_SUPPORTED_CPUID reports the initial APIC ID of whichever host core answered
    (leaf 1 EBX[31:24], leaves 0xB/0x1F EDX), so a VMM must set them, as QEMU and
    Firecracker do; otherwise CPUID would differ from run to run. It also reports x2APIC and
    the TSC-deadline timer, which KVM emulates only in an in-kernel APIC: pykvm's local APIC
    (devices/lapic.py) is an xAPIC without TSC-deadline mode, so the vCPU does not offer them.
    """
    n = supported.nent
    cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
    cpuid.nent = n
    ffi.memmove(cpuid.entries, supported.entries, ffi.sizeof("struct kvm_cpuid_entry2") * n)
    for i in range(n):
        e = cpuid.entries[i]
        if e.function == 1:
            e.ebx = (e.ebx & 0x00FFFFFF) | ((apic_id & 0xFF) << 24)
            e.ecx &= ~(_X2APIC | _TSC_DEADLINE)
        elif e.function in (0xB, 0x1F):
            e.edx = apic_id
    return cpuid


class CpuidTable:
    """CPUID lookups over a ``struct kvm_cpuid2``, with KVM's rules: call it with (leaf, subleaf).

    A leaf flagged as indexed answers only the subleaves it lists (others read as zeros, except
    leaves 0xB/0x1F, whose ECX echoes the level number); an unindexed leaf ignores the subleaf.
    For a vendor other than AMD/Hygon, a leaf above the maximum of its range answers as the
    maximum basic leaf does, as Intel CPUs (and KVM) do; on AMD it reads as zeros.
    """

    def __init__(self, cpuid):
        self._indexed: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self._plain: dict[int, tuple[int, int, int, int]] = {}
        for i in range(cpuid.nent):
            e = cpuid.entries[i]
            regs = (e.eax, e.ebx, e.ecx, e.edx)
            if e.flags & _FLAG_SIGNIFICANT_INDEX:
                self._indexed[(e.function, e.index)] = regs
                self._plain.setdefault(e.function, None)
            else:
                self._plain[e.function] = regs
        vendor = self._plain.get(0) or (0, 0, 0, 0)
        self._intel_ranges = (vendor[1], vendor[3], vendor[2]) not in AMD_VENDORS

    def __call__(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        found = self._lookup(leaf, subleaf)
        if found is not None:
            return found
        if self._intel_ranges and self._out_of_range(leaf):
            leaf = self._plain[0][0]          # the maximum basic leaf answers instead
            found = self._lookup(leaf, subleaf)
            if found is not None:
                return found
        if leaf in (0xB, 0x1F) and (leaf, 1) in self._indexed:
            return 0, 0, subleaf & 0xFF, self._indexed[(leaf, 1)][3]
        return _ZEROS

    def _lookup(self, leaf: int, subleaf: int):
        regs = self._plain.get(leaf)
        if regs is None:
            return self._indexed.get((leaf, subleaf))
        return regs

    def _out_of_range(self, leaf: int) -> bool:
        """Whether ``leaf`` lies above the maximum its range's first leaf reports (basic,
        hypervisor 0x4000xx00, extended 0x80000000, Centaur 0xc0000000)."""
        if self._plain.get(0) is None:
            return False
        if 0x40000000 <= leaf <= 0x4FFFFFFF:
            first = leaf & 0xFFFFFF00
        elif leaf >= 0xC0000000:
            first = 0xC0000000
        else:
            first = leaf & 0x80000000
        head = self._lookup(first, 0)
        return head is None or leaf > head[0]
