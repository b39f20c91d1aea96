"""Interrupts injected into KVM (PVM mode) at the right instruction boundary.

A 64-bit guest with an IDT raises pc-testdev IRQ 3 (vector 0x23 after it programs the
master PIC) while IF = 0, then opens an interrupt window; its handler records ECX, which
the window's code increments once per instruction. On these hosts PVM's
KVM_EXIT_IRQ_WINDOW_OPEN comes only at the end of its own batch of about 1,000
instructions, so without pykvm's single steps towards the window (``Machine._hold_off``)
the interrupt of ``sti; inc; inc; cli`` is never taken (``python -m tests.pvm_irq_probe``
shows it, and what KVM reports at each step).
"""

from __future__ import annotations

import pytest

from pykvm.machine import WINDOW_STEP_BUDGET
from tests.pvm_irq_probe import run_window

pytestmark = pytest.mark.kvm


def test_an_interrupt_held_off_by_if_is_taken_one_instruction_after_sti():
    status, seen, machine = run_window("sti\n inc ecx\n inc ecx\n inc ecx\n")
    assert status == 0
    assert seen == [1] * 10             # after the instruction in STI's shadow, every time
    assert machine.stats.interrupts_injected == 10


def test_sti_hlt_with_an_interrupt_pending_wakes_at_once():
    # The step over HLT is the wake-up: the handler returns past the HLT.
    status, seen, _ = run_window("sti\n hlt\n inc ecx\n inc ecx\n")
    assert status == 0 and seen == [0] * 10


def test_hlt_with_interrupts_off_ends_the_run_while_an_interrupt_is_held_off():
    status, seen, machine = run_window("hlt\n sti\n inc ecx\n")
    assert status == 0 and seen == []   # halted for good at the first HLT
    assert machine.stats.interrupts_injected == 0


def test_an_interrupt_held_off_past_the_step_budget_is_still_taken_after_sti():
    # IF = 0 for longer than the budget: PVM's own (late) window exit delivers it.
    spin = WINDOW_STEP_BUDGET  # two instructions per iteration
    status, seen, _ = run_window(f"mov edi, {spin}\n 2: dec edi\n jnz 2b\n sti\n"
                                 "3: inc ecx\n cmp ecx, 100000\n jb 3b\n", repeat=2)
    assert status == 0
    assert all(value >= 1 for value in seen), seen
