"""Debugger breakpoints in the emulator: guards planted at translation, nothing without them."""

from __future__ import annotations

import pytest

from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import protected_mode, real_mode, run_until_halt

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")

LOOP = "mov cx, 3\nagain: inc ax\ninc bx\ndec cx\njnz again\nhlt"
AGAIN = 0x7C03      # after the 3-byte mov cx, 3


def _run_to_stops(emu):
    """From a breakpoint, run to the end stepping over each one as a debugger does; the addresses hit."""
    hits = []
    while not emu.state.halted:
        emu.breakpoints_armed = False
        emu.step()
        emu.breakpoints_armed = True
        emu.breakpoint_hit = None
        emu.run(1000)
        if emu.breakpoint_hit is not None:
            hits.append(emu.breakpoint_hit)
    return hits


@pytest.mark.parametrize("where", [AGAIN, AGAIN + 1, AGAIN + 3])   # first, middle, last of a block
def test_a_breakpoint_stops_before_its_instruction_once_per_pass(where):
    emu, _, _ = real_mode(assemble(LOOP, org=0x7C00))
    emu.set_breakpoints({where})
    seen = []
    emu.breakpoint_observer = seen.append
    emu.run(1000)
    assert emu.state.rip == where and emu.breakpoint_hit == where and seen == [where]
    executed = emu.instructions_executed
    assert executed == {AGAIN: 1, AGAIN + 1: 2, AGAIN + 3: 4}[where]    # nothing at the breakpoint ran
    assert _run_to_stops(emu) == [where] * 2
    assert emu.state.gpr[0] == 3 and emu.state.gpr[3] == 3


def test_blocks_translated_before_the_breakpoint_are_dropped_and_after_removal_too():
    emu, _, _ = real_mode(assemble(LOOP, org=0x7C00))
    emu.run(2)                                  # translates the loop block
    emu.set_breakpoints({AGAIN + 2})
    emu.run(1000)
    assert emu.state.rip == AGAIN + 2 and emu.state.gpr[3] == 1
    emu.set_breakpoints(())
    assert run_until_halt(emu) > 0 and emu.state.gpr[3] == 3


def test_disarmed_breakpoints_let_execution_through():
    emu, _, _ = real_mode(assemble(LOOP, org=0x7C00))
    emu.set_breakpoints({AGAIN})
    emu.breakpoints_armed = False
    run_until_halt(emu)
    assert emu.state.halted and emu.breakpoint_hit is None


def test_breakpoints_are_linear_addresses_through_cs_base():
    code = assemble("mov ax, 1\nhlt", org=0)
    emu, mem, _ = real_mode(b"")
    mem.write(0x12340, code)
    st = emu.state
    st.seg[1].selector, st.seg[1].base, st.rip = 0x1234, 0x12340, 0
    emu.sync()
    emu.set_breakpoints({0x12343})
    emu.run(10)
    assert st.rip == 3 and not st.halted


def test_no_breakpoint_means_unguarded_closures():
    emu, _, _ = protected_mode(assemble("inc eax\ninc eax\nhlt", bits=32, org=0x100000))
    emu.run(1)
    blk = emu.cache[0x100000]
    assert all(f.__name__ != "guarded" for f in blk.fns) and blk.term.__name__ != "guarded"
