"""The harness itself, without KVM: a comparison that cannot see a difference would make
every differential test pass vacuously."""

from __future__ import annotations

import dataclasses

import pytest

from tests.differential.harness import Ignore, Snapshot, Snippet, differences, run_emulator
from tests.differential.unicorn_oracle import run_unicorn


def snapshot(**changes) -> Snapshot:
    base = Snapshot(outcome="halted", gpr=(0,) * 8, rip=0x7C01, rflags=0x2,
                    segments=((0, 0, 0xFFFF, 3, 1, 0, 0, 1, 0, 0, 0, 0),) * 8, gdt=(0, 0xFFFF),
                    idt=(0, 0x3FF), cr0=0x60000010, cr2=0, cr3=0, cr4=0, efer=0, memory=bytes(8192))
    return dataclasses.replace(base, **changes)


def test_equal_snapshots_have_no_differences():
    assert differences(snapshot(), snapshot()) == []


@pytest.mark.parametrize("field,value,expected", [
    ("gpr", (0, 0, 0, 5, 0, 0, 0, 0), "rbx: 0x0 != 0x5"),
    ("rip", 0x7C02, "rip"),
    ("rflags", 0x3, "rflags"),
    ("cr0", 0x11, "cr0"),
    ("outcome", "shutdown", "outcome"),
    ("io", (("out", 0, 1, 7),), "port I/O"),
])
def test_each_field_is_compared(field, value, expected):
    diffs = differences(snapshot(), snapshot(**{field: value}))
    assert len(diffs) == 1 and diffs[0].startswith(expected.split(":")[0]), diffs


def test_segment_and_memory_differences_name_the_place():
    segments = list(snapshot().segments)
    segments[3] = (0x10,) + segments[3][1:]
    memory = bytearray(8192)
    memory[0x1234:0x1236] = b"\xaa\xbb"
    diffs = differences(snapshot(), snapshot(segments=tuple(segments), memory=bytes(memory)))
    assert diffs == ["ds: selector 0x0 != 0x10", "memory 0x1234..0x1235: 0000 != aabb"]


def test_ignore_masks_only_what_it_names():
    other = snapshot(rflags=0x12, gpr=(0, 0, 0, 0, 0, 0, 0, 9), memory=b"\x01" + bytes(8191))
    assert differences(snapshot(), other, Ignore(flags=0x10, gprs=("rdi",), memory=((0, 1),))) == []
    assert differences(snapshot(), other, Ignore(flags=0x10, gprs=("rdi",))) != []
    assert differences(snapshot(), other, Ignore(flags=0x01, gprs=("rdi",), memory=((0, 1),))) != []


def test_unicorn_segments_compare_by_selector_only():
    hidden = tuple((s[0],) + (None,) * 11 for s in snapshot().segments)
    assert differences(snapshot(), snapshot(segments=hidden)) == []


def test_a_wrong_result_is_caught_end_to_end():
    """Two runs of different code must differ (the emulator and unicorn really ran it)."""
    one = run_unicorn(Snippet("mov ax, 1"))
    two = run_emulator(Snippet("mov ax, 2"))
    assert any(d.startswith("rax") for d in differences(one, two))
