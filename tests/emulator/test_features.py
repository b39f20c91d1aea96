"""What the vCPU's CPUID and control registers say an instruction may do: #UD for a feature
CPUID does not report, #UD/#NM before "cannot emulate" for a disabled x87/MMX/SSE/AVX unit,
the emulation error only where the CPU would really run the instruction."""

from __future__ import annotations

import iced_x86 as X
import pytest

from pykvm.emulator import TripleFault
from pykvm.emulator.cpuid import cr4_valid_bits, default_cpuid, runtime_view
from pykvm.emulator.features import FeatureCheck, feature_present
from pykvm.emulator.msrs import canonical
from pykvm.errors import EmulationError
from pykvm.x86.bits import CR0_EM, CR0_TS, CR4_OSFXSR, CR4_OSXSAVE
from tests.emulator.machine import protected_mode

UD, NM = 6, 7


def vector_raised(code: bytes, cr0: int = 0, cr4: int = 0, cpuid=None) -> int | None:
    """Run ``code`` (then hlt) in flat protected mode with no IDT: the vector of the first
    exception (its delivery then escalates to a triple fault), or None if it ran."""
    emu, _, _ = protected_mode(code + b"\xf4")
    if cpuid is not None:
        emu.cpuid = cpuid
        emu.features = FeatureCheck(cpuid)
    emu.state.cr0 |= cr0
    emu.state.cr4 |= cr4
    try:
        emu.run(10)
    except TripleFault as e:
        return e.vectors[0]
    return None


def test_a_feature_cpuid_does_not_report_is_ud():
    movbe = bytes.fromhex("0f38f0 03")           # movbe eax, [ebx]: no MOVBE in the default table
    assert vector_raised(movbe) == UD
    assert vector_raised(bytes.fromhex("0f44 c1")) is None     # cmove eax, ecx: CMOV is there


def test_hint_space_and_bsf_fallbacks_never_fault_for_a_missing_feature():
    check = FeatureCheck(default_cpuid)
    for code in ("0f0d08", "f30f1efb", "0f1c00", "f30fbcc0", "f30fbdc0"):   # prefetchw, endbr32, cldemote, tzcnt, lzcnt
        assert check.allows(X.Decoder(32, bytes.fromhex(code)).decode()), code


def test_vmx_and_svm_are_never_offered_whatever_cpuid_says():
    everything = lambda leaf, subleaf: (0xFFFFFFFF,) * 4   # noqa: E731
    assert not feature_present(everything, X.CpuidFeature.VMX)
    assert not feature_present(everything, X.CpuidFeature.SVM)
    assert feature_present(everything, X.CpuidFeature.AVX)


@pytest.mark.parametrize("code,cr0,cr4,expected", [
    ("d9e8", 0, 0, None),                       # fld1: x87 on, but not emulated
    ("d9e8", CR0_EM, 0, NM),                    # x87 with CR0.EM: #NM
    ("d9e8", CR0_TS, 0, NM),
    ("0f28c1", 0, 0, UD),                       # movaps: SSE with CR4.OSFXSR = 0 is #UD
    ("0f28c1", CR0_TS, CR4_OSFXSR, NM),
    ("0f28c1", 0, CR4_OSFXSR, None),            # SSE on: not emulated
    ("0f6fc1", CR0_EM, 0, UD),                  # movq mm0, mm1: MMX with CR0.EM is #UD
    ("0f01d0", 0, 0, UD),                       # xgetbv with CR4.OSXSAVE = 0
])
def test_disabled_units_fault_before_the_emulation_error(code, cr0, cr4, expected):
    if expected is None:
        with pytest.raises(EmulationError, match="cannot emulate"):
            vector_raised(bytes.fromhex(code), cr0, cr4)
    else:
        assert vector_raised(bytes.fromhex(code), cr0, cr4) == expected


def test_avx_is_ud_while_xcr0_holds_its_reset_value():
    avx = lambda leaf, subleaf: (0, 0, (1 << 28) | (1 << 26), 0) if leaf == 1 else default_cpuid(leaf, subleaf)  # noqa: E731
    assert vector_raised(bytes.fromhex("c5fc28c1"), cr4=CR4_OSXSAVE | CR4_OSFXSR, cpuid=avx) == UD   # vmovaps


def test_runtime_bits_follow_cr4_and_apic_base():
    regs = (0, 0, 1 << 26, 1 << 9)                               # XSAVE offered, APIC bit set
    assert runtime_view(regs, 1, 0, CR4_OSXSAVE, 0)[2] >> 27 & 1 == 1
    assert runtime_view(regs, 1, 0, 0, 1 << 11)[2] >> 27 & 1 == 0
    assert runtime_view(regs, 1, 0, 0, 0)[3] >> 9 & 1 == 0      # APIC disabled in APIC_BASE
    assert runtime_view((0, 0, 1 << 3, 0), 7, 0, 1 << 22, 0)[2] >> 4 & 1 == 1   # OSPKE


def test_cr4_bits_come_from_cpuid():
    assert cr4_valid_bits(default_cpuid) == 0x7FF
    osxsave = lambda leaf, subleaf: (0, 0, 1 << 26, 0) if leaf == 1 else (0, 0, 0, 0)   # noqa: E731
    assert cr4_valid_bits(osxsave) == 0x7FF | CR4_OSXSAVE
    assert vector_raised(bytes.fromhex("b800000400 0f22e0")) == 13     # mov cr4 with OSXSAVE: #GP


def test_canonical_addresses():
    assert canonical(0x00007FFFFFFFFFFF, 48) == 0x00007FFFFFFFFFFF
    assert canonical(0x0000800000000000, 48) == 0xFFFF800000000000
