"""The self-checking guests of guests/ run on the Emulator alone (no KVM): every check passes.

selftest16 (real mode: ALU, strings, far calls, IVT), selftest32 (protected mode: IDT
faults, segment checks, 32-bit paging), cwork32 (gcc -m32 -O2 C), loop32 (its checksum),
boot16to64 (real -> protected -> long mode, where the emulator's part ends).
"""

from __future__ import annotations

import shutil

import pytest

from tests.emulator.guestrun import run_guest

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("ld") is None,
                                reason="gcc/ld needed to build the guests")


@pytest.mark.parametrize("name, mode, checks", [("selftest16", "real", 137), ("selftest32", "protected", 163),
                                                 ("cwork32", "protected", 10)])
def test_self_checking_guest_passes(name, mode, checks):
    value, text, emu, _ = run_guest(name, mode)
    assert f"SUMMARY: {checks} passed, 0 failed" in text, text
    assert "FAIL" not in text
    assert value == 0


def test_loop32_checksum():
    value, text, _, _ = run_guest("loop32", "protected")
    assert "loop32: 20000 iterations, checksum 0xbba57eda" in text and value == 0


def test_boot16to64_reaches_long_mode():
    value, text, emu, _ = run_guest("boot16to64", "real")
    st = emu.state
    assert "[real]" in text and "[protected]" in text
    assert emu.bitness == 64 and st.efer & 0x400 and st.seg[1].l == 1 and st.cr0 & 0x80000001 == 0x80000001
