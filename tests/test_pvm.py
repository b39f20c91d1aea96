"""PVM's conversion rule and bounded loop, rule by rule and exit path by exit path (no KVM needed).

The loop is driven by a scripted stand-in for the emulator: each "instruction" is a
function applied to the CpuState, which is all ``handle_non_pvm_mode`` may rely on.
"""

from __future__ import annotations

import pytest

from pykvm import pvm
from pykvm.x86.state import CS, SS, CpuState
from pykvm.errors import EmulationError
from pykvm.x86.bits import (CR0_AM, CR0_CD, CR0_NE, CR0_NW, CR0_PE, CR0_PG, CR0_WP, EFER_LMA, EFER_LME,
                            EFER_SCE, MSR_STAR)


def long_mode_state(l=1, db=0, dpl=0, selector=0x18) -> CpuState:
    s = CpuState()
    s.cr0 = CR0_PE | CR0_PG | CR0_NW | CR0_CD
    s.efer = EFER_LME | EFER_LMA
    s.seg[CS].l, s.seg[CS].db, s.seg[CS].dpl, s.seg[CS].selector = l, db, dpl, selector
    s.seg[SS].dpl = dpl
    return s


def test_reset_state_is_non_pvm_mode():
    assert not pvm.may_convert(CpuState())
    assert CpuState().msrs.get(MSR_STAR, 0) == 0


def test_64bit_code_segment_converts_and_fixes_efer_cr0_and_star():
    s = long_mode_state()
    assert pvm.try_to_convert_to_pvm_mode(s)
    assert s.efer & EFER_SCE
    assert not s.cr0 & (CR0_NW | CR0_CD)
    assert s.cr0 & (CR0_NE | CR0_AM | CR0_WP | CR0_PG | CR0_PE) == CR0_NE | CR0_AM | CR0_WP | CR0_PG | CR0_PE
    assert s.msrs[MSR_STAR] == (0x18 << 32) | (0x23 << 48)


def test_star_holding_a_kernel_cs_is_kept():
    s = long_mode_state()
    s.msrs[MSR_STAR] = (0x10 << 32) | (0x1B << 48)
    assert pvm.try_to_convert_to_pvm_mode(s)
    assert s.msrs[MSR_STAR] == (0x10 << 32) | (0x1B << 48)


def test_star_with_only_rpl_bits_counts_as_no_kernel_cs():
    s = long_mode_state()
    s.msrs[MSR_STAR] = 3 << 32
    pvm.try_to_convert_to_pvm_mode(s)
    assert s.msrs[MSR_STAR] == (0x18 << 32) | (0x23 << 48)


@pytest.mark.parametrize("l,db,dpl,ok", [
    (1, 0, 0, True),    # 64-bit supervisor
    (1, 0, 3, True),    # 64-bit user
    (0, 1, 3, True),    # compat user (CS.D=1 outside supervisor mode)
    (0, 1, 0, False),   # 32-bit supervisor: non-PVM mode
    (0, 0, 3, False),   # 16-bit compat user
    (0, 0, 0, False),
])
def test_conversion_rule_in_long_mode(l, db, dpl, ok):
    assert pvm.may_convert(long_mode_state(l, db, dpl)) is ok


def test_no_conversion_without_lma():
    s = long_mode_state()
    s.efer = EFER_LME  # LME without LMA: paging not on yet
    assert not pvm.try_to_convert_to_pvm_mode(s)
    assert not s.efer & EFER_SCE and MSR_STAR not in s.msrs  # nothing touched


class ScriptedEmulator:
    """Runs a list of state-changing steps; stops after 'mode' steps like the real emulator."""

    def __init__(self, state, steps, mode_steps=()):
        self.state = state
        self.steps = list(steps)
        self.mode_steps = set(mode_steps)
        self.executed = 0
        self.run_calls = []

    def run(self, budget):
        self.run_calls.append(budget)
        n = 0
        while n < budget and self.steps:
            step = self.steps.pop(0)
            step(self.state)
            self.executed += 1
            n += 1
            if id(step) in self.mode_steps or self.state.halted:
                break
        return n


def nop(state):
    state.rip += 1


def enter_long_mode(state):
    state.efer |= EFER_LME | EFER_LMA
    state.cr0 |= CR0_PG | CR0_PE
    state.seg[CS].l = 1
    state.seg[CS].selector = 0x18


def test_loop_converts_first_without_emulating():
    emu = ScriptedEmulator(long_mode_state(), [nop])
    assert pvm.handle_non_pvm_mode(emu) == (pvm.Outcome.CONVERTED, 0)
    assert emu.executed == 0


def test_loop_uses_the_budget_then_returns():
    emu = ScriptedEmulator(CpuState(), [nop] * 500)
    assert pvm.handle_non_pvm_mode(emu, budget=130) == (pvm.Outcome.BUDGET_USED, 130)
    assert emu.executed == 130
    assert pvm.handle_non_pvm_mode(emu, budget=7) == (pvm.Outcome.BUDGET_USED, 7)


def test_loop_converts_right_after_the_instruction_that_allows_it():
    emu = ScriptedEmulator(CpuState(), [nop, nop, enter_long_mode] + [nop] * 50, mode_steps=[id(enter_long_mode)])
    outcome, done = pvm.handle_non_pvm_mode(emu, budget=130)
    assert (outcome, done) == (pvm.Outcome.CONVERTED, 3)
    assert emu.state.efer & EFER_SCE


def test_loop_returns_early_for_a_pending_event():
    events = pvm.Events()
    events.pending = True
    emu = ScriptedEmulator(CpuState(), [nop] * 10)
    assert pvm.handle_non_pvm_mode(emu, events=events) == (pvm.Outcome.EVENT_PENDING, 0)
    assert emu.executed == 0


def test_loop_halts_on_hlt():
    def hlt(state):
        state.halted = True

    emu = ScriptedEmulator(CpuState(), [nop, hlt, nop])
    assert pvm.handle_non_pvm_mode(emu) == (pvm.Outcome.HALTED, 2)


def test_switch_to_user_mode_outside_pvm_mode_is_an_emulation_error():
    def to_ring3(state):
        state.cr0 |= CR0_PE
        state.seg[SS].dpl = 3
        state.seg[CS].dpl = 3

    emu = ScriptedEmulator(CpuState(), [nop, to_ring3, nop], mode_steps=[id(to_ring3)])
    with pytest.raises(EmulationError, match="user mode"):
        pvm.handle_non_pvm_mode(emu)


def test_observer_sees_the_start_and_each_chunk():
    seen = []
    emu = ScriptedEmulator(CpuState(), [nop, enter_long_mode, nop], mode_steps=[id(enter_long_mode)])
    pvm.handle_non_pvm_mode(emu, observer=lambda state, done: seen.append(done))
    assert seen == [0, 2]
