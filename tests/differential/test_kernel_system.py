"""Emulator vs the host kernel's emulator: segment loads, port I/O through the bus, CPUID,
system registers and MSRs, and the mode switches a boot loader makes (real → protected →
back to real / unreal, protected → long, real → long).
"""

from __future__ import annotations

import io
import struct

import pytest

from pykvm.x86.state import DescriptorTable
from pykvm.x86 import boot
from pykvm.x86 import descriptors as D
from tests.differential.harness import DATA, MEMORY_SIZE, SCRATCH_PORT, Snippet, check_kernel, run_userspace

pytestmark = pytest.mark.kvm

LOADER_GDT = [(boot.GDT_ADDR, boot.build_gdt())]
PAGE_TABLES = boot.identity_page_tables(MEMORY_SIZE)
GDTR = f"gdtr: .word {boot.GDT_LIMIT}\n .long {boot.GDT_ADDR}\n"
EXTRA_GDT = 0x600   # a bigger GDT for the cases that need LDT/TSS descriptors


def extra_gdt() -> list:
    """The loader GDT plus 0x30: an LDT (base 0x700, 2 entries), 0x38: a 32-bit TSS
    (base 0x800), 0x40: a data segment with base 0x9000 and limit 0xfff, 0x48: DPL-3 data."""
    entries = boot.gdt_entries() + [
        D.encode_descriptor(0x700, 0xF, 0x2, s=0),                 # LDT, present
        D.encode_descriptor(0x800, 0x67, 0x9, s=0),                # available 32-bit TSS
        D.encode_descriptor(DATA, 0xFFF, 0x3, db=1),               # small data segment
        D.encode_descriptor(0, 0xFFFFF, 0x3, dpl=3, db=1, g=1),    # DPL 3 flat data
    ]
    ldt = [0, D.encode_descriptor(0x20000, 0xFFFF, 0x3, db=1)]    # LDT 0x0c: data at 0x20000
    return [(EXTRA_GDT, struct.pack(f"<{len(entries)}Q", *entries)),
            (0x700, struct.pack("<2Q", *ldt))]


EXTRA_GDTR = f"xgdtr: .word {(len(boot.gdt_entries()) + 4) * 8 - 1}\n .long {EXTRA_GDT}\n"

CASES = {
    # -- segment loads -------------------------------------------------------------------------
    "real_mode_segment_loads": Snippet("""
        mov ax, 0x0900
        mov ds, ax
        mov bx, [0x10]
        push ds
        pop es
        mov ax, 0x1234
        mov fs, ax
        mov gs, [0x0]
        lds si, [0x20]
        les di, [0x24]
        lfs bp, [0x28]
        lgs cx, [0x28]
        mov ax, ss
        lss sp, [es:0x2c]
        push 0x77
        mov dx, ss
        """, memory=[(DATA, bytes.fromhex("3412") + bytes(14) + b"\xcd\xab" + bytes(14)
                      + bytes.fromhex("1000 0008 2000 0007 3000 0006 f0ff 0005"))]),
    "protected_mode_segment_loads": Snippet("""
        mov ax, 0x28
        mov ds, ax
        mov bx, [0x9000]
        mov ax, 0x10
        mov ds, ax
        xor ax, ax
        mov es, ax
        mov fs, ax
        push 0x10
        pop gs
        lds esi, [0x9010]
        les edi, [0x9018]
        mov ax, 0x10
        mov es, ax
        mov cx, ds
        """, bits=32, memory=[(DATA, b"\x11\x22" + bytes(14) + bytes.fromhex("44332211 1000 0000 88776655 2800"))]
        + LOADER_GDT),
    "lldt_ltr_and_ldt_selectors": Snippet(f"""
        lgdt [xgdtr]
        mov ax, 0x30
        lldt ax
        mov ax, 0x38
        ltr ax
        sldt bx
        str cx
        mov ax, 0x0c
        mov es, ax
        mov edx, es:[0x10]
        mov ax, 0x40
        mov fs, ax
        mov esi, fs:[4]
        mov ax, 0x10
        mov es, ax
        jmp done
    {EXTRA_GDTR}
    done:
        """, bits=32, memory=extra_gdt() + [(0x20010, b"LDT!"), (DATA, b"xxxxFS:4")]),
    # -- port I/O ------------------------------------------------------------------------------
    "in_out_all_sizes": Snippet(f"""
        mov dx, {SCRATCH_PORT + 4}
        in al, dx
        mov bl, al
        in ax, dx
        mov cx, ax
        in eax, dx
        mov esi, eax
        mov al, 0x11
        out dx, al
        mov ax, 0x2233
        out dx, ax
        mov eax, 0x44556677
        out dx, eax
        in al, {SCRATCH_PORT & 0xFF}
        out {SCRATCH_PORT & 0xFF}, al
        """),
    "rep_ins_outs16": Snippet(f"""
        mov dx, {SCRATCH_PORT + 2}
        mov di, 0x9100
        mov cx, 5
        rep insb
        mov cx, 3
        rep insw
        mov si, 0x9000
        mov cx, 6
        rep outsb
        std
        mov si, 0x900c
        mov cx, 3
        rep outsd
        cld
        insd
        outsw
        """, memory=[(DATA, bytes(range(0x80, 0x90)))]),
    "rep_ins_outs32": Snippet(f"""
        mov dx, {SCRATCH_PORT + 8}
        mov edi, 0x20000
        mov ecx, 0x40
        rep insd
        mov esi, 0x9000
        mov ecx, 0x10
        rep outsw
        """, bits=32, memory=[(DATA, bytes(range(0x20, 0x40)))]),
    # -- system registers, MSRs ----------------------------------------------------------------
    "descriptor_tables_and_msw": Snippet("""
        sgdt [0x9000]
        sidt [0x9008]
        lidt [0x9010]
        sidt [0x9018]
        smsw ax
        smsw [0x9020]
        mov ebx, cr0
        mov ecx, cr4
        mov edx, cr3
        mov eax, 0x11000
        mov cr3, eax
        mov eax, cr4
        or eax, 0x10
        mov cr4, eax
        mov eax, cr0
        or eax, 8
        mov cr0, eax
        clts
        mov esi, cr0
        """, memory=[(0x9010, bytes.fromhex("ff03 00000000"))]),
    "lmsw_sets_pe_and_cannot_clear_it": Snippet("""
        lmsw [0x9000]
        smsw ax
        mov bx, 0x0e
        lmsw bx
        smsw cx
        jmp 0x08:pm
    pm:
        .code32
        mov ax, 0x10
        mov ds, ax
        """, memory=[(0x9000, b"\x01\x00")] + LOADER_GDT,
        setup=lambda s: setattr(s, "gdt", DescriptorTable(boot.GDT_ADDR, boot.GDT_LIMIT))),
    "msrs": Snippet("""
        mov ecx, 0x174
        mov eax, 0x08
        xor edx, edx
        wrmsr
        mov ecx, 0x175
        mov eax, 0x12345678
        wrmsr
        mov ecx, 0x176
        mov eax, 0x9abcdef0
        wrmsr
        mov ecx, 0xc0000081
        mov eax, 0
        mov edx, 0x00230010
        wrmsr
        mov ecx, 0x174
        rdmsr
        mov [0x9000], eax
        mov ecx, 0x175
        rdmsr
        mov [0x9004], eax
        mov ecx, 0xc0000081
        rdmsr
        mov [0x9008], edx
        mov ecx, 0xc0000080
        rdmsr
        mov [0x900c], eax
        mov ecx, 0x277
        rdmsr
        mov [0x9010], eax
        mov [0x9014], edx
        """, bits=32),
    # -- mode switches ---------------------------------------------------------------------------
    "real_to_protected": Snippet(f"""
        cli
        lgdt [gdtr]
        mov eax, cr0
        or al, 1
        mov cr0, eax
        jmp 0x08:pm
    {GDTR}
    pm:
        .code32
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, 0x80000
        push 0x12345678
        mov ebx, [esp]
        mov ecx, 0x100000
        mov dword ptr [ecx], 0xfeedface
        """, memory=LOADER_GDT),
    "protected_back_to_real_keeps_unreal_limits": Snippet(f"""
        lgdt [gdtr]
        mov eax, cr0
        or al, 1
        mov cr0, eax
        jmp 0x08:pm
    {GDTR}
    pm:
        .code32
        mov ax, 0x10
        mov fs, ax
        jmp 0x20:pm16
    pm16:
        .code16
        mov ax, 0x28
        mov ds, ax
        mov es, ax
        mov eax, cr0
        and al, 0xfe
        mov cr0, eax
        jmp 0:real
    real:
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov esi, 0x100000
        mov dword ptr fs:[esi], 0xdeadbeef
        mov ebx, fs:[esi]
        mov cx, fs
        """, memory=LOADER_GDT),
    "protected_to_long": Snippet("""
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov eax, 0x1000
        mov cr3, eax
        mov ecx, 0xc0000080
        rdmsr
        or eax, 0x100
        wrmsr
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov ecx, 0xc0000080
        rdmsr
        mov ebx, eax
        jmp 0x18:lm
    lm:
        .code64
        """, bits=32, memory=LOADER_GDT + PAGE_TABLES),
    "real_to_long": Snippet(f"""
        lgdt [gdtr]
        mov eax, 0x20
        mov cr4, eax
        mov eax, 0x1000
        mov cr3, eax
        mov ecx, 0xc0000080
        rdmsr
        or eax, 0x100
        wrmsr
        mov eax, cr0
        or eax, 0x80000001
        mov cr0, eax
        jmp 0x08:compat
    {GDTR}
    compat:
        .code32
        mov ax, 0x10
        mov ds, ax
        mov ss, ax
        mov esp, 0x80000
        push 0xabcdef
        jmp 0x18:lm
    lm:
        .code64
        """, memory=LOADER_GDT + PAGE_TABLES),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_the_kernel(name):
    check_kernel(CASES[name])


def cpuid_snippet(leaf: int, subleaf: int = 0) -> Snippet:
    return Snippet(f"mov eax, {leaf:#x}\nmov ecx, {subleaf}\ncpuid", bits=32)


@pytest.mark.parametrize("leaf", [0, 0x80000000, 0x80000001, 0x80000008])
def test_cpuid_leaves_match_the_kernel(leaf):
    check_kernel(cpuid_snippet(leaf))


@pytest.mark.parametrize("leaf,subleaf", [(1, 0), (7, 0), (7, 1), (0xD, 0), (0xD, 1), (0xD, 3), (0xB, 1),
                                          (0x8000001D, 7), (0x40000001, 0), (0x4FFFFFFF, 0)])
def test_cpuid_feature_leaves_match_the_kernel(leaf, subleaf):
    """The emulator answers from the vCPU's table as KVM holds it (read back with
    KVM_GET_CPUID2), with KVM's lookup rules: subleaves a leaf does not list read as zeros."""
    check_kernel(cpuid_snippet(leaf, subleaf))


def test_the_emulator_answers_the_table_pvm_holds_not_the_one_it_was_given():
    """Measured on these hosts: PVM adjusts the CPUID table at KVM_SET_CPUID2 (it ORs host
    features into leaf 1 ECX/EDX and leaf 7, which its guests can use natively; KVM keeps
    leaf 0xD's sizes current), and KVM_GET_CPUID2 shows the result. The guest sees that table
    in PVM mode and under the kernel's emulator, so the emulator must answer it too."""
    from pykvm.cpuid import CpuidTable, vcpu_cpuid
    from pykvm.machine import Machine

    with Machine(memory_size=1 << 20, serial_output=io.BytesIO()) as machine:
        given = CpuidTable(vcpu_cpuid(machine.kvm.supported_cpuid(), 0))
        held = machine.cpuid
        emulator = run_userspace(cpuid_snippet(1))
    assert [emulator.reg(r) for r in ("rax", "rbx", "rcx", "rdx")] == list(held(1, 0))
    if given(1, 0) == held(1, 0):
        pytest.skip("this host's KVM kept the table as given")


def test_mode_switches_reach_their_target_mode():
    """Guards against vacuous passes of the mode-switch cases."""
    assert check_kernel(CASES["real_to_protected"]).segment("cs")["db"] == 1
    unreal = check_kernel(CASES["protected_back_to_real_keeps_unreal_limits"])
    assert unreal.reg("rbx") == 0xDEADBEEF and unreal.cr0 & 1 == 0
    long = check_kernel(CASES["real_to_long"])
    assert long.efer & 0x500 == 0x500 and long.segment("cs")["l"] == 1
