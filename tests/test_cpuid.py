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


def test_subleaves_an_indexed_leaf_does_not_list_read_as_zeros():
    table = CpuidTable(_cpuid([(0xD, 0, 1, (7, 0x240, 0x980, 0)), (0xD, 2, 1, (0x100, 0x240, 0, 0)),
                               (0xB, 1, 1, (4, 8, 0x201, 5))]))
    assert table(0xD, 3) == (0, 0, 0, 0)
    assert table(0xB, 7) == (0, 0, 7, 5)       # 0xB/0x1F: ECX echoes the level, EDX the x2APIC ID


def test_out_of_range_leaves_follow_the_vendor():
    """Intel (and KVM for non-AMD vendors): a leaf above its range's maximum answers as the
    maximum basic leaf; AMD: zeros."""
    intel = CpuidTable(_cpuid([(0, 0, 0, (2, 0x756E6547, 0x6C65746E, 0x49656E69)), (2, 0, 0, (9, 9, 9, 9)),
                               (0x80000000, 0, 0, (0x80000001, 0, 0, 0))]))
    amd = CpuidTable(_cpuid([(0, 0, 0, (2, 0x68747541, 0x444D4163, 0x69746E65)), (2, 0, 0, (9, 9, 9, 9))]))
    assert intel(5, 0) == (9, 9, 9, 9) and intel(0x80000005, 0) == (9, 9, 9, 9)
    assert intel(0x80000001, 0) == (0, 0, 0, 0)    # in range, just absent
    assert amd(5, 0) == (0, 0, 0, 0)


@pytest.mark.kvm
def test_pvm_mode_shows_the_cpuid_the_emulator_answers():
    """A 64-bit guest in PVM mode runs CPUID for every leaf and subleaf of the vCPU's table (and
    one past each indexed leaf's last subleaf): each answer equals the emulator's, which is the
    table KVM_GET_CPUID2 returns plus the bits KVM derives from CR4 and APIC_BASE. (Measured:
    on these hosts nothing differs; the table PVM holds differs from the one it was given.)"""
    import io
    import struct

    from pykvm.emulator.cpuid import runtime_view
    from pykvm.machine import Machine
    from tests.asm import HAVE_GNU_AS, assemble

    if not HAVE_GNU_AS:
        pytest.skip("GNU as/ld not installed")
    results = 0x100000
    with Machine(memory_size=4 << 20, serial_output=io.BytesIO()) as machine:
        cpuid = machine.vcpu.get_cpuid()
        subleaves: dict[int, set] = {}
        for i in range(cpuid.nent):
            e = cpuid.entries[i]
            subleaves.setdefault(e.function, set()).add(e.index if e.flags & 1 else 0)
        pairs = [(leaf, sub) for leaf, subs in sorted(subleaves.items()) for sub in sorted(subs) + [max(subs) + 1]]
        source = ".code64\n" + "".join(
            f"mov eax, {leaf:#x}\nmov ecx, {sub}\ncpuid\n"
            + "".join(f"mov [{results + 16 * i + 4 * j:#x}], {reg}\n" for j, reg in enumerate(("eax", "ebx", "ecx", "edx")))
            for i, (leaf, sub) in enumerate(pairs)) + "hlt\n"
        machine.load(assemble(source), fmt="flat", mode="long", load_addr=0x200000)
        assert machine.run(timeout=10) == 0
        state = machine.current_state()
        for i, (leaf, sub) in enumerate(pairs):
            seen = struct.unpack("<4I", machine.memory.read(results + 16 * i, 16))
            assert seen == runtime_view(machine.cpuid(leaf, sub), leaf, sub, state.cr4, state.apic_base), \
                f"CPUID {leaf:#x}.{sub}"
