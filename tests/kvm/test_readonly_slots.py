"""Read-only memory slots on this host, as --bios uses them (facts for docs/pvm-findings.md;
``python -m tests.pvm_rom_probe`` prints them)."""

from __future__ import annotations

import pytest

from tests import pvm_rom_probe as probe

pytestmark = pytest.mark.kvm

ROM_DATA = probe.ROM_BASE + probe.DATA


def test_pvm_mode_runs_code_from_a_read_only_slot_and_each_write_exits():
    facts = probe.pvm_mode_facts()
    assert facts["rip"] == probe.ROM_BASE + len(probe.assemble(probe.PVM_CODE))     # past the HLT, in ROM
    # the MOV and each of REP STOSB's 16 elements: one MMIO write exit each; reads never exit
    assert facts["exits"] == [(ROM_DATA, 1, 0x5A, True)] + [(ROM_DATA + i, 1, 0x77, True) for i in range(16)]
    assert facts["rax"] == 0x2A and facts["rdx_low"] == 0x2A                       # the ROM kept its byte


def test_the_kernels_emulation_starts_at_the_reset_vector_in_a_read_only_slot():
    facts = probe.reset_vector_facts()
    assert facts["exits"] == [(ROM_DATA, 1, 0x5A, True), (0xF0000 + probe.DATA, 1, 0x5B, True)]
    assert facts["ax"] == 0x2A2A and facts["cs"] == (0xF000, 0xF0000)
