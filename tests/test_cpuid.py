"""The vCPU's CPUID table: APIC IDs made the vCPU's own, lookups by leaf and subleaf."""

from __future__ import annotations

import pytest

from pykvm.cpuid import CpuidTable, vcpu_cpuid
from pykvm.kvm._ffi import ffi


def _cpuid(entries):
    c = ffi.new("struct kvm_cpuid2 *", {"nent": len(entries), "entries": len(entries)})
    c.nent = len(entries)
    for i, (function, index, flags, regs) in enumerate(entries):
        e = c.entries[i]
        e.function, e.index, e.flags = function, index, flags
        e.eax, e.ebx, e.ecx, e.edx = regs
    return c


def test_apic_ids_become_the_vcpus_own_and_the_input_is_untouched():
    supported = _cpuid([(1, 0, 0, (0x906EA, 0x07100800, 0, 0)), (0xB, 0, 1, (1, 2, 0x100, 7)),
                        (0xB, 1, 1, (4, 8, 0x201, 7))])
    mine = vcpu_cpuid(supported, apic_id=3)
    table = CpuidTable(mine)
    assert table(1, 0)[1] == 0x03100800
    assert table(0xB, 0)[3] == 3 and table(0xB, 1)[3] == 3
    assert supported.entries[0].ebx == 0x07100800


def test_subleaf_ignored_for_leaves_without_one_and_unknown_leaves_are_zero():
    table = CpuidTable(_cpuid([(0, 0, 0, (0xD, 1, 2, 3)), (7, 0, 1, (0, 9, 0, 0)), (7, 1, 1, (5, 0, 0, 0))]))
    assert table(0, 5) == (0xD, 1, 2, 3)
    assert table(7, 1) == (5, 0, 0, 0)
    assert table(0x12345, 0) == (0, 0, 0, 0)


@pytest.mark.kvm
def test_real_supported_cpuid_offers_long_mode_to_the_emulator():
    from pykvm.kvm import Kvm

    with Kvm() as kvm:
        table = CpuidTable(vcpu_cpuid(kvm.supported_cpuid(), 0))
    assert table(0x80000001, 0)[3] & (1 << 29)
    assert table(1, 0)[1] >> 24 == 0
