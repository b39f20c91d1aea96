"""Self-modifying code: stores into translated code take effect at once, in the same block,
in another block, through REP STOS; data sharing a page with code does not disturb it."""

from __future__ import annotations

import pytest

from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import protected_mode, real_mode

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")
ORG = 0x100000


def finish(emu, limit=10_000):
    total = 0
    while not emu.state.halted and total < limit:
        total += emu.run(limit - total)
    return total


def test_store_into_the_next_instruction_of_the_same_block():
    # The store patches the immediate of the very next instruction.
    emu, _, _ = protected_mode(assemble("""
        mov byte ptr [patch + 1], 0x42
    patch:
        mov al, 0x11
        hlt
    """, 32, ORG))
    finish(emu)
    assert emu.state.gpr[0] & 0xFF == 0x42


def test_patched_block_is_retranslated_on_the_next_visit():
    emu, _, _ = protected_mode(assemble("""
        mov ecx, 3
    again:
        call target
        mov byte ptr [target + 2], 0x05      # add eax, 1 -> add eax, 5 (the imm8 byte)
        loop again
        hlt
    target:
        add eax, 1
        ret
    """.replace("add eax, 1", ".byte 0x83, 0xc0, 0x01"), 32, ORG))
    finish(emu)
    assert emu.state.gpr[0] == 1 + 5 + 5


def test_rep_stos_over_code():
    emu, _, _ = protected_mode(assemble("""
        mov edi, offset victim
        mov al, 0x90                          # NOP out the INC instructions
        mov ecx, 3
        cld
        rep stosb
    victim:
        inc ebx
        inc ebx
        inc ebx
        hlt
    """, 32, ORG))
    finish(emu)
    assert emu.state.gpr[3] == 0


def test_real_mode_code_patched_through_another_segment():
    code = assemble("""
        mov ax, 0x07c0
        mov es, ax
        mov byte ptr es:[target - 0x7c00 + 1], 7
    target:
        mov bl, 1
        hlt
    """, org=0x7C00)
    emu, _, _ = real_mode(code)
    finish(emu)
    assert emu.state.gpr[3] & 0xFF == 7


def test_data_next_to_code_keeps_blocks_valid():
    emu, _, _ = protected_mode(assemble("""
        mov ecx, 1000
    again:
        add dword ptr [counter], 1
        loop again
        hlt
        .balign 64
    counter: .long 0
    """, 32, ORG))
    finish(emu)
    assert emu.mmu.code_pages                     # the loop's blocks survived all the stores
    assert len(emu.cache) <= 3
