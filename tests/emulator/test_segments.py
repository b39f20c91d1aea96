"""Protected-mode segment loads and checks: limits, expand-down, null selectors, privilege,
accessed bit, #GP vs #SS."""

from __future__ import annotations

import pytest

from pykvm.x86 import descriptors as D
from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import install_gdt, install_idt, protected_mode, standard_gdt

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")
ORG = 0x100000

EXTRA = [
    D.encode_descriptor(0x200000, 0xFFF, 0x2, db=1),            # 0x18: 4 KiB data at 2 MiB
    D.encode_descriptor(0x200000, 0x0FFF, 0x6, db=1),           # 0x20: expand-down, valid 0x1000..
    D.encode_descriptor(0, 0xFFFFF, 0x2, dpl=0, db=1, g=1),     # 0x28: data, DPL 0
    D.encode_descriptor(0, 0xFFFFF, 0x0, db=1, g=1),            # 0x30: read-only data
    D.encode_descriptor(0, 0xFFFFF, 0x8, db=1, g=1),            # 0x38: execute-only code
]


def run_with_handlers(code: str, vectors=(10, 11, 12, 13)):
    """Run ``code``; each fault handler stores (vector, error code) in EBX/EAX and halts."""
    handlers = "".join(f".org {0x800 + 0x20 * v:#x}\nmov ebx, {v}\npop eax\nhlt\n" for v in vectors)
    emu, mem, _ = protected_mode(assemble(code + "\nmov ebx, 0xff\nhlt\n" + handlers, 32, ORG))
    install_gdt(emu, mem, standard_gdt() + EXTRA)
    install_idt(emu, mem, {v: D.encode_gate(0x08, ORG + 0x800 + 0x20 * v) for v in vectors})
    total = 0
    while not emu.state.halted and total < 10000:
        total += emu.run(1000)
    return emu, mem


def result(emu):
    return emu.state.gpr[3], emu.state.gpr[0]


def test_limit_checks_and_accessed_bit():
    emu, mem = run_with_handlers("mov ax, 0x18\nmov ds, ax\nmov dword ptr [0xffc], 7\nmov eax, [0xffd]")
    assert result(emu) == (13, 0)
    assert mem.read_u32(0x200FFC) == 7
    assert mem.read_u64(0x1018) >> 40 & 1


def test_stack_limit_violation_is_ss():
    emu, _ = run_with_handlers("mov ax, 0x18\nmov ss, ax\nmov esp, 0xffe\npop ecx")   # reads 0xffe..0x1001
    assert result(emu) == (12, 0)


def test_expand_down_segment():
    emu, mem = run_with_handlers("mov ax, 0x20\nmov es, ax\nmov dword ptr es:[0x1000], 9\n"
                                 "mov dword ptr es:[0xffe], 1")
    assert mem.read_u32(0x201000) == 9
    assert result(emu) == (13, 0)


def test_null_selector_loads_but_faults_on_use():
    emu, _ = run_with_handlers("xor eax, eax\nmov fs, ax\nmov ecx, 1\nmov eax, fs:[0]")
    assert result(emu) == (13, 0) and emu.state.gpr[1] == 1


def test_null_ss_is_gp0():
    emu, _ = run_with_handlers("xor eax, eax\nmov ss, ax")
    assert result(emu) == (13, 0)


def test_rpl_above_dpl_is_gp_with_selector():
    emu, _ = run_with_handlers("mov ax, 0x2b\nmov ds, ax")
    assert result(emu) == (13, 0x28)


def test_read_only_and_execute_only_segments():
    emu, _ = run_with_handlers("mov ax, 0x30\nmov ds, ax\nmov eax, [0x100]\nmov [0x100], eax")
    assert result(emu) == (13, 0)
    emu, _ = run_with_handlers("mov ax, 0x38\nmov ds, ax")        # execute-only code into DS
    assert result(emu) == (13, 0x38)
    emu, _ = run_with_handlers("mov ax, 0x08\nmov ss, ax")        # code segment into SS
    assert result(emu) == (13, 0x08)


def test_segment_base_is_applied():
    emu, mem = run_with_handlers("mov ax, 0x18\nmov es, ax\nmov dword ptr es:[0x10], 0xabcd")
    assert mem.read_u32(0x200010) == 0xABCD and result(emu)[0] == 0xFF


def test_ldt_descriptors():
    code = """
        mov ax, 0x40
        lldt ax
        mov ax, 0x0c          # LDT index 1, TI=1
        mov ds, ax
        mov dword ptr [0x20], 0x77
        sldt cx
    """
    emu, mem, _ = protected_mode(assemble(code + "\nhlt", 32, ORG))
    ldt_base = 0x3000
    mem.write_u64(ldt_base + 8, D.encode_descriptor(0x280000, 0xFFFF, 0x2, db=1))
    install_gdt(emu, mem, standard_gdt() + EXTRA + [D.encode_descriptor(ldt_base, 0xF, D.SYS_LDT, s=0)])
    emu.run(100)
    assert mem.read_u32(0x280020) == 0x77 and emu.state.gpr[1] & 0xFFFF == 0x40
