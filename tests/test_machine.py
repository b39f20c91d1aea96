"""The Machine's run loop on real KVM: PVM-mode guests, devices, and how runs end."""

from __future__ import annotations

import io
import struct

import pytest

from pykvm.errors import GuestShutdownError, GuestTimeoutError
from pykvm.guests import build_guest, build_script
from pykvm.machine import Machine
from tests.asm import assemble

pytestmark = pytest.mark.kvm


def run_image(data: bytes, mode: str = "long", timeout: float = 30, **machine_args):
    out = io.BytesIO()
    with Machine(serial_output=out, **machine_args) as machine:
        machine.load(data, "flat", mode=mode)
        status = machine.run(timeout=timeout)
        return status, out.getvalue(), machine.stats


def test_hello64_prints_and_exits_through_the_debug_port():
    status, output, stats = run_image(build_guest("hello64").read_bytes())
    assert output == b"Hello from a 64-bit pykvm guest!\n"
    assert status == 1  # debug-exit value 0
    assert stats.conversions == 1 and stats.emulated_instructions == 0


def test_exits64_makes_one_exit_per_out_and_halts_cleanly():
    data = bytearray(build_guest("exits64").read_bytes())
    struct.pack_into("<Q", data, build_script().COUNT_OFFSET, 1000)
    status, _, stats = run_image(bytes(data), coalesce=False)
    assert status == 0
    assert stats.kvm_exits >= 1000


def test_runaway_guest_is_stopped_by_the_timeout():
    with pytest.raises(GuestTimeoutError, match="timeout"):
        run_image(assemble("spin: jmp spin"), timeout=0.3)


def test_runaway_guest_in_a_timer_free_loop_with_interrupts_on_halts_until_timeout():
    with pytest.raises(GuestTimeoutError):
        run_image(assemble("sti\nhlt"), timeout=0.3)


def test_triple_fault_ends_the_run_with_a_shutdown_error():
    with pytest.raises(GuestShutdownError, match="rip="):
        run_image(assemble("ud2"))


def test_debug_exit_with_any_access_size():
    for reg, value in (("al", 3), ("ax", 0x102), ("eax", 0x10002)):
        status, _, _ = run_image(assemble(f"mov eax, {value}\nout 0xf4, {reg}"))
        assert status == (value << 1) | 1


def test_serial_polling_guest_prints_through_the_uart():
    code = assemble("""
        lea rsi, [rip + msg]
    next:
        mov dx, 0x3fd
    wait: in al, dx
        test al, 0x20
        jz wait
        lodsb
        test al, al
        jz done
        mov dx, 0x3f8
        out dx, al
        jmp next
    done: hlt
    msg: .asciz "polled\\n"
    """)
    status, output, _ = run_image(code)
    assert (status, output) == (0, b"polled\n")


def test_kernel_emulator_boots_the_default_guest_through_every_mode():
    status, output, stats = run_image(build_guest("boot16to64").read_bytes(), mode="real", emulator="kernel")
    text = output.decode()
    assert "[real]" in text and "[protected]" in text and "[long]" in text
    assert status == 1


def test_machines_close_every_fd(open_fds):
    """Both paths: KVM_RUN only, and the emulator holding views of guest RAM."""
    before = open_fds()
    for _ in range(10):
        run_image(assemble("hlt"))
        run_image(assemble("mov eax, 1\nmov [0x2000], eax\nhlt", bits=32), mode="protected")
    assert open_fds() == before


def test_single_stepping_under_kvm_follows_the_instruction_lengths():
    """Like rust-vmm's test_run_code: step a tiny program and check RIP after each step."""
    code = assemble("mov eax, 1\nadd eax, eax\nnop\nhlt")
    with Machine(serial_output=io.BytesIO()) as machine:
        machine.load(code, "flat", mode="long")
        rips = []
        for _ in range(3):
            assert machine.step() is None
            rips.append(machine.current_state().rip)
        assert rips == [0x100005, 0x100007, 0x100008]
        assert machine.current_state().gpr[0] == 2
        assert machine.step() == 0  # hlt with interrupts off ends the guest


def test_stepping_onto_hlt_with_interrupts_on_returns_instead_of_sleeping():
    with Machine(serial_output=io.BytesIO()) as machine:
        machine.load(assemble("sti\nhlt\nhlt"), "flat", mode="long")
        assert machine.step() is None
        assert machine.step() is None
        assert machine.current_state().rip == 0x100002


def test_guest_returning_to_non_pvm_mode_is_taken_over_by_the_userspace_emulator():
    """64-bit code far-returns to a 32-bit supervisor segment (non-PVM mode again), turns paging
    off and halts: from the first exit after the switch, pykvm's emulator runs the guest."""
    code = assemble("""
        mov dx, 0x3f8
        mov al, 'L'
        out dx, al
        push 0x08
        lea rax, [rip + compat]
        push rax
        retfq
    .code32
    compat:
        mov al, 'C'
        out dx, al
        in al, dx
        mov eax, cr0
        and eax, 0x7fffffff
        mov cr0, eax
        mov al, 'P'
        out dx, al
        hlt
    """)
    out = io.BytesIO()
    with Machine(serial_output=out) as machine:
        machine.load(code, "flat", mode="long")
        assert machine.run(timeout=10) == 0
        assert out.getvalue() == b"LCP"
        assert machine.stats.reentries == 1
        assert machine.stats.emulated_instructions == 7  # in, mov, and, mov cr0, mov, out, hlt
        state = machine.current_state()
        assert not state.cr0 & 0x80000000 and not state.efer & 0x400  # paging off left long mode


def test_cpuid_reports_this_vcpus_apic_id_under_kvm_and_in_the_emulator():
    code32 = assemble("mov eax, 1\ncpuid\nhlt", bits=32)
    code64 = assemble("mov eax, 1\ncpuid\nhlt")
    with Machine(serial_output=io.BytesIO()) as machine:
        machine.load(code32, "flat", mode="protected")
        machine.run(timeout=10)
        emulated = machine.current_state().gpr[3]
        machine.load(code64, "flat", mode="long")
        machine.run(timeout=10)
        hardware = machine.current_state().gpr[3]
    assert emulated >> 24 == hardware >> 24 == 0
    assert emulated == hardware


def test_loading_a_second_image_restarts_the_emulator_on_the_new_state():
    with Machine(serial_output=io.BytesIO()) as machine:
        machine.load(assemble("mov eax, 1\nhlt", bits=32), "flat", mode="protected")
        machine.run(timeout=10)
        machine.load(assemble("mov eax, 2\nhlt", bits=32), "flat", mode="protected")
        machine.run(timeout=10)
        assert machine.current_state().gpr[0] == 2


def test_instruction_count_includes_a_batch_cut_short_by_the_debug_exit():
    code = assemble("nop\nnop\nnop\nxor eax, eax\nout 0xf4, al", bits=32)
    with Machine(serial_output=io.BytesIO()) as machine:
        machine.load(code, "flat", mode="protected")
        assert machine.run(timeout=10) == 1
        assert machine.stats.emulated_instructions == 5


def test_run_control_sleeps_until_a_deadline_or_a_wake_up():
    """Off the main thread there is no watchdog tick, so only the deadline or wake() can end a
    sleep; the bounds are loose (a loaded host), a sleep that never ends is what they catch."""
    import threading
    import time

    from pykvm.control import RunControl
    from pykvm.pvm import Events

    slept = []

    def sleeper():
        with RunControl(Events(), [], None) as control:
            started = time.monotonic()
            control.sleep_until(time.monotonic_ns() + 30_000_000)
            slept.append(time.monotonic() - started)
            control.wake()                          # a wake-up before the sleep is not lost
            control.sleep_until(None)
            threading.Timer(0.02, control.wake).start()
            control.sleep_until(None)               # woken from another thread
            slept.append("woken")

    worker = threading.Thread(target=sleeper, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "sleep_until(None) was never woken"
    assert slept[0] >= 0.025 and slept[1:] == ["woken"]


def test_an_armed_timer_kicks_the_run_loops():
    import time

    from pykvm.control import RunControl
    from pykvm.pvm import Events

    events = Events()
    with RunControl(events, [], None) as control:
        events.pending = False
        control.arm(time.monotonic_ns() + 5_000_000)
        control.sleep_until(time.monotonic_ns() + 50_000_000)
        assert events.pending and control.timer_due is None
