"""Emulator vs the host kernel's emulator: arithmetic, logic, shifts, multiply/divide, bit
operations, SETcc/CMOVcc, exchanges, BSWAP, MOVZX/MOVSX and LEA, in real mode (16-bit code,
with and without operand-size prefixes) and in 32-bit protected mode.

Each case pushes FLAGS after the interesting instructions, so intermediate flags are
compared too (through the stack, which is part of guest RAM). Flags the SDM leaves undefined
(after a logic op, a shift, a multiply, ...) are masked wherever they end up, in RFLAGS or in
a pushed image, by the harness's tracker (``undefined.py``), so no case masks by hand.
"""

from __future__ import annotations

import pytest

from tests.differential.harness import DATA, Snippet, check_kernel

pytestmark = pytest.mark.kvm

CASES = {
    # -- add/adc/sub/sbb/cmp/inc/dec/neg: every flag defined ----------------------------------
    "add16_carry_chain": Snippet("""
        add ax, bx
        pushf
        adc cx, dx
        pushf
        sbb si, di
        pushf
        sub bp, 1
        pushf
        cmp ax, cx
        pushf
        """, regs=dict(rax=0xFFFF, rbx=1, rcx=0x7FFF, rdx=0, rsi=0, rdi=0x8000, rbp=0)),
    "add8_halves": Snippet("""
        add al, bl
        pushf
        adc ah, bh
        pushf
        sub cl, dh
        pushf
        sbb ch, dl
        pushf
        """, regs=dict(rax=0x7F88, rbx=0x0198, rcx=0x8010, rdx=0x20FF)),
    "add32_in_real_mode": Snippet("""
        add eax, ebx
        pushfd
        adc ecx, edx
        pushfd
        sub esi, edi
        pushfd
        """, regs=dict(rax=0xFFFFFFFF, rbx=2, rcx=0x7FFFFFFF, rdx=0, rsi=5, rdi=7)),
    "inc_dec_neg16": Snippet("""
        stc
        inc ax
        pushf
        dec bx
        pushf
        neg cx
        pushf
        neg dx
        pushf
        inc byte ptr [0x9000]
        pushf
        dec word ptr [0x9002]
        pushf
        """, regs=dict(rax=0x7FFF, rbx=0x8000, rcx=0, rdx=0x8000),
        memory=[(DATA, b"\xff\x00\x00\x80")]),
    "alu32_memory_operands": Snippet("""
        add [0x9000], eax
        pushfd
        sub ebx, [0x9004]
        pushfd
        adc dword ptr [0x9008], 0x7fffffff
        pushfd
        sbb word ptr [0x900c], 3
        pushfd
        cmp byte ptr [0x900e], 0x80
        pushfd
        neg dword ptr [0x9010]
        pushfd
        """, bits=32, regs=dict(rax=0x80000000, rbx=0x10),
        memory=[(DATA, bytes.fromhex("00000080 11000000 01000000 0200 7f00 00000080"))]),
    # -- logic: AF undefined ----------------------------------------------------------------
    "logic16": Snippet("""
        and ax, bx
        or cx, dx
        xor si, di
        not bp
        test ax, 0x8000
        """, regs=dict(rax=0xF0F0, rbx=0x8FF0, rcx=0x0F00, rdx=0x00F1, rsi=0x1234, rdi=0x1234,
                       rbp=0x00FF)),
    "logic32_memory": Snippet("""
        and [0x9000], eax
        or ebx, [0x9004]
        xor dword ptr [0x9008], 0xffff0000
        test byte ptr [0x9000], 0x01
        """, bits=32, regs=dict(rax=0x0F0F0F0F, rbx=0x80000001),
        memory=[(DATA, bytes(range(1, 13)))]),
    # -- shifts and rotates ------------------------------------------------------------------
    "shift_by_one16": Snippet("""
        shl ax, 1
        pushf
        shr bx, 1
        pushf
        sar cx, 1
        pushf
        rol dx, 1
        pushf
        ror si, 1
        pushf
        stc
        rcl di, 1
        pushf
        rcr bp, 1
        """, regs=dict(rax=0xC000, rbx=0x8001, rcx=0x8001, rdx=0x8000, rsi=1, rdi=0x4000, rbp=3)),
    "shift_by_cl32": Snippet("""
        shl eax, cl
        shr ebx, cl
        sar edx, cl
        rol esi, cl
        ror edi, cl
        rcl ebp, cl
        """, bits=32, regs=dict(rax=0x12345678, rbx=0x87654321, rcx=5, rdx=0x80000010, rsi=0xC0000001,
                                rdi=0x3, rbp=0x80000000)),
    "shift_by_zero_keeps_flags": Snippet("""
        stc
        shl eax, cl
        rol ebx, cl
        rcr edx, cl
        """, bits=32, regs=dict(rax=0x80000000, rbx=1, rcx=0x20, rdx=5)),
    "shift8_by_large_imm": Snippet("""
        sar al, 9
        pushf
        rol bl, 12
        rcr cl, 11
        """, regs=dict(rax=0x80, rbx=0x81, rcx=0x55)),
    "shld_shrd": Snippet("""
        shld eax, ebx, 4
        shrd ecx, edx, cl
        shld si, di, 1
        pushf
        shrd word ptr [0x9000], bp, 3
        """, bits=32, regs=dict(rax=0x12345678, rbx=0x9ABCDEF0, rcx=8, rdx=0x55, rsi=0x8000,
                                rdi=0xFFFF, rbp=0x7),
        memory=[(DATA, b"\x34\x12")]),
    # -- multiply / divide -------------------------------------------------------------------
    "mul_imul_forms": Snippet("""
        mul bx
        pushf
        mov [0x9000], ax
        mov [0x9002], dx
        mov ax, 0x80
        imul byte ptr [0x9010]
        pushf
        imul si, di
        pushf
        imul bp, si, -3
        pushf
        imul ecx, ebx, 0x10000
        """, regs=dict(rax=0xFFFF, rbx=0xFFFF, rsi=0x100, rdi=0x100),
        memory=[(DATA + 0x10, b"\xff")]),
    "mul32_imul32": Snippet("""
        mul ebx
        mov [0x9000], eax
        mov [0x9004], edx
        mov eax, ecx
        imul esi
        mov [0x9008], eax
        mov [0x900c], edx
        imul edi, [0x9020], 7
        """, bits=32, regs=dict(rax=0xDEADBEEF, rbx=0xCAFEBABE, rcx=0x80000000, rsi=0xFFFFFFFF),
        memory=[(DATA + 0x20, b"\x00\x00\x00\x40")]),
    "div_idiv_all_sizes": Snippet("""
        div bl
        mov [0x9000], ax
        mov ax, 0xfff6
        mov bl, 3
        idiv bl
        mov [0x9002], ax
        mov dx, 0x1234
        mov ax, 0x5678
        div cx
        mov [0x9004], ax
        mov [0x9006], dx
        mov edx, 0xffffffff
        mov eax, 0xfffffff0
        idiv esi
        """, regs=dict(rax=0x00FF, rbx=0x10, rcx=0x4321, rsi=7)),
    "div_by_zero_through_the_ivt": Snippet("""
        mov word ptr [0], offset de_handler
        mov word ptr [2], 0
        mov bl, 0
        mov ax, 100
        div bl
        jmp done
    de_handler:
        mov si, sp
        mov cx, [si]        # the faulting IP (the div, not after it)
        mov dx, [si + 4]    # the pushed FLAGS
        add word ptr [si], 2
        iret
    done:
        """),
    # -- bit operations ----------------------------------------------------------------------
    "bt_family": Snippet("""
        bt ax, 3
        setc [0x9000]
        bts bx, cx
        setc [0x9001]
        btr edx, 31
        setc [0x9002]
        btc si, 0
        setc [0x9003]
        bts word ptr [0x9010], 19
        setc [0x9004]
        mov di, -1
        btr [0x9014], di
        setc [0x9005]
        """, regs=dict(rax=0x8, rbx=0, rcx=0x11, rdx=0x80000000, rsi=1),
        memory=[(DATA + 0x10, b"\x00\x00\x00\x00\xff\xff")]),
    "bsf_bsr": Snippet("""
        bsf ax, bx
        setz [0x9000]
        bsr ecx, edx
        setz [0x9001]
        bsf si, [0x9010]
        bsr edi, [0x9014]
        """, bits=32, regs=dict(rbx=0x0100, rdx=0x00C00000, rsi=0x77),
        memory=[(DATA + 0x10, b"\x00\x80\x00\x00\x01\x00\x00\x00")]),
    # -- conditions ------------------------------------------------------------------------
    "setcc_all_conditions": Snippet("""
        cmp ax, bx
        seto [0x9000]
        setno [0x9001]
        setb [0x9002]
        setae [0x9003]
        sete [0x9004]
        setne [0x9005]
        setbe [0x9006]
        seta [0x9007]
        sets [0x9008]
        setns [0x9009]
        setp [0x900a]
        setnp [0x900b]
        setl [0x900c]
        setge [0x900d]
        setle [0x900e]
        setg [0x900f]
        cmp cx, dx
        setl al
        setg ah
        setb bl
        seta bh
        """, regs=dict(rax=0x8000, rbx=1, rcx=0x7FFF, rdx=0xFFFF)),
    "cmovcc": Snippet("""
        cmp eax, ebx
        cmovl ecx, eax
        cmovg edx, ebx
        cmovb esi, [0x9000]
        cmova edi, [0x9004]
        cmovz ebp, eax
        cmovnz bp, bx
        """, bits=32, regs=dict(rax=5, rbx=0xFFFFFFFB, rcx=1, rdx=2, rsi=3, rdi=4, rbp=6),
        memory=[(DATA, b"\x11\x11\x11\x11\x22\x22\x22\x22")]),
    # -- exchanges and friends ---------------------------------------------------------------
    "xchg_xadd_cmpxchg": Snippet("""
        xchg ax, bx
        xchg cl, ch
        xchg [0x9000], dx
        xadd si, di
        pushf
        xadd [0x9002], si
        pushf
        cmpxchg [0x9004], bp
        pushf
        mov ax, 0x5555
        cmpxchg [0x9006], bp
        pushf
        """, regs=dict(rax=1, rbx=2, rcx=0x1234, rdx=0xABCD, rsi=0xFFFF, rdi=2, rbp=0x7777),
        memory=[(DATA, bytes.fromhex("3412 0100 0100 5555"))]),
    "cmpxchg8b_and_bswap": Snippet("""
        cmpxchg8b [0x9000]
        pushfd
        cmpxchg8b [0x9000]
        pushfd
        bswap esi
        bswap edi
        """, bits=32, regs=dict(rax=1, rdx=2, rbx=0x33333333, rcx=0x44444444, rsi=0x11223344,
                                rdi=0x80000001),
        memory=[(DATA, bytes.fromhex("01000000 02000000"))]),
    "movzx_movsx_lea": Snippet("""
        movzx eax, byte ptr [0x9000]
        movsx ebx, byte ptr [0x9000]
        movzx ecx, word ptr [0x9002]
        movsx edx, word ptr [0x9002]
        movsx si, bl
        lea edi, [eax + ebx*4 + 0x10]
        lea bp, [bx + si + 0x7fff]
        lea esp, [esp - 16]
        """, regs=dict(), memory=[(DATA, bytes.fromhex("80ff 0180"))]),
    "lea_addressing32": Snippet("""
        lea eax, [ebx + ecx*8 - 4]
        lea edx, [ebx*2]
        lea esi, [ebp + 0x12345678]
        lea di, [ecx + edx]
        mov edi, [0x9000 + ecx*4]
        """, bits=32, regs=dict(rbx=0x1000, rcx=3, rbp=0xF0000000),
        memory=[(DATA + 12, b"\x78\x56\x34\x12")]),
    "lahf_sahf_cbw_cwd": Snippet("""
        sahf
        pushf
        lahf
        mov bx, ax
        mov ax, 0x80
        cbw
        cwd
        mov cx, dx
        cwde
        cdq
        """, regs=dict(rax=0xD5FF)),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_the_kernel(name):
    check_kernel(CASES[name])


def test_cases_compute_something():
    """A guard against vacuous passes: the kernel really ran the snippets' instructions."""
    kernel = check_kernel(CASES["add16_carry_chain"])
    assert kernel.reg("rax") == 0 and kernel.reg("rcx") == 0x8000
    kernel = check_kernel(CASES["div_by_zero_through_the_ivt"])
    assert kernel.reg("rax") & 0xFFFF == 100 and kernel.reg("rcx") != 0
