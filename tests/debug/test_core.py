"""The debug core over both executors, on the default guest (real → protected → long → PVM mode)
and on small guests with interrupts."""

from __future__ import annotations

import io
import logging
import threading
import time

import pytest

from pykvm.debug.core import Debugger, DebugError, parse_address
from pykvm.machine import Machine
from pykvm.x86 import boot
from tests.asm import assemble
from tests.debug.listing import boot_machine, objdump_listing, symbols
from tests.pvm_irq_probe import REPORT_PORT, _Reports, window_image

MSG_REAL = b"[real] 16-bit real mode at 0000:7c00, no BIOS\n"
MSG_LONG = b"[long] 64-bit long mode: running in PVM mode under KVM\n"


def _first(mnemonic: str, start: str) -> int:
    """The address of the first ``mnemonic`` at or after symbol ``start`` in the guest's listing."""
    listing = objdump_listing()
    return min(a for a, ins in listing.items() if a >= symbols()[start] and ins.mnemonic == mnemonic)


# -- addresses (no KVM) -------------------------------------------------------------------------------
@pytest.mark.parametrize("text,linear", [("0x7c00", 0x7C00), ("31744", 0x7C00), ("0000:7c00", 0x7C00),
                                         ("07c0:0000", 0x7C00), ("f000:fff0", 0xFFFF0), ("0x7c0:0x10", 0x7C10)])
def test_addresses(text, linear):
    assert parse_address(text) == linear


def test_segment_register_and_symbol_addresses():
    state = boot.initial_state("real", 0x12345)
    assert parse_address("cs:5", state) == state.seg[1].base + 5
    assert parse_address("start+0x10", None, {"start": 0x7C00}) == 0x7C10
    with pytest.raises(DebugError, match="not an address"):
        parse_address("nowhere", state, {"start": 0x7C00})


# -- the default guest --------------------------------------------------------------------------------

@pytest.mark.kvm
def test_a_breakpoint_in_each_executor_hits_once_then_the_guest_ends_with_its_status():
    with boot_machine() as m:
        d = Debugger(m, symbols=symbols())
        for name in ("protected_start", "long_start"):
            d.add_breakpoint(symbols()[name])
        first = d.cont()
        assert (first.reason, first.address, d.executor) == ("breakpoint", symbols()["protected_start"], "emu")
        assert d.mode() == "protected mode (32-bit)"
        second = d.cont()
        assert (second.reason, second.address, d.executor) == ("breakpoint", symbols()["long_start"], "kvm")
        assert d.mode() == "long mode (64-bit)" and m.in_pvm_mode
        end = d.cont()
        assert end.exited and end.status == 1 and end.error is None
        assert m.serial_out.getvalue().count(b"\n") == 3


@pytest.mark.kvm
@pytest.mark.parametrize("start,message,executor", [("real_start", MSG_REAL, "emu"),
                                                    ("long_start", MSG_LONG, "kvm")])
def test_a_loop_breakpoint_hits_once_per_iteration(start, message, executor):
    """The LODSB of a SERIAL_PUTS loop: once per character and once for the NUL."""
    lods = _first("lods", start)
    with boot_machine() as m:
        d = Debugger(m)
        d.add_breakpoint(lods)
        hits = []
        while not (stop := d.cont()).exited:
            assert stop.reason == "breakpoint" and d.pc() == lods
            hits.append(d.executor)
        assert hits == [executor] * (len(message) + 1)
        assert stop.status == 1


@pytest.mark.kvm
def test_steps_cross_every_mode_and_the_conversion():
    with boot_machine() as m:
        d = Debugger(m)
        seen = []
        while True:
            record, stop = d.step_record()
            if not seen or seen[-1] != (record.executor, record.mode):
                seen.append((record.executor, record.mode))
            if stop.exited:
                break
        assert seen == [("emu", "real mode"), ("emu", "protected mode (16-bit)"), ("emu", "protected mode (32-bit)"),
                        ("emu", "long mode (compat 32-bit)"), ("kvm", "long mode (64-bit)")]
        assert stop.status == 1 and m.stats.conversions == 1


@pytest.mark.kvm
def test_stops_at_each_mode_change_and_at_the_conversion():
    with boot_machine() as m:
        d = Debugger(m)
        d.catch("mode")
        d.catch("conversion")
        stops = []
        while not (stop := d.cont()).exited:
            stops.append((stop.reason, d.mode(), d.executor))
        assert stops == [("mode", "protected mode (16-bit)", "emu"), ("mode", "protected mode (32-bit)", "emu"),
                         ("mode", "long mode (compat 32-bit)", "emu"), ("mode", "long mode (64-bit)", "kvm"),
                         ("conversion", "long mode (64-bit)", "kvm")]
        assert stop.status == 1


@pytest.mark.kvm
def test_memory_and_registers_in_both_executors():
    s = symbols()
    with boot_machine() as m:
        d = Debugger(m)
        d.add_breakpoint(s["real_start"])
        d.add_breakpoint(s["long_start"])
        d.cont()
        assert d.read_memory(s["msg_real"], len(MSG_REAL)) == MSG_REAL
        d.write_memory(s["msg_real"] + 1, b"REAL")              # printed from here on
        d.write_registers({"rbx": 0x1234})
        assert d.state().gpr[3] == 0x1234
        d.cont()
        assert m.in_pvm_mode
        assert d.read_memory(s["msg_long"], len(MSG_LONG)) == MSG_LONG      # through KVM_TRANSLATE
        assert d.read_memory(1 << 40, 16) == b""                           # not mapped
        d.write_registers({"rbx": 0x5678, "rflags": d.state().rflags})
        assert d.state().gpr[3] == 0x5678
        with pytest.raises(DebugError, match="cannot write cr0"):
            d.write_registers({"cr0": 0})
        assert d.cont().status == 1
        assert m.serial_out.getvalue().startswith(b"[REAL] 16-bit")


@pytest.mark.kvm
def test_pvm_mode_has_four_breakpoints_and_says_why(caplog):
    s = symbols()
    with boot_machine() as m:
        d = Debugger(m)
        for i in range(6):                                     # fine in the emulator
            d.add_breakpoint(s["long_start"] + 0x40 + i)
        d.add_breakpoint(s["long_start"])
        with caplog.at_level(logging.WARNING, logger="pykvm"):
            d.cont()                                           # converts on the way
        assert "only 0x" in caplog.text and "KVM internal error" in caplog.text
        for a in list(d.breakpoints):
            d.remove_breakpoint(a)
        for i in range(4):
            d.add_breakpoint(s["long_start"] + 0x40 + i)
        with pytest.raises(DebugError, match="4 hardware breakpoints"):
            d.add_breakpoint(s["long_start"] + 0x50)


@pytest.mark.kvm
@pytest.mark.parametrize("mode,code", [("real", b"\xeb\xfe"), ("long", b"\xeb\xfe")])
def test_interrupt_stops_a_running_guest(mode, code):
    with Machine(serial_output=io.BytesIO()) as m:
        m.load(code, "flat", mode=mode)
        d = Debugger(m, timeout=20)
        threading.Timer(0.3, d.interrupt).start()
        started = time.monotonic()
        stop = d.cont()
        assert stop.reason == "interrupt" and time.monotonic() - started < 2
        assert d.executor == ("emu" if mode == "real" else "kvm")
        assert d.step().reason == "step"


# -- stepping with interrupts -------------------------------------------------------------------------
TICKS16 = """
    xor ax, ax
    mov ds, ax
    mov word ptr [8 * 4], offset tick      # IRQ 0 at vector 8, as pykvm's PICs start
    mov word ptr [8 * 4 + 2], 0
    mov al, 0x34                            # PIT channel 0, mode 2, 1193 counts: ~1 kHz
    out 0x43, al
    mov al, 0xa9
    out 0x40, al
    mov al, 0x04
    out 0x40, al
    xor bx, bx
again:
    sti
    hlt
    cli
    inc bx                                  # wake-ups; the handler counts ticks in CX
    cmp bx, 3
    jb again
    mov al, bl
    out 0xf4, al                            # status (3 << 1) | 1 = 7: three wake-ups
tick:
    inc cx
    mov al, 0x20
    out 0x20, al
    iret
"""


@pytest.mark.kvm
def test_stepping_sleeps_in_hlt_and_delivers_each_tick_once():
    """A step onto HLT leaves the vCPU halted; the next one sleeps until the tick and delivers
    it (an 'interrupt' record); no HLT ever wakes without one."""
    with Machine(serial_output=io.BytesIO()) as m:
        m.load(assemble(TICKS16, bits=16, org=0x7C00), "flat", mode="real")
        d = Debugger(m, timeout=30)
        records = []
        while True:
            record, stop = d.step_record()
            records.append(record)
            if stop.exited:
                break
        assert stop.status == 7
        events = [i for i, r in enumerate(records) if r.event == "interrupt"]
        handled = [r for r in records if r.asm == "inc cx"]
        assert len(events) == len(handled) >= 3             # each tick delivered once
        halts = [i for i, r in enumerate(records) if r.asm == "hlt"]
        assert halts and all(records[i + 1].event == "interrupt" for i in halts)
        # A tick can also arrive while the handler runs (a loaded host steps slowly): then it is
        # taken right after the IRET that sets IF again, never anywhere else.
        assert all(records[i - 1].asm in ("hlt", "iret") for i in events)


@pytest.mark.kvm
def test_kvm_steps_take_an_interrupt_one_instruction_after_sti():
    """As pykvm run does (tests/test_injection.py), stepped: the handler reports ECX = 1."""
    reports = _Reports()
    with Machine(serial_output=io.BytesIO(), testdev=True) as m:
        m.bus.pio.register(REPORT_PORT, 4, reports)
        m.load(window_image("sti\n inc ecx\n inc ecx\n inc ecx\n", 2), "flat", mode="long")
        d = Debugger(m, timeout=30)
        events = 0
        while True:
            record, stop = d.step_record()
            events += record is not None and record.event == "interrupt"
            if stop.exited:
                break
        assert reports.values == [1, 1] and events == 2


@pytest.mark.kvm
def test_an_interrupt_asked_for_before_continue_stops_it_at_once_and_only_once():
    with boot_machine() as m:
        d = Debugger(m, timeout=20)
        d.interrupt()                               # gdb's Ctrl-C just as it resumes
        assert d.cont().reason == "interrupt" and d.pc() == 0x7C00
        d.add_breakpoint(symbols()["protected_start"])
        assert d.cont().reason == "breakpoint"      # consumed: the next one runs
        d.interrupt()
        assert d.step().reason == "interrupt" and d.pc() == symbols()["protected_start"]
        assert d.step().reason == "step" and d.pc() == symbols()["protected_start"] + 4
