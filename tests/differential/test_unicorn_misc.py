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
