"""Self-modifying code: the emulator translates blocks once and caches them, so every way a
guest can write to code it has run (or is about to run) must be seen — plain stores, REP
MOVS/STOS, INS from a port, read-modify-write instructions, pushes onto a stack placed
over code, writes through another segment, and (under paging) through another linear
alias of the same physical page.

The kernel's emulator decodes every instruction afresh, so it is a natural oracle here;
the paging alias case runs on unicorn (the kernel cannot page outside long mode). Stores
to the instruction right after the store are seen by the processor (SDM vol. 3, 11.6:
on P6 and later, a write to a code address that is already prefetched or executing is
detected and the prefetch invalidated).
"""

from __future__ import annotations

import pytest

from tests.differential import paging_tables as T
from tests.differential.harness import SCRATCH_PORT, Snippet, check_kernel
from tests.differential.paging_tables import P, RW

CASES = {
    "patch_an_immediate_in_a_running_loop": Snippet("""
        mov cx, 4
    again:
    patched:
        add ax, 1
        mov byte ptr [patched + 2], 0x10
        loop again
        """),
    "patch_the_very_next_instruction": Snippet("""
        mov byte ptr [next + 1], 0x42
    next:
        mov al, 0x00
        mov word ptr [next2], 0xdb87     # xchg bx, bx -> over "inc bx" + "inc bx"
    next2:
        inc bx
        inc bx
        """, regs=dict(rbx=5)),
    "copy_a_new_body_over_a_called_function": Snippet("""
        call func
        mov bx, ax
        mov si, offset replacement
        mov di, offset func
        mov cx, 4
        rep movsb
        call func
        jmp done
    func:
        mov ax, 0x1111
        ret
    replacement:
        mov ax, 0x2222
        ret
    done:
        """),
    "stos_and_ins_write_code": Snippet(f"""
        call f1
        mov di, offset f1
        mov al, 0x90
        mov cx, 3
        rep stosb
        call f1
        call f2
        mov dx, {SCRATCH_PORT}
        mov di, offset f2 + 1
        insb
        call f2
        jmp done
    f1: mov ax, 0x3333
        ret
    f2: mov cl, 0x77
        ret
    done:
        """),
    "read_modify_write_instructions_on_code": Snippet("""
        mov cx, 3
    l1: call f
        add dx, ax
        add byte ptr [f + 1], 1
        xor byte ptr [f + 2], 0x01
        loop l1
        mov al, 0x40
        xchg [f + 1], al
        call f
        mov si, ax
        mov al, 0x11
        lock cmpxchg [f + 1], bl
        call f
        jmp done
    f:  mov ax, 0x0
        ret
    done:
        """, regs=dict(rbx=0x99)),
    "push_onto_a_stack_over_code": Snippet("""
        call f
        mov bx, ax
        mov bp, sp
        mov sp, offset f + 3
        push 0x5555              # rewrites the immediate of "mov ax, imm16"
        mov sp, bp
        call f
        jmp done
    f:  mov ax, 0x1234
        ret
    done:
        """),
    "write_through_another_segment": Snippet("""
        call f
        mov bx, ax
        mov ax, 0x07c0
        mov es, ax
        mov byte ptr es:[f - 0x7c00 + 1], 0x99
        xor ax, ax
        mov es, ax
        call f
        jmp done
    f:  mov ax, 0x11
        ret
    done:
        """),
    "generated_code_in_data_memory_rewritten_and_rerun": Snippet("""
        mov edi, 0x20000
        mov dword ptr [edi], 0x000001b8      # mov eax, 1
        mov dword ptr [edi + 4], 0x9090c300  # ...; ret
        call edi
        mov ebx, eax
        mov byte ptr [edi + 1], 2
        call edi
        mov ecx, eax
        mov dword ptr [edi + 1], 0x12345678
        call edi
        """, bits=32),
}


@pytest.mark.kvm
@pytest.mark.parametrize("name", CASES)
def test_matches_the_kernel(name):
    check_kernel(CASES[name])


@pytest.mark.kvm
def test_patched_code_really_changed_behaviour():
    snap = check_kernel(CASES["patch_an_immediate_in_a_running_loop"])
    assert snap.reg("rax") == 1 + 3 * 0x10
    snap = check_kernel(CASES["generated_code_in_data_memory_rewritten_and_rerun"])
    assert (snap.reg("rbx"), snap.reg("rcx"), snap.reg("rax")) == (1, 2, 0x12345678)


def test_write_through_a_paging_alias_of_the_code_page():
    """Under paging, code at linear 0x10000 is rewritten through linear 0x400000 (same physical
    page): the emulator must track code by physical page (checked against unicorn)."""
    from tests.differential.unicorn_oracle import check_unicorn

    alias = 0x400000
    snippet = Snippet(f"""
        {T.enable_paging()}
        mov ecx, 3
    again:
        call f
        add ebx, eax
        mov eax, offset f + 1 - 0x10000 + {alias:#x}
        add dword ptr [eax], 0x100
        loop again
        jmp done
    f:  mov eax, 0x1
        ret
    done:
        """, bits=32, memory=T.tables32({alias: (0x10000, P | RW)}))
    snap = check_unicorn(snippet)
    assert snap.reg("rbx") == 1 + 0x101 + 0x201
