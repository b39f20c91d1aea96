"""Every exit type we can provoke on this host, as the typed records report them."""

from __future__ import annotations

import pytest

from pykvm.errors import KvmIoctlError
from pykvm.kvm.exits import (DebugExit, ExitReason, HltExit, InternalErrorExit, IntrExit, IoExit,
                             MmioExit, ShutdownExit)
from tests.asm import assemble
from tests.kvm.guest import CODE_ADDR, raw_guest

pytestmark = pytest.mark.kvm


@pytest.mark.parametrize("size,reg,value", [(1, "al", 0x5A), (2, "ax", 0xBEEF), (4, "eax", 0xCAFEF00D)])
def test_out_of_each_size(size, reg, value):
    code = assemble(f"mov eax, {value}\nmov dx, 0x3f8\nout dx, {reg}\nhlt")
    with raw_guest(code) as (_, _, _, vcpu):
        exit_ = vcpu.run()
        assert isinstance(exit_, IoExit) and exit_.is_out
        assert (exit_.port, exit_.size, exit_.count) == (0x3F8, size, 1)
        assert exit_.values() == [value]
        assert isinstance(vcpu.run(), HltExit)


@pytest.mark.parametrize("size,reg", [(1, "al"), (2, "ax"), (4, "eax")])
def test_in_of_each_size_delivers_the_value_we_supply(size, reg):
    code = assemble(f"xor eax, eax\nin {reg}, 0x60\nhlt")
    with raw_guest(code) as (_, _, _, vcpu):
        exit_ = vcpu.run()
        assert isinstance(exit_, IoExit) and not exit_.is_out and exit_.size == size and exit_.port == 0x60
        exit_.set_values([0x11223344])
        assert isinstance(vcpu.run(), HltExit)
        assert vcpu.get_regs().rax == 0x11223344 & ((1 << (8 * size)) - 1)


def test_rep_outsb_delivers_every_byte():
    """KVM may batch a string I/O instruction into one exit (count > 1) or, as PVM does, exit per element."""
    code = assemble("lea rsi, [rip + msg]\nmov ecx, 5\nmov dx, 0x3f8\nrep outsb\nhlt\nmsg: .ascii \"hello\"")
    with raw_guest(code) as (_, _, _, vcpu):
        received = []
        while isinstance(exit_ := vcpu.run(), IoExit):
            assert exit_.port == 0x3F8 and exit_.size == 1 and 1 <= exit_.count <= 5
            received += exit_.values()
        assert isinstance(exit_, HltExit)
        assert bytes(received) == b"hello"


def test_mmio_write_and_read_outside_guest_ram():
    # RAM is 4 MiB; the loader's identity map covers the first GiB, so 0x800000 is mapped but unbacked.
    code = assemble("mov rbx, 0x800000\nmov dword ptr [rbx], 0x12345678\nmov eax, dword ptr [rbx + 8]\nhlt")
    with raw_guest(code, memory=4 << 20) as (_, _, mem, vcpu):
        exit_ = vcpu.run()
        assert isinstance(exit_, MmioExit) and exit_.is_write
        assert (exit_.address, exit_.length, exit_.value) == (0x800000, 4, 0x12345678)
        exit_ = vcpu.run()
        assert isinstance(exit_, MmioExit) and not exit_.is_write and exit_.address == 0x800008
        exit_.set_value(0xA5A5A5A5)
        assert isinstance(vcpu.run(), HltExit)
        assert vcpu.get_regs().rax == 0xA5A5A5A5


def test_write_to_a_readonly_slot_is_an_mmio_exit():
    code = assemble("mov rbx, 0x400000\nmov eax, dword ptr [rbx]\nmov dword ptr [rbx], 7\nhlt")
    with raw_guest(code) as (_, vm, _, vcpu):
        rom = vm.create_memory(0x1000, guest_phys_addr=0x400000, readonly=True)
        rom.write(0x400000, b"\x2a\x00\x00\x00")
        exit_ = vcpu.run()
        assert isinstance(exit_, MmioExit) and exit_.is_write and exit_.address == 0x400000
        assert vcpu.get_regs().rax == 42  # the read came from the slot, without an exit


def test_hlt():
    with raw_guest(assemble("hlt")) as (_, _, _, vcpu):
        assert vcpu.run().reason == ExitReason.HLT
        assert vcpu.get_regs().rip == CODE_ADDR + 1


def test_unhandled_exception_is_a_shutdown_exit():
    """#UD with an IDT of limit 0 triple-faults on any KVM; PVM (no event entry set up) shuts down too."""
    code = assemble("lidt [rip + idtr]\nud2\nhlt\nidtr: .word 0\n.quad 0")
    with raw_guest(code) as (_, _, _, vcpu):
        assert isinstance(vcpu.run(), ShutdownExit)


def test_kernel_emulator_failure_is_an_internal_error_with_the_bytes():
    """INT3 with no IDT in 32-bit protected mode: the host's non-PVM emulation gives up."""
    # idtr is addressed absolutely: the code sits at CODE_ADDR
    code = assemble(f"lidt [{CODE_ADDR} + idtr]\nint3\nhlt\nidtr: .word 0\n.long 0", bits=32)
    with raw_guest(code, mode="protected") as (_, _, _, vcpu):
        exit_ = vcpu.run()
        if not isinstance(exit_, InternalErrorExit):
            pytest.skip(f"this host's kernel handles it: {exit_.describe()}")
        assert exit_.instruction_bytes[:1] == b"\xcc"


def test_kernel_emulator_refuses_protected_mode_iret():
    """PVM.md: the host's non-PVM emulation cannot IRET in protected mode → internal error."""
    code = assemble("pushfd\npush cs\npush offset done\niretd\ndone: hlt", bits=32)
    with raw_guest(code, mode="protected") as (_, _, _, vcpu):
        exit_ = vcpu.run()
        if isinstance(exit_, HltExit):
            pytest.skip("this host's kernel emulates protected-mode IRET")
        assert isinstance(exit_, InternalErrorExit)
        assert "internal error" in exit_.describe()


def test_single_step_gives_debug_exits_at_each_instruction():
    code = assemble("nop\nnop\ninc eax\nhlt")
    with raw_guest(code) as (_, _, _, vcpu):
        vcpu.set_guest_debug(single_step=True)
        pcs = []
        for _ in range(3):
            exit_ = vcpu.run()
            assert isinstance(exit_, DebugExit)
            pcs.append(exit_.pc)
        assert pcs == [CODE_ADDR + 1, CODE_ADDR + 2, CODE_ADDR + 4]
        vcpu.set_guest_debug(enable=False)
        assert isinstance(vcpu.run(), HltExit)


def test_hardware_breakpoint():
    code = assemble("nop\nnop\nnop\ninc eax\nhlt")
    with raw_guest(code) as (_, _, _, vcpu):
        vcpu.set_guest_debug(hw_breakpoints=(CODE_ADDR + 3,))
        exit_ = vcpu.run()
        assert isinstance(exit_, DebugExit) and exit_.pc == CODE_ADDR + 3


def test_immediate_exit_returns_an_intr_exit_without_running():
    with raw_guest(assemble("hlt")) as (_, _, _, vcpu):
        vcpu.immediate_exit = True
        assert isinstance(vcpu.run(), IntrExit)
        assert vcpu.get_regs().rip == CODE_ADDR
        vcpu.immediate_exit = False
        assert isinstance(vcpu.run(), HltExit)


def test_sync_regs_carry_state_on_every_exit():
    code = assemble("mov rax, 0x1122334455667788\nout 0x80, al\nhlt")
    with raw_guest(code) as (_, _, _, vcpu):
        vcpu.run()
        assert vcpu.sync_regs.regs.rax == 0x1122334455667788
        assert vcpu.sync_regs.sregs.cs.l == 1


def test_failing_ioctl_names_itself():
    with raw_guest(assemble("hlt")) as (_, _, _, vcpu):
        with pytest.raises(KvmIoctlError, match="KVM_SET_MSRS"):
            vcpu.set_msrs({0xDEADBEEF: 1})


@pytest.mark.kvm
def test_an_access_straddling_the_end_of_ram_is_served_in_fragments():
    """KVM splits a load that leaves the RAM slot; the part past it comes as an MMIO exit of an
    odd length (3 bytes here), which unclaimed MMIO answers with all-ones."""
    import io

    from pykvm.machine import Machine
    from tests.asm import assemble

    size = 4 << 20
    code = assemble(f"mov byte ptr [{size - 1:#x}], 0x5a\nmov eax, [{size - 1:#x}]\nhlt")
    with Machine(memory_size=size, serial_output=io.BytesIO()) as machine:
        machine.load(code, fmt="flat", mode="long")
        assert machine.run(timeout=10) == 0
        assert machine.current_state().gpr[0] == 0xFFFFFF5A
