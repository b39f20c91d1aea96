"""The Emulator's contract with the run loop: run/step counts, early returns, halting,
interrupt shadow, errors for unemulated instructions, state hand-over, cache invalidation."""

from __future__ import annotations

import pytest

from pykvm.emulator import TripleFault
from pykvm.errors import EmulationError, GuestShutdownError
from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import Recorder, protected_mode, real_mode

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")


def test_hlt_stops_and_sets_halted():
    emu, mem, _ = real_mode(assemble("mov ax, 1\nmov bx, 2\nhlt\nmov cx, 3", org=0x7C00))
    assert emu.run(100) == 3
    st = emu.state
    assert st.halted and st.rip == 0x7C00 + 3 + 3 + 1
    assert (st.gpr[0], st.gpr[3], st.gpr[1]) == (1, 2, 0)
    assert emu.run(100) == 0          # a halted vCPU runs nothing
    assert emu.instructions_executed == 3


def test_step_executes_exactly_one_instruction():
    code = assemble("inc ax\ninc ax\ninc ax\njmp 1f\n1: inc bx\nhlt", org=0x7C00)
    emu, _, _ = real_mode(code)
    rips = []
    for _ in range(5):
        emu.step()
        rips.append(emu.state.rip)
    assert rips == [0x7C01, 0x7C02, 0x7C03, 0x7C05, 0x7C06]
    assert emu.state.gpr[0] == 3 and emu.state.gpr[3] == 1


def test_run_respects_the_budget_inside_a_block():
    emu, _, _ = real_mode(assemble("inc ax\n" * 10 + "hlt", org=0x7C00))
    assert emu.run(4) == 4
    assert emu.state.gpr[0] == 4 and emu.state.rip == 0x7C04
    assert emu.run(100) == 7
    assert emu.state.gpr[0] == 10 and emu.state.halted


def test_run_returns_right_after_a_far_jump():
    code = assemble("inc ax\njmp 0x0000:0x7c10\n.org 0x10\ninc ax\ninc ax\nhlt", org=0x7C00)
    emu, _, _ = real_mode(code)
    assert emu.run(100) == 2
    assert emu.state.rip == 0x7C10 and emu.state.gpr[0] == 1


@pytest.mark.parametrize("insn", ["mov cr0, eax", "mov cr3, eax", "mov cr4, eax", "wrmsr", "lmsw ax", "clts"])
def test_run_returns_after_control_register_and_msr_writes(insn):
    pre = {"mov cr0, eax": "mov eax, cr0", "lmsw ax": "smsw ax", "wrmsr": "mov ecx, 0xc0000081",
           "mov cr4, eax": "xor eax, eax", "mov cr3, eax": "xor eax, eax", "clts": "nop"}[insn]
    emu, _, _ = protected_mode(assemble(f"{pre}\n{insn}\ninc ebx\ninc ebx\nhlt", 32, 0x100000))
    assert emu.run(100) == 2
    assert emu.state.gpr[3] == 0


def test_interrupt_shadow_after_sti_and_mov_ss():
    emu, _, _ = real_mode(assemble("sti\nnop\nmov ax, ss\nmov ss, ax\nnop\nnop\nhlt", org=0x7C00))
    emu.run(1)
    assert emu.state.interrupt_shadow and emu.state.rflags & 0x200
    emu.run(1)
    assert not emu.state.interrupt_shadow
    emu.run(2)
    assert emu.state.interrupt_shadow
    emu.run(1)
    assert not emu.state.interrupt_shadow
    # STI with IF already set creates no shadow.
    emu2, _, _ = real_mode(assemble("sti\nhlt", org=0x7C00))
    emu2.state.rflags |= 0x200
    emu2.run(1)
    assert not emu2.state.interrupt_shadow


def test_unimplemented_instruction_raises_emulation_error():
    emu, _, _ = real_mode(assemble("inc ax\nfld1\nhlt", org=0x7C00))
    with pytest.raises(EmulationError) as info:
        emu.run(10)
    err = info.value
    assert err.rip == 0x7C01 and err.code == bytes.fromhex("d9e8") and "fld1" in err.mnemonic
    assert emu.state.rip == 0x7C01 and emu.state.gpr[0] == 1


@pytest.mark.parametrize("insn", ["ud2", ".byte 0x8d, 0xc0"])   # UD2; LEA with a register operand
def test_invalid_encoding_delivers_ud_through_the_ivt(insn):
    code = assemble(f"nop\n{insn}\n.org 0x100\nmov bx, 0x55\nhlt", org=0x7C00)
    emu, mem, _ = real_mode(code)
    mem.write_u32(6 * 4, 0x7D00)       # IVT[6] = 0000:7d00
    assert emu.run(10) == 2            # nop, then the #UD (delivery ends the run: CS was loaded)
    assert emu.state.rip == 0x7D00
    emu.run(10)
    assert emu.state.gpr[3] == 0x55
    assert mem.read_u16(0x7000 - 6) == 0x7C01     # pushed IP is the faulting instruction


def test_triple_fault_is_a_guest_shutdown():
    emu, _, _ = protected_mode(assemble("xor ecx, ecx\ndiv ecx", 32, 0x100000))
    emu.state.idt.limit = 0
    with pytest.raises(TripleFault) as info:
        emu.run(10)
    assert isinstance(info.value, GuestShutdownError)
    assert "#DE" in str(info.value) and "#DF" in str(info.value) and "0x100002" in str(info.value)


def test_port_io_goes_to_the_bus():
    emu, _, bus = real_mode(assemble("mov dx, 0x3f8\nmov al, 0x41\nout dx, al\nin ax, 0x60\nout 0x80, eax\nhlt",
                                     org=0x7C00))
    a, b = Recorder(), Recorder(0x1234)
    bus.pio.register(0x3F8, 8, a)
    bus.pio.register(0x60, 1, b)
    post = Recorder()
    bus.pio.register(0x80, 1, post)
    emu.run(10)
    assert a.writes == [(0, 1, 0x41)] and post.writes == [(0, 4, 0x1234)]


def test_cpuid_builtin_and_custom():
    code = assemble("xor eax, eax\ncpuid\nmov esi, ebx\nmov eax, 0x80000001\ncpuid\nhlt", org=0x7C00)
    emu, _, _ = real_mode(code)
    emu.run(10)
    assert emu.state.gpr[6].to_bytes(4, "little") == b"pykv"
    assert emu.state.gpr[2] & (1 << 29)
    emu2, _, _ = real_mode(code)
    emu2.cpuid = lambda leaf, sub: (leaf, 0x11, 0x22, 0x33)
    emu2.run(10)
    assert emu2.state.gpr[6] == 0x11 and emu2.state.gpr[0] == 0x80000001


def test_msrs_and_unknown_msr_gp():
    code = assemble("""
        mov ecx, 0xc0000081
        mov eax, 0x11223344
        mov edx, 0x00230010
        wrmsr
        xor eax, eax
        xor edx, edx
        rdmsr
        mov ecx, 0x12345
        rdmsr
        hlt
        .org 0x200
        mov ebx, 0xdead
        hlt
    """, org=0x7C00)
    emu, mem, _ = real_mode(code)
    mem.write_u32(13 * 4, 0x7E00)
    for _ in range(5):
        emu.run(100)
        if emu.state.halted:
            break
    st = emu.state
    assert st.msrs[0xC0000081] == 0x0023001011223344
    assert (st.gpr[0], st.gpr[2]) == (0x11223344, 0x00230010)
    assert st.gpr[3] == 0xDEAD


def test_efer_lme_needs_the_lm_cpuid_bit():
    code = assemble("mov ecx, 0xc0000080\nmov eax, 0x100\nxor edx, edx\nwrmsr\nhlt", org=0x7C00)
    emu, _, _ = real_mode(code)
    emu.run(10)
    assert emu.state.efer == 0x100
    emu2, mem, _ = real_mode(code)
    emu2.cpuid = lambda leaf, sub: (0, 0, 0, 0)
    emu2.state.idt.limit = 0
    with pytest.raises(TripleFault):
        emu2.run(10)


def test_state_object_can_be_replaced():
    emu, _, _ = real_mode(assemble("inc ax\nhlt", org=0x7C00))
    new = emu.state.copy()
    new.gpr[0] = 41
    emu.state = new
    emu.run(10)
    assert new.gpr[0] == 42 and new.halted


def test_caller_changes_to_state_are_picked_up():
    emu, _, _ = real_mode(assemble("inc ax\ninc ax\nhlt", org=0x7C00))
    emu.run(1)
    emu.state.gpr[0] = 100
    emu.state.rflags |= 0x1
    emu.run(10)
    assert emu.state.gpr[0] == 101 and emu.state.rflags & 1   # INC keeps the CF we set


def test_invalidate_code_cache_sees_memory_written_behind_its_back():
    emu, mem, _ = real_mode(assemble("1: inc ax\njmp 1b", org=0x7C00))
    emu.run(4)
    assert emu.state.gpr[0] == 2
    mem.write(0x7C00, b"\x43")          # inc bx, written as KVM would (no emulator store)
    emu.invalidate_code_cache()
    emu.run(2)
    assert emu.state.gpr[3] == 1 and emu.state.gpr[0] == 2


def test_rflags_are_exact_after_run():
    emu, _, _ = real_mode(assemble("mov al, 0x7f\nadd al, 1\nhlt", org=0x7C00))
    emu.run(10)
    f = emu.state.rflags
    assert f & 0x800 and f & 0x80 and f & 0x10 and not f & 0x40 and not f & 1 and f & 2


def test_trap_flag_single_steps_with_db():
    code = assemble("""
        pushf
        pop ax
        or ax, 0x100
        push ax
        popf
        inc bx
        inc bx
        pushf
        pop ax
        and ax, 0xfeff
        push ax
        popf
        hlt
        .org 0x100
        inc si
        iret
    """, org=0x7C00)
    emu, mem, _ = real_mode(code)
    mem.write_u32(1 * 4, 0x7D00)       # IVT[1]
    total = 0
    while not emu.state.halted and total < 100:
        total += emu.run(100)
    st = emu.state
    # A #DB after each instruction from the one after the first POPF up to the second POPF
    # (inc, inc, pushf, pop, and, push, popf: TF is still set when that POPF starts).
    assert st.gpr[3] == 2 and st.gpr[6] == 7 and emu.dr[6] & 0x4000


def test_fpu_probe_as_boot_code_does_it():
    emu, _, _ = real_mode(assemble("fninit\nmov ax, 0x5a5a\nfnstsw ax\nfnstcw [0x600]\nhlt", org=0x7C00))
    emu.run(10)
    assert emu.state.gpr[0] & 0xFFFF == 0
    assert emu.memory.read_u16(0x600) == 0x37F


class _Mmio:
    def __init__(self):
        self.regs = {}
        self.log = []

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        return self.regs.get(offset, 0xA5A5A5A5) & ((1 << 8 * size) - 1)

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))
        self.regs[offset] = value


def test_accesses_outside_ram_go_to_the_mmio_bus():
    from tests.emulator.machine import protected_mode
    code = assemble("""
        mov dword ptr [0xfec00010], 0x12345678
        mov eax, [0xfec00010]
        mov bl, [0xfec00020]
        hlt
    """, 32, 0x100000)
    emu, _, bus = protected_mode(code)
    dev = _Mmio()
    bus.mmio.register(0xFEC00000, 0x1000, dev)
    emu.run(10)
    assert dev.log == [("w", 0x10, 4, 0x12345678), ("r", 0x10, 4), ("r", 0x20, 1)]
    assert emu.state.gpr[0] == 0x12345678 and emu.state.gpr[3] & 0xFF == 0xA5


def test_code_outside_ram_runs_from_the_bus():
    class Rom:
        image = assemble("inc bx\ninc bx\nhlt", 32, 0xFFFF0000)

        def read(self, offset, size):
            return int.from_bytes(self.image[offset:offset + size].ljust(size, b"\xf4"), "little")

        def write(self, offset, size, value):
            pass

    from tests.emulator.machine import protected_mode
    emu, _, bus = protected_mode(b"")
    bus.mmio.register(0xFFFF0000, 0x10000, Rom())
    emu.state.rip = 0xFFFF0000
    emu.run(10)
    assert emu.state.gpr[3] == 2 and emu.state.halted
