"""The undefined-state tracker (``undefined.py``) without KVM: what it masks, that an Intel
and an AMD host's values for an undefined flag both pass, and that reading something
undefined fails loudly."""

from __future__ import annotations

import dataclasses

import pytest

from pykvm.x86.bits import FLAG_AF, FLAG_CF, FLAG_OF, FLAG_PF, FLAG_SF, FLAG_ZF
from tests.differential.harness import DATA, Snippet, differences, run_emulator
from tests.differential.protected_mode import protected
from tests.differential.undefined import UndefinedRead

STACK = 0x80000        # ESP of 32-bit snippets
REAL_STACK = 0x7C00    # SP of real-mode snippets


def with_image_bit(snap, address: int, bit: int, value: int):
    """``snap`` as another host might have left it: ``bit`` of the byte at ``address`` and of
    RFLAGS set to ``value``."""
    memory = bytearray(snap.memory)
    byte_bit = 1 << (bit.bit_length() - 1) % 8
    memory[address] = memory[address] | byte_bit if value else memory[address] & ~byte_bit
    rflags = snap.rflags | bit if value else snap.rflags & ~bit
    return dataclasses.replace(snap, memory=bytes(memory), rflags=rflags, undefined=type(snap.undefined)())


def test_shr_then_pushf_masks_af_in_rflags_and_in_the_image():
    """``shr edx, 16`` leaves AF and OF undefined (a count other than 1); PUSHFD copies them
    to the stack. AMD hosts set AF there, Intel hosts clear it: both must compare equal,
    while a difference in a defined flag (CF) is still seen."""
    emulator = run_emulator(Snippet("shr edx, 16\npushfd", bits=32, regs=dict(rdx=0x12345678)))
    assert emulator.undefined.flags == FLAG_AF | FLAG_OF
    assert emulator.undefined.memory == {STACK - 4: FLAG_AF, STACK - 3: FLAG_OF >> 8}
    for value in (0, 1):
        host = with_image_bit(emulator, STACK - 4, FLAG_AF, value)
        assert differences(host, emulator) == []
    wrong = with_image_bit(emulator, STACK - 4, FLAG_CF, 1 - (emulator.rflags & FLAG_CF))
    assert len(differences(wrong, emulator)) == 2   # RFLAGS and the image


@pytest.mark.parametrize("source,regs,undefined", [
    ("shl eax, cl", dict(rcx=0), 0),                                   # count 0: nothing changes
    ("shl eax, cl", dict(rcx=0x20), 0),                                # masked to 0
    ("shl eax, 1", {}, FLAG_AF),                                       # OF defined for 1-bit shifts
    ("shl al, 9", {}, FLAG_AF | FLAG_OF | FLAG_CF),                    # CF undefined: count >= width
    ("sar al, 9", {}, FLAG_AF | FLAG_OF),                              # but not for SAR
    ("rcl al, 9", {}, FLAG_OF),                                        # tempCOUNT 0: CF kept
    ("rol eax, 5", {}, FLAG_OF),
    ("and eax, ebx", {}, FLAG_AF),
    ("mul ebx", {}, FLAG_SF | FLAG_ZF | FLAG_AF | FLAG_PF),
    ("shl eax, 1\nadd eax, 1", {}, 0),                                 # ADD defines them again
])
def test_flag_rules(source, regs, undefined):
    assert run_emulator(Snippet(source, bits=32, regs=regs)).undefined.flags == undefined


@pytest.mark.parametrize("source", [
    "shr edx, 16\njo 1f\n1:",                 # Jcc on an undefined flag
    "shr edx, 16\nlahf",                      # LAHF copies AF
    "shr edx, 16\npushfd\nand dword ptr [esp], ~0x10",   # a hand mask reads the image
    "bsf eax, ebx\nmov ecx, eax",             # BSF of 0: EAX undefined, then read
])
def test_reading_something_undefined_fails_loudly(source):
    snippet = Snippet(source, bits=32, regs=dict(rbx=0, rdx=0x12345678))
    with pytest.raises(UndefinedRead, match="undefined"):
        run_emulator(snippet)


def test_popf_of_an_image_carries_its_undefined_bits_back():
    emulator = run_emulator(Snippet("shr edx, 16\npushfd\npopfd\npushfd\npop eax", bits=32, regs=dict(rdx=7)))
    assert emulator.undefined.flags == FLAG_AF | FLAG_OF
    assert emulator.undefined.gprs == {0: FLAG_AF | FLAG_OF}      # EAX holds the image
    assert emulator.undefined.memory == {STACK - 4: FLAG_AF, STACK - 3: FLAG_OF >> 8}   # the second image


def test_a_write_over_an_image_makes_it_defined_again():
    emulator = run_emulator(Snippet("shr edx, 16\npushfd\nmov dword ptr [esp], 0\npopfd", bits=32))
    assert emulator.undefined.memory == {} and emulator.undefined.flags == 0


def test_an_exception_frame_is_masked_where_the_emulator_pushed_it():
    """protected()'s prologue ends with ``shr edx, 16``: the #UD frame's EFLAGS image has AF
    (and OF) undefined, at ESP - 4 of the interrupted stack (no error code for #UD)."""
    emulator = run_emulator(protected("ud2", 6))
    assert emulator.reg("rbp") == STACK - 12
    assert emulator.undefined.memory == {STACK - 4: FLAG_AF, STACK - 3: FLAG_OF >> 8}


def test_iret_pops_the_undefined_bits_of_a_real_mode_frame():
    emulator = run_emulator(Snippet("""
        mov word ptr [0x21 * 4], offset handler
        mov word ptr [0x21 * 4 + 2], 0
        shr dx, 3
        int 0x21
        jmp done
    handler:
        iret
    done:
    """, regs=dict(rdx=0x100)))
    assert emulator.undefined.flags == FLAG_AF | FLAG_OF
    assert emulator.undefined.memory == {REAL_STACK - 2: FLAG_AF, REAL_STACK - 1: FLAG_OF >> 8}


def test_bsf_of_zero_leaves_the_destination_undefined():
    emulator = run_emulator(Snippet("bsf ax, [0x9000]", bits=32, memory=[(DATA, b"\x00\x00")]))
    assert emulator.undefined.gprs == {0: 0xFFFF}
