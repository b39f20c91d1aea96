"""Regression tests for what code written elsewhere found (kvm-unit-tests' realmode suite,
hardware-captured single-instruction tests, the generated sweep), each against an oracle:
the host kernel's emulator where it runs the case, unicorn where it does not, and the SDM
(quoted) where both depart from it.
"""

from __future__ import annotations

import struct

import pytest

from pykvm.x86 import descriptors as D
from tests.differential.harness import (DATA, Snippet, assert_same, check_kernel, run_emulator, run_kernel,
                                        run_userspace)
from tests.differential.protected_mode import GDT, protected

kvm = pytest.mark.kvm
STACK_TOP = 0x80000          # protected-mode snippets' ESP
REAL_STACK_TOP = 0x7C00      # real-mode snippets' SP


def real_with_handlers(body: str, *vectors: int, **kw) -> Snippet:
    """``body`` in real mode with IVT entries for ``vectors`` leading to a handler that saves
    SP in BP and halts; a body that does not fault sets DI to 0xbad."""
    entries = "\n".join(f"mov word ptr [{v * 4}], offset handler\nmov word ptr [{v * 4 + 2}], 0"
                        for v in vectors)
    source = f"""
        {entries}
        {body}
        mov di, 0xbad
        hlt
    handler:
        mov bp, sp
    """
    return Snippet(source, **kw)


def faulted_at(snapshot, snippet: Snippet, instruction: bytes) -> None:
    """The real-mode handler ran, with the faulting instruction's IP on the stack."""
    assert snapshot.reg("rdi") != 0xBAD, "the body did not fault"
    ip = struct.unpack_from("<H", snapshot.memory, snapshot.reg("rbp") & 0xFFFF)[0]
    assert ip == snippet.code_address + snippet.code.index(instruction)


# -- kvm-unit-tests realmode ---------------------------------------------------------------------
HINT_NOPS = """
    endbr32
    endbr64
    nop dword ptr [eax + 0x12345678]
    .byte 0x0f, 0x18, 0x20          # 0F 18 /4: reserved hint NOP
    .byte 0x0f, 0x19, 0x00
    .byte 0x0f, 0x1c, 0x00          # cldemote [eax] where it exists, a NOP elsewhere
    .byte 0x0f, 0x1d, 0x00
    .byte 0x0f, 0x0d, 0xc0          # 0F 0D with a register operand
    prefetchw [eax]
    prefetcht0 [eax]
    inc ebx
"""
# The kernel's emulator stops at these; unicorn runs them.
HINT_NOPS_UNICORN = """
    .byte 0xf3, 0x0f, 0x1e, 0xc8    # rdsspd eax: a NOP without CET
    .byte 0x0f, 0x1a, 0x00          # 0F 1A/1B: MPX (absent) hint space
    .byte 0x0f, 0x1b, 0x00
    .byte 0x0f, 0x1e, 0x00
    inc ebx
"""


@kvm
@pytest.mark.parametrize("bits", [16, 32])
def test_hint_nops_and_endbr_execute_as_nops(bits):
    """GCC's -fcf-protection puts ENDBR32 at every function entry; CPUs without CET (or with
    it off: CR4.CET is never set here) execute it, RDSSP and the rest of the 0F 0D / 0F 18-1F
    hint space as NOPs, and never touch their memory operand (EAX points past RAM here)."""
    kernel = check_kernel(Snippet(HINT_NOPS, bits=bits, regs=dict(rax=0xFFFFFFF0)))
    assert kernel.reg("rbx") == 1


def test_cet_and_mpx_hint_space_executes_as_nops():
    from tests.differential.unicorn_oracle import check_unicorn

    assert check_unicorn(Snippet(HINT_NOPS_UNICORN, bits=32, regs=dict(rax=0x1000))).reg("rbx") == 1


@kvm
def test_leave_with_an_operand_size_prefix_in_16bit_code_pops_ebp():
    """`66 C9` in real mode: SP <- BP, then a 32-bit pop into EBP (kvm-unit-tests check 17)."""
    check_kernel(Snippet("""
        mov esp, 0x7000
        mov ebp, 0x12345678
        push ebp
        mov ebp, 0xaaaa6ffc
        .byte 0x66, 0xc9
        """))


@kvm
def test_real_mode_iret_never_loads_reserved_flags_bits():
    """Hardware-captured: a 16-bit IRET in real mode keeps FLAGS bits 3, 5 and 15 at 0 (and
    bit 1 at 1), as POPF does, whatever the image on the stack holds."""
    kernel = check_kernel(Snippet("""
        push 0xfcff             # every bit but IF and TF
        push 0
        push offset target
        iret
    target:
        pushf
        pop bx
        push 0
        popf
        """))
    assert kernel.reg("rbx") & 0x8028 == 0 and kernel.reg("rbx") & 2


@kvm
def test_salc_sets_al_from_the_carry_flag():
    kernel = check_kernel(Snippet("stc\n.byte 0xd6\nmov bl, al\nclc\n.byte 0xd6"))
    assert kernel.reg("rbx") & 0xFF == 0xFF and kernel.reg("rax") & 0xFF == 0


@pytest.mark.parametrize("code", ["c5 f5 ee c0", "c4 c1 7d ee c0", "62 c0 c0 c0"])
def test_vex_evex_shapes_in_real_mode_are_invalid_les_lds_bound(code):
    """Real mode has no VEX/EVEX: C4/C5 are LES/LDS and 62 is BOUND, whose register forms
    raise #UD (iced decodes them as VEX/EVEX, e.g. `c5 f5 ee` as vpmaxsw). unicorn agrees
    (it stops with an invalid-instruction error at the instruction); the kernel's emulator
    gives up on them (an emulation failure), so it is no oracle here."""
    from tests.differential.unicorn_oracle import run_unicorn

    raw = bytes.fromhex(code)
    body = ".byte " + ", ".join(f"{b:#x}" for b in raw)
    oracle = run_unicorn(Snippet(body))
    assert (oracle.outcome, oracle.rip) == ("exception 6", REAL_STACK_TOP)
    snippet = real_with_handlers(body, 6)
    faulted_at(run_emulator(snippet), snippet, raw)


@kvm
@pytest.mark.parametrize("branch", [
    ".byte 0x66, 0xe8\n.long 0x10000",             # call rel32 to past the 64 KiB limit
    ".byte 0x66, 0xe9\n.long 0x10000",             # jmp rel32
    ".byte 0x66, 0x0f, 0x84\n.long 0x10000",       # jz rel32 (taken: ZF=1 after the cmp)
    "mov ebx, 0x12345\n.byte 0x66, 0xff, 0xe3",    # jmp ebx
    "mov ebx, 0x12345\n.byte 0x66, 0xff, 0xd3",    # call ebx
    "push 0x1\npush 0x2345\n.byte 0x66, 0xc3",     # ret: pops 0x00012345
])
def test_near_branches_past_the_cs_limit_fault_at_the_branch(branch):
    """SDM (CALL/JMP/Jcc/RET near): "IF tempEIP is beyond code segment limit THEN #GP(0)":
    the branch faults with nothing pushed, not the fetch at the target."""
    snippet = real_with_handlers(f"cmp ax, ax\nmov esp, 0x7000\n{branch}\nnop", 13)
    kernel = run_kernel(snippet)
    assert kernel.outcome == "halted"
    assert_same(kernel, run_userspace(snippet))
    assert kernel.reg("rdi") != 0xBAD and kernel.reg("rbp") == 0x7000 - 6 - (4 if "push" in branch else 0)


@kvm
@pytest.mark.parametrize("shift", ["shl dword ptr es:[0x9000], 0", "rcr word ptr es:[0x9000], cl",
                                   "rol byte ptr es:[0x9000], 0", "shld es:[0x9000], eax, 0"])
def test_shifts_by_zero_still_check_the_write(shift):
    """A shift or rotate of memory by 0 changes nothing, but the CPU's write check does not
    depend on the count: through a read-only segment it is #GP."""
    snippet = protected(f"mov ax, 0x40\nmov es, ax\nxor ecx, ecx\n{shift}", 13)
    kernel = check_kernel(snippet)
    assert kernel.reg("rdi") != 0xBAD


@pytest.mark.parametrize("body", ["sldt ax", "str ax", "lldt word ptr [0xffff]", "ltr word ptr [0xffff]",
                                  "lldt ax", "verr ax", "verw word ptr [0xffff]", "lar ax, bx", "lsl ax, bx",
                                  "arpl ax, bx"])
def test_protected_mode_only_instructions_raise_ud_in_real_mode(body):
    """SLDT/STR/LLDT/LTR, LAR/LSL/VERR/VERW and ARPL: "#UD: The instruction is not recognized
    in real-address mode", before any operand is read (the word at 0xffff would otherwise be
    a #GP). Compared with the kernel's emulator where it decodes the instruction."""
    snippet = real_with_handlers(body, 6, 13)
    emulator = run_emulator(snippet)
    faulted_at(emulator, snippet, Snippet(body).code[:2])
    assert emulator.reg("rbp") == REAL_STACK_TOP - 6


@kvm
@pytest.mark.parametrize("body", ["sldt ax", "str ax", "lldt word ptr [0xffff]", "ltr word ptr [0xffff]"])
def test_protected_mode_only_instructions_in_real_mode_match_the_kernel(body):
    check_kernel(real_with_handlers(body, 6, 13))


BOUND = {
    "in_range_16": ("mov ax, 5", "word", 1, 9),
    "at_both_ends_32": ("mov eax, 0xfffffff0", "dword", 0xFFFFFFF0, 0xFFFFFFF0),
    "below_signed_16": ("mov ax, 0xfffe", "word", 0xFFFF, 9),
    "above_32": ("mov eax, 0x7fffffff", "dword", 0x80000000, 0x7FFFFFFE),
}


@pytest.mark.parametrize("name", BOUND)
def test_bound_checks_a_signed_index_against_both_bounds(name):
    """BOUND (62 /r): nothing when lower <= index <= upper (signed), else #BR (vector 5), a
    fault. unicorn reports #BR at the instruction instead of delivering it."""
    from tests.differential.unicorn_oracle import check_unicorn, run_unicorn

    setup, width, lower, upper = BOUND[name]
    size = 2 if width == "word" else 4
    register = "ax" if size == 2 else "eax"
    bounds = lower.to_bytes(size, "little") + upper.to_bytes(size, "little")
    body = f"{setup}\nbound {register}, [0x9000]"
    plain = Snippet(body, memory=[(DATA, bounds)])
    oracle = run_unicorn(plain)
    if oracle.outcome == "halted":
        check_unicorn(plain)
        return
    assert oracle.outcome == "exception 5"
    snippet = real_with_handlers(body, 5, memory=[(DATA, bounds)])
    emulator = run_emulator(snippet)
    faulted_at(emulator, snippet, Snippet(f"bound {register}, [0x9000]").code[:-1])
    assert emulator.reg("rax") == oracle.reg("rax")


def test_descriptor_queries_match_unicorn():
    """LAR/LSL/VERR/VERW/ARPL (the kernel's emulator does not decode them): a flat data
    segment, a byte-granular one, a DPL-3 one seen with RPL 3, a selector past the GDT limit
    and a not-present one."""
    from tests.differential.unicorn_oracle import check_unicorn

    results = []
    for selector in (0x10, 0x38, 0x4B, 0x73, 0x30, 0x08):
        results.append(check_unicorn(protected(f"""
            mov ax, {selector:#x}
            mov ebx, 0x11111111
            mov ecx, 0x22222222
            lar ebx, ax
            setz dl
            lsl ecx, ax
            setz dh
            verr ax
            setz byte ptr [0x9000]
            verw ax
            setz byte ptr [0x9001]
            mov si, 0x0010
            arpl si, ax
            setz byte ptr [0x9002]
            hlt
            """, 13)))
    flat, byte_granular = results[0], results[1]
    assert flat.reg("rbx") == 0x00C09300 and flat.reg("rcx") == 0xFFFFFFFF
    assert byte_granular.reg("rcx") == 0xFFF and results[3].reg("rbx") == 0x11111111


@kvm
def test_fall_through_past_64k_in_16bit_code_with_a_big_limit():
    """In 16-bit code whose CS limit is above 0xFFFF, EIP is not truncated when execution
    falls through past 0xFFFF (only branch targets are)."""
    code16_4g = D.encode_descriptor(0x10000, 0xFFFFF, 0xB, db=0, g=1)    # 16-bit, 4 GiB, base 64 KiB
    snippet = protected("""
        mov byte ptr [0x1ffff], 0x43        # inc bx at CS offset 0xffff
        mov byte ptr [0x20000], 0xf4        # hlt at CS offset 0x10000
        jmp 0x68:0xffff
        """, 13, memory=[(GDT + 0x68, struct.pack("<Q", code16_4g))])
    kernel = check_kernel(snippet)
    assert kernel.rip == 0x10001 and kernel.reg("rbx") == 1


@kvm
@pytest.mark.parametrize("kind", [D.SYS_TSS32_AVAIL, D.SYS_CALL_GATE32, D.SYS_LDT])
def test_far_return_to_a_system_descriptor_is_a_gp(kind):
    """Only JMP and CALL go through gates or switch tasks: RETF to a TSS, a gate or an LDT
    descriptor is #GP(selector)."""
    system = D.encode_descriptor(0x5000, 0x67, kind, s=0)
    snippet = protected("push 0x68\npush 0\nretf", 13, memory=[(GDT + 0x68, struct.pack("<Q", system))])
    kernel = check_kernel(snippet)
    assert struct.unpack_from("<I", kernel.memory, STACK_TOP - 8 - 16)[0] == 0x68   # error code


CALL_GATE_FAULTS = {
    # (where the gate goes, the gate: target, present, the selector called): vector, error code
    "rpl_above_the_gate_dpl": ((0x68, 0x08, 1, 0x6B), (13, 0x68)),
    "gate_not_present": ((0x68, 0x08, 0, 0x68), (11, 0x68)),
    "target_not_present": ((0x30, 0x68, 1, 0x30), (11, 0x68)),
    "target_is_data": ((0x68, 0x10, 1, 0x68), (13, 0x10)),
    "null_target": ((0x68, 0x00, 1, 0x68), (13, 0)),
}


@pytest.mark.parametrize("case", CALL_GATE_FAULTS)
def test_call_gate_checks_fault_before_anything_is_pushed(case):
    """SDM CALL, "CALL-GATE": #GP(gate selector) if the gate's DPL < CPL or RPL, #NP(gate
    selector) if it is not present, #GP(0) for a null code selector, #GP(code selector) if that
    is not a code segment, #NP(code selector) if not present. (The kernel's emulator refuses
    call gates; unicorn reports the fault without delivering it: the SDM is the oracle here.)"""
    (where, target, present, called), (vector, error) = CALL_GATE_FAULTS[case]
    gate = D.encode_gate(target, 0x1234, D.SYS_CALL_GATE32, present=present)
    snippet = protected(f".byte 0x9a\n .long 0\n .word {called:#x}", vector,
                        memory=[(GDT + where, struct.pack("<Q", gate))])
    result = run_emulator(snippet)
    assert result.outcome == "halted" and result.reg("rdi") != 0xBAD      # the handler of ``vector`` ran
    assert result.reg("rbp") == STACK_TOP - 16                          # nothing pushed before the fault
    assert struct.unpack_from("<I", result.memory, STACK_TOP - 16)[0] == error


def test_o32_enter_on_a_16bit_stack_keeps_the_upper_half_of_ebp():
    """SDM ENTER: "IF StackSize = 32 THEN EBP <- FrameTemp ELSE BP <- FrameTemp". test386.asm
    checks this against real CPUs; the kernel's emulator (EBP pushed and loaded with the
    stack size) and unicorn (EBP loaded with the operand size) both depart from it."""
    snippet = Snippet("""
        mov esp, 0x7000
        mov ebp, 0xabcd1234
        .byte 0x66, 0xc8, 0x08, 0x00, 0x00   # o32 enter 8, 0
        """)
    result = run_emulator(snippet)
    assert result.reg("rbp") == 0xABCD6FFC           # BP = the frame (SP after pushing EBP)
    assert result.reg("rsp") & 0xFFFF == 0x6FFC - 8
    assert struct.unpack_from("<I", result.memory, 0x6FFC)[0] == 0xABCD1234   # all of EBP pushed


def test_o32_enter_with_a_nesting_level_on_a_16bit_stack_pushes_all_of_esp_as_the_frame():
    """SDM ENTER: "Push(EBP); FrameTemp <- ESP; ... Push(FrameTemp)" for a 32-bit operand: on
    a 16-bit stack SP wraps and ESP keeps its upper half, and all of ESP is the frame pushed.
    Found by test386.asm's ENTER test (POST 0x1A, ``testENTER32 8,36,16``), which starts at
    ESP = 0x10000. (The kernel's emulator refuses nesting levels; unicorn computes the frame
    as ESP - 4 without the wrap.)"""
    snippet = Snippet("""
        mov esp, 0x10000                     # SP = 0: the first push wraps
        mov ebp, 0x1fff0
        .byte 0x66, 0xc8, 0x04, 0x00, 0x02   # o32 enter 4, 2
        """)
    result = run_emulator(snippet)
    assert result.reg("rsp") == 0x1FFF0            # 0x1FFFC - 4 (level 1 copy) - 4 (frame) - 4
    assert struct.unpack_from("<I", result.memory, 0xFFF4)[0] == 0x0001FFFC   # the frame: all of ESP
    assert result.reg("rbp") == 0x0001FFFC


@kvm
def test_mov_to_cr0_ignores_reserved_bits():
    """SDM vol. 3, 2.5: reserved CR0 bits are ignored when written (KVM clears them too)."""
    kernel = check_kernel(protected("mov eax, cr0\nor eax, 0x0002ff00\nmov cr0, eax\nmov ebx, cr0\nhlt", 13))
    assert kernel.reg("rbx") & 0x0002FF00 == 0


WRMSR_FAULTS = {
    "non_canonical_fs_base": (0xC0000100, 0, 0x00008000),
    "non_canonical_kernel_gs_base": (0xC0000102, 0, 0x00010000),
    "mtrr_def_type_reserved_bits": (0x2FF, 0x1006, 0),
    "mtrr_fixed_reserved_type": (0x250, 0x03, 0),
    "mtrr_physbase_reserved_type": (0x200, 0x07, 0),
    "mtrr_physmask_reserved_bits": (0x201, 0x100, 0),
    "mtrr_physbase_above_maxphyaddr": (0x200, 0x06, 0xFFFF0000),
}


@kvm
@pytest.mark.parametrize("name", WRMSR_FAULTS)
def test_wrmsr_refuses_values_the_cpu_refuses(name):
    index, low, high = WRMSR_FAULTS[name]
    kernel = check_kernel(protected(f"mov ecx, {index:#x}\nmov eax, {low:#x}\nmov edx, {high:#x}\nwrmsr", 13))
    assert kernel.reg("rdi") != 0xBAD


def test_wrmsr_to_pat_refuses_the_reserved_memory_types():
    """SDM vol. 3, 13.12.2: "Any attempt to write an undefined memory type encoding into the
    PAT causes a general-protection (#GP) exception" (types 2 and 3, and bits 3-7 of any
    entry). Measured on these hosts, the kernel's non-PVM emulation accepts them."""
    for low, high in ((0x02, 0), (0x0600, 0x03), (0x08, 0)):
        result = run_userspace(protected(f"mov ecx, 0x277\nmov eax, {low:#x}\nmov edx, {high:#x}\nwrmsr", 13))
        assert result.reg("rdi") != 0xBAD


@kvm
def test_wrmsr_accepts_valid_mtrr_pat_and_base_values():
    kernel = check_kernel(protected("""
        mov ecx, 0x277
        mov eax, 0x00070406
        mov edx, 0x07050401
        wrmsr
        mov ecx, 0x200
        mov eax, 0x00100006
        xor edx, edx
        wrmsr
        mov ecx, 0xc0000100
        mov eax, 0x12345000
        mov edx, 0xffff8000
        wrmsr
        mov ecx, 0x277
        rdmsr
        mov ebx, eax
        mov esi, edx
        hlt
        """, 13))
    assert (kernel.reg("rbx"), kernel.reg("rsi")) == (0x00070406, 0x07050401)


@kvm
@pytest.mark.parametrize("body", [
    "mov al, 0x80\nadd al, 0x80\n.byte 0x82, 0xc0, 0x05",     # 82 /0: add al, 5 (alias of 80)
    "mov ax, 0x1234\n.byte 0xd1, 0xf0",                         # D1 /6: sal ax, 1
    "mov cl, 3\nmov eax, 0x81\n.byte 0xd3, 0xf0",               # D3 /6: sal eax, cl
    "mov eax, 0xf0\n.byte 0xf7, 0xc8\n.long 0x10",              # F7 /1: test eax, 0x10
    "mov al, 0x0f\n.byte 0xf6, 0xc8, 0x10",                     # F6 /1: test al, 0x10
])
def test_undocumented_aliases(body):
    check_kernel(Snippet(body + "\nmov ebx, eax\nsetz dl\nsetc dh", bits=32))


@kvm
def test_sysenter_enters_cpl0_flat_code():
    kernel = check_kernel(protected("""
        mov ecx, 0x174
        mov eax, 0x08
        xor edx, edx
        wrmsr
        mov ecx, 0x175
        mov eax, 0x7f000
        wrmsr
        mov ecx, 0x176
        mov eax, offset entry
        wrmsr
        sysenter
    entry:
        mov ebx, esp
        hlt
        """, 13))
    assert kernel.reg("rbx") == 0x7F000 and kernel.segment("ss")["selector"] == 0x10


@pytest.mark.parametrize("body", ["syscall", "sysret", "xsetbv", "xgetbv", "vzeroupper", "vmcall", "vmmcall",
                                  "vmrun", "xbegin .+6", "xtest"])
def test_instructions_the_vcpu_does_not_offer_raise_ud(body):
    """SYSCALL/SYSRET with EFER.SCE = 0; XSETBV/XGETBV with CR4.OSXSAVE = 0; AVX with XCR0
    at its reset value (x87 only); VMX and SVM instructions outside VMX operation / with
    EFER.SVME = 0; TSX where CPUID offers no RTM: #UD, not an end of the run."""
    from pykvm.emulator.cpuid import default_cpuid

    snippet = protected(f"mov ecx, 0\nadd ecx, 0\n{body}", 6)     # flags all defined: SYSCALL reads them
    emulator = run_emulator(snippet, cpuid=default_cpuid)
    assert emulator.reg("rdi") != 0xBAD and emulator.reg("rbp") == STACK_TOP - 12


@kvm
@pytest.mark.parametrize("body", ["syscall", "xsetbv"])
def test_instructions_disabled_by_efer_or_cr4_match_the_kernel(body):
    check_kernel(protected(f"mov ecx, 0\nadd ecx, 0\n{body}", 6))


def _cpuid_with(leaf: int, reg: int, bit: int):
    """The default CPUID table with one more feature bit."""
    from pykvm.emulator.cpuid import default_cpuid

    def cpuid(l, s):
        regs = list(default_cpuid(l, s))
        if l == leaf:
            regs[reg] |= 1 << bit
        return tuple(regs)
    return cpuid


# CF is defined by TZCNT/LZCNT (the source was 0) but not by BSF/BSR: read it only where defined.
COUNTS = "mov eax, 0x00f0\n{op} ebx, eax\n{setc} cl\nxor eax, eax\nmov edx, 0x1234\n{op} edx, eax\n{setc} ch"


@pytest.mark.parametrize("op,feature,present,expected", [
    ("tzcnt", (7, 1, 3), True, (4, 32)),                  # BMI1: TZCNT, 32 for a zero source (CF=1)
    ("tzcnt", (7, 1, 3), False, (4, 0x1234)),             # no BMI1: BSF, destination kept for 0
    ("lzcnt", (0x80000001, 2, 5), True, (24, 32)),        # LZCNT
    ("lzcnt", (0x80000001, 2, 5), False, (7, 0x1234)),    # no LZCNT: BSR
])
def test_tzcnt_and_lzcnt_follow_cpuid(op, feature, present, expected):
    """F3 0F BC/BD are TZCNT/LZCNT where CPUID reports BMI1 / LZCNT (leaf 7 EBX[3],
    0x80000001 ECX[5]), and BSF/BSR (the F3 prefix ignored) where it does not: GCC -O2 emits
    `rep bsf` for __builtin_ctz relying on exactly that. (The kernel's emulator runs them as
    BSF/BSR whatever CPUID says: on a BMI1 host it departs from the SDM.)"""
    from pykvm.emulator.cpuid import default_cpuid

    cpuid = _cpuid_with(*feature) if present else default_cpuid
    result = run_emulator(Snippet(COUNTS.format(op=op, setc="setc" if present else "setz"), bits=32), cpuid=cpuid)
    assert (result.reg("rbx"), result.reg("rdx")) == expected
    if present:
        assert result.reg("rcx") == 0x0100                     # CF clear for 0xf0, set for 0


@kvm
def test_tzcnt_with_the_machines_cpuid():
    """Whatever the host: with the vCPU's own CPUID, TZCNT is TZCNT exactly when it says BMI1."""
    import io

    from pykvm.machine import Machine

    result = run_userspace(Snippet(COUNTS.format(op="tzcnt", setc="setz"), bits=32))
    with Machine(memory_size=1 << 20, serial_output=io.BytesIO()) as machine:
        bmi1 = machine.cpuid(7, 0)[1] >> 3 & 1
    assert result.reg("rdx") == (32 if bmi1 else 0x1234)
