"""Emulator vs unicorn for instructions the host kernel's emulator refuses outside long mode
(so they have no kernel oracle): ENTER with a non-zero nesting level (the kernel returns
"unhandleable" for it), and IRET in protected mode (KVM_EXIT_INTERNAL_ERROR, see
../shared/PVM.md) — here a same-privilege IRET from a hand-built frame, which needs no
exception delivery (unicorn reports exceptions instead of delivering them).
"""

from __future__ import annotations

import pytest

from pykvm.x86 import boot
from tests.differential.harness import Snippet, run_emulator
from tests.differential.protected_mode import GDT, GDT_LIMIT, gdt
from tests.differential.unicorn_oracle import check_unicorn

LOADER_GDT = [(boot.GDT_ADDR, boot.build_gdt())]

CASES = {
    "enter_with_nesting_levels_32": Snippet("""
        mov ebp, 0x7f000
        mov dword ptr [0x7f000 - 4], 0x11111111
        mov dword ptr [0x7f000 - 8], 0x22222222
        enter 0x10, 1
        mov ebx, esp
        mov ecx, ebp
        enter 0x08, 3
        mov edx, esp
        mov esi, ebp
        leave
        leave
        """, bits=32),
    "enter_with_nesting_levels_16": Snippet("""
        mov bp, 0x7000
        mov word ptr [0x7000 - 2], 0x3333
        mov word ptr [0x7000 - 4], 0x4444
        enter 4, 2
        mov bx, sp
        mov cx, bp
        leave
        """),
    "iretd_same_privilege_from_a_built_frame": Snippet("""
        pushfd
        or dword ptr [esp], 0x0cd5      # CF PF AF ZF SF OF DF in the image
        and dword ptr [esp], ~0x200     # keep IF clear
        push 0x08
        push offset target
        iretd
        hlt
    target:
        pushfd
        pop ebx
        cld
        """, bits=32, memory=LOADER_GDT),
    "iretd_to_16bit_code": Snippet(f"""
        lgdt [gdtr]
        pushfd
        push 0x58
        push offset code16 - 0x10000
        iretd
    gdtr: .word {GDT_LIMIT}
        .long {GDT}
    code16:
        .code16
        mov ax, cs
        mov bx, sp
        """, bits=32, memory=gdt()),
    "iret_real_mode_with_32bit_operands": Snippet("""
        pushfd
        xor eax, eax
        push eax
        mov eax, offset target
        push eax
        iretd
        hlt
    target:
        mov bx, sp
        """),
}

# Call gates at the same privilege (CPL 0: all that non-PVM mode has), written into the bigger
# GDT at run time so that they can point at labels: 0x70 a 32-bit gate to 0x08:target32, 0x78 a
# 16-bit gate to 0x58 (16-bit code based at 0x10000):target16.
GATES = f"""
        lgdt [gdtr]
        mov eax, offset target32
        mov word ptr [{GDT + 0x70:#x}], ax
        mov word ptr [{GDT + 0x72:#x}], 0x08
        mov word ptr [{GDT + 0x74:#x}], 0x8c00      # present, DPL 0, 32-bit call gate
        shr eax, 16
        mov word ptr [{GDT + 0x76:#x}], ax
        mov eax, offset target16
        sub eax, 0x10000
        mov word ptr [{GDT + 0x78:#x}], ax
        mov word ptr [{GDT + 0x7a:#x}], 0x58
        mov dword ptr [{GDT + 0x7c:#x}], 0x8400     # present, DPL 0, 16-bit call gate
        jmp body
    gdtr: .word {GDT_LIMIT + 16}
        .long {GDT}
    target32:
        mov ebx, esp
        mov ax, cs
        cmp esp, 0x80000
        je done                         # reached by a JMP: nothing was pushed
        mov ecx, [esp]                  # the return EIP
        movzx edx, word ptr [esp + 4]   # the caller's CS
        retf
    target16:
        .code16
        mov bx, sp
        mov cx, [esp]
        mov dx, [esp + 2]
        mov ax, cs
        .byte 0x66, 0xea                # jmp far 0x08:done (the pushed IP lost EIP[31:16])
        .long done
        .word 0x08
        .code32
    body:
"""
CALL_GATE = ".byte 0x9a\n .long 0x12345678\n .word {}\n"   # call far SEL:0x12345678 (the gate sets EIP)

CASES.update({
    "call_through_a_32bit_call_gate": Snippet(GATES + CALL_GATE.format(0x70) + "mov esi, esp\n done:\n",
                                              bits=32, memory=gdt()),
    "call_through_a_16bit_call_gate_pushes_16_bits": Snippet(GATES + CALL_GATE.format(0x78) + "done:\n",
                                                             bits=32, memory=gdt()),
    "jmp_through_a_32bit_call_gate": Snippet(GATES + ".byte 0xea\n .long 0\n .word 0x70\n done:\n", bits=32,
                                             memory=gdt()),
})


@pytest.mark.parametrize("name", CASES)
def test_matches_unicorn(name):
    check_unicorn(CASES[name])


def test_iret_beyond_the_code_segment_limit_faults():
    """SDM IRET (protected mode, same privilege): "IF EIP is not within code segment limit
    THEN #GP(0)". unicorn (QEMU's TCG) does not check and jumps; the emulator must fault
    (with no IDT here: #GP -> #DF -> triple fault)."""
    snippet = Snippet("""
        pushfd
        push 0x20                       # loader GDT: 16-bit code, base 0, limit 0xffff
        push 0x10010                    # beyond that limit
        iretd
        """, bits=32, memory=LOADER_GDT)
    assert run_emulator(snippet).outcome == "shutdown"
