"""Which instructions the vCPU's CPUID offers: an instruction of a feature the CPUID table does
not report raises #UD, as on a CPU without that feature, instead of ending the run.

iced-x86 names the CPUID feature(s) every instruction needs (``Instruction.cpuid_features()``);
this module maps them to the CPUID bit that reports each, and answers from the same CPUID
function the emulator's CPUID instruction uses, so a guest that checks a bit and one that just
tries the instruction see the same processor. Three groups need care:

* the base ISA up to the 486 and the instructions every 64-bit-capable CPU has are always there;
* instructions in the hint-NOP space (PREFETCHW, CLDEMOTE, ENDBR, RDSSP, ...) execute as NOPs on
  CPUs without the feature, so a missing bit never makes them fault;
* VMX and SVM instructions fault whatever CPUID says: they need CR4.VMXE or EFER.SVME, which
  non-PVM mode never lets a guest set.
"""

from __future__ import annotations

import iced_x86 as X

F = X.CpuidFeature
EAX, EBX, ECX, EDX = range(4)

# Feature -> (leaf, subleaf, register, bit).
CPUID_BITS: dict[int, tuple[int, int, int, int]] = {
    F.FPU: (1, 0, EDX, 0), F.FPU287: (1, 0, EDX, 0), F.FPU387: (1, 0, EDX, 0),
    F.TSC: (1, 0, EDX, 4), F.MSR: (1, 0, EDX, 5), F.CX8: (1, 0, EDX, 8), F.SEP: (1, 0, EDX, 11),
    F.CMOV: (1, 0, EDX, 15), F.CLFSH: (1, 0, EDX, 19), F.MMX: (1, 0, EDX, 23), F.FXSR: (1, 0, EDX, 24),
    F.SSE: (1, 0, EDX, 25), F.SSE2: (1, 0, EDX, 26),
    F.SSE3: (1, 0, ECX, 0), F.PCLMULQDQ: (1, 0, ECX, 1), F.MONITOR: (1, 0, ECX, 3), F.VMX: (1, 0, ECX, 5),
    F.SMX: (1, 0, ECX, 6), F.SSSE3: (1, 0, ECX, 9), F.FMA: (1, 0, ECX, 12), F.CMPXCHG16B: (1, 0, ECX, 13),
    F.SSE4_1: (1, 0, ECX, 19), F.SSE4_2: (1, 0, ECX, 20), F.MOVBE: (1, 0, ECX, 22), F.POPCNT: (1, 0, ECX, 23),
    F.AES: (1, 0, ECX, 25), F.XSAVE: (1, 0, ECX, 26), F.AVX: (1, 0, ECX, 28), F.F16C: (1, 0, ECX, 29),
    F.RDRAND: (1, 0, ECX, 30),
    F.FSGSBASE: (7, 0, EBX, 0), F.SGX1: (7, 0, EBX, 2), F.BMI1: (7, 0, EBX, 3), F.HLE: (7, 0, EBX, 4),
    F.AVX2: (7, 0, EBX, 5), F.BMI2: (7, 0, EBX, 8), F.INVPCID: (7, 0, EBX, 10), F.RTM: (7, 0, EBX, 11),
    F.MPX: (7, 0, EBX, 14), F.AVX512F: (7, 0, EBX, 16), F.AVX512DQ: (7, 0, EBX, 17),
    F.RDSEED: (7, 0, EBX, 18), F.ADX: (7, 0, EBX, 19), F.SMAP: (7, 0, EBX, 20), F.AVX512_IFMA: (7, 0, EBX, 21),
    F.CLFLUSHOPT: (7, 0, EBX, 23), F.CLWB: (7, 0, EBX, 24), F.AVX512PF: (7, 0, EBX, 26),
    F.AVX512ER: (7, 0, EBX, 27), F.AVX512CD: (7, 0, EBX, 28), F.SHA: (7, 0, EBX, 29),
    F.AVX512BW: (7, 0, EBX, 30), F.AVX512VL: (7, 0, EBX, 31),
    F.AVX512_VBMI: (7, 0, ECX, 1), F.PKU: (7, 0, ECX, 3), F.WAITPKG: (7, 0, ECX, 5),
    F.AVX512_VBMI2: (7, 0, ECX, 6), F.GFNI: (7, 0, ECX, 8), F.VAES: (7, 0, ECX, 9),
    F.VPCLMULQDQ: (7, 0, ECX, 10), F.AVX512_VNNI: (7, 0, ECX, 11), F.AVX512_BITALG: (7, 0, ECX, 12),
    F.AVX512_VPOPCNTDQ: (7, 0, ECX, 14), F.RDPID: (7, 0, ECX, 22), F.MOVDIRI: (7, 0, ECX, 27),
    F.MOVDIR64B: (7, 0, ECX, 28), F.ENQCMD: (7, 0, ECX, 29),
    F.AVX512_4VNNIW: (7, 0, EDX, 2), F.AVX512_4FMAPS: (7, 0, EDX, 3), F.SERIALIZE: (7, 0, EDX, 14),
    F.TSXLDTRK: (7, 0, EDX, 16), F.PCONFIG: (7, 0, EDX, 18), F.AVX512_FP16: (7, 0, EDX, 23),
    F.AVX_VNNI: (7, 1, EAX, 4), F.AVX512_BF16: (7, 1, EAX, 5),
    F.XSAVEOPT: (0xD, 1, EAX, 0), F.XSAVEC: (0xD, 1, EAX, 1), F.XSAVES: (0xD, 1, EAX, 3),
    F.SYSCALL: (0x80000001, 0, EDX, 11), F.RDTSCP: (0x80000001, 0, EDX, 27), F.X64: (0x80000001, 0, EDX, 29),
    F.D3NOWEXT: (0x80000001, 0, EDX, 30), F.D3NOW: (0x80000001, 0, EDX, 31),
    F.SVM: (0x80000001, 0, ECX, 2), F.LZCNT: (0x80000001, 0, ECX, 5), F.SSE4A: (0x80000001, 0, ECX, 6),
    F.XOP: (0x80000001, 0, ECX, 11), F.SKINIT: (0x80000001, 0, ECX, 12), F.LWP: (0x80000001, 0, ECX, 15),
    F.FMA4: (0x80000001, 0, ECX, 16), F.TBM: (0x80000001, 0, ECX, 21), F.MONITORX: (0x80000001, 0, ECX, 29),
    F.CLZERO: (0x80000008, 0, EBX, 0), F.RDPRU: (0x80000008, 0, EBX, 4), F.MCOMMIT: (0x80000008, 0, EBX, 8),
    F.WBNOINVD: (0x80000008, 0, EBX, 9), F.INVLPGB: (0x80000008, 0, EBX, 3),
}

# Always present on anything that runs pykvm's guests (CPUID, RDPMC, PAUSE, ... have no bit of their own).
BASE = frozenset((F.INTEL8086, F.INTEL186, F.INTEL286, F.INTEL386, F.INTEL486, F.CPUID, F.PAUSE,
                  F.MULTIBYTENOP, F.RDPMC, F.SMM))

# Hint-space instructions: NOPs where the feature is absent.
HINTS = frozenset((F.PREFETCHW, F.PREFETCHWT1, F.PREFETCHITI, F.CLDEMOTE, F.CET_IBT, F.CET_SS))

# Never available in non-PVM mode whatever CPUID says (CR4.VMXE / EFER.SVME cannot be set).
NEVER = frozenset((F.VMX, F.SVM, F.SKINIT, F.SKINIT_OR_SVM, F.SMX, F.INVEPT, F.INVVPID))


def feature_present(cpuid, feature: int) -> bool:
    """Whether ``cpuid`` (a (leaf, subleaf) -> (eax, ebx, ecx, edx) function) reports ``feature``."""
    if feature in BASE or feature in HINTS:
        return True
    if feature in NEVER:
        return False
    if feature == F.HLE_OR_RTM:
        return feature_present(cpuid, F.HLE) or feature_present(cpuid, F.RTM)
    where = CPUID_BITS.get(feature)
    if where is None:
        return False        # Cyrix, VIA Padlock, Itanium, ...: not a processor pykvm describes
    leaf, subleaf, reg, bit = where
    return bool(cpuid(leaf, subleaf)[reg] >> bit & 1)


# Encodings that mean another instruction where their feature is absent (the prefix that makes
# them new is ignored by older processors): F3 0F BC/BD are BSF/BSR without BMI1/LZCNT, and
# F3 0F 09 is WBINVD without WBNOINVD. Their handlers choose with ``falls_back``.
FALLS_BACK = {X.Mnemonic.TZCNT: F.BMI1, X.Mnemonic.LZCNT: F.LZCNT, X.Mnemonic.WBNOINVD: F.WBNOINVD}


def falls_back(cpuid, mnemonic: int) -> bool:
    """Whether ``mnemonic`` (one of ``FALLS_BACK``) runs as its older instruction with ``cpuid``."""
    return not feature_present(cpuid, FALLS_BACK[mnemonic])


class FeatureCheck:
    """Per-emulator cache: CPUID-feature tuple of an instruction -> whether it may execute."""

    def __init__(self, cpuid):
        self.cpuid = cpuid
        self._known: dict[tuple, bool] = {}

    def allows(self, ins) -> bool:
        if ins.mnemonic in FALLS_BACK:
            return True
        features = tuple(ins.cpuid_features())
        ok = self._known.get(features)
        if ok is None:
            ok = self._known[features] = all(feature_present(self.cpuid, f) for f in features)
        return ok
