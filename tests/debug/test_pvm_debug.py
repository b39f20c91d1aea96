"""What this host's PVM offers a debugger (tests/pvm_debug_probe.py measures it; docs/pvm-findings.md)."""

from __future__ import annotations

import pytest

from tests import pvm_debug_probe as probe

pytestmark = pytest.mark.kvm
DR6_B0 = 1


def test_hardware_breakpoint_hits_every_time_and_rf_does_not_resume_past_it():
    exits = probe.hardware_breakpoint(3, resume="rf")
    assert len({e.rip for e in exits}) == 1
    assert all(e.reason == "debug" and e.dr6 & DR6_B0 and e.pc == e.rip for e in exits)


def test_hardware_breakpoint_resumed_by_one_single_step():
    exits = probe.hardware_breakpoint(3, resume="step")
    assert [e.dr6 & (DR6_B0 | probe.DR6_BS) for e in exits[:-1]] == [DR6_B0, probe.DR6_BS] * 3
    assert exits[-1].reason == "hlt"


def test_single_step_reports_every_instruction():
    rips, exits = probe.single_steps(6)
    assert all(e.dr6 & probe.DR6_BS for e in exits)
    assert rips[:6] == [rips[0], rips[1], rips[2], rips[3], rips[4], rips[0]]   # the loop's 5 instructions


def test_software_breakpoint_is_a_kvm_emulation_failure():
    e = probe.software_breakpoint()
    assert e.reason == "internal_error" and "bytes=cc" in e.detail


def test_write_watchpoints_are_not_reported():
    assert [e.reason for e in probe.write_watchpoint()] == ["hlt"]


def test_real_mode_under_the_kernel_emulator_has_breakpoints_and_steps():
    exits = probe.real_mode_under_kvm(2)
    assert [e.reason for e in exits] == ["debug"] * 4 + ["hlt"]


def test_kvm_translate_agrees_with_the_page_walk():
    for linear, kvm, walked in probe.translations():
        assert kvm == walked, hex(linear)
