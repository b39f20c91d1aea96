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


class CountedRanges(tuple):
    """A block's ``ranges`` that count how often the invalidation code looks at them."""

    looks = 0

    def __iter__(self):
        CountedRanges.looks += 1
        return super().__iter__()


# 200 one-instruction blocks (jmp short $+2) on one page, then inc word [0x7d96]; jmp short back,
# with the counter at 0x7d96 in the loop's own 64-byte line: a page crowded with blocks.
CROWDED_PAGE = b"\xeb\x00" * 200 + b"\xff\x06\x96\x7d\xeb\xfa" + b"\0\0"


def crowded_page():
    emu, mem, _ = real_mode(CROWDED_PAGE)
    emu.run(200 + 2 * 10)                  # every block translated, the loop run ten times
    blocks = {b for users in emu.mmu.code_pages.values() for b in users}
    assert len(blocks) == 201
    for blk in blocks:
        blk.ranges = CountedRanges(blk.ranges)
    CountedRanges.looks = 0
    return emu, mem, blocks


def test_a_store_next_to_code_looks_at_no_block():
    """Issue 15 item 7: a store used to rescan every block of its page (201 here)."""
    emu, mem, blocks = crowded_page()
    emu.run(2 * 100)
    assert mem.read(0x7D96, 2) == (110).to_bytes(2, "little")
    assert CountedRanges.looks == 0
    assert all(b.valid for b in blocks)


def test_a_store_into_code_looks_only_at_the_blocks_of_its_line():
    emu, mem, blocks = crowded_page()
    emu.mmu.wr1(3, 0x7C10, 0x90)           # over one jmp: the line 0x7c00-0x7c3f holds 32 blocks
    dropped = [b for b in blocks if not b.valid]
    assert [b.eip for b in dropped] == [0x7C10]
    # Its line's 32 blocks, looked at to find the one hit and again to recompute the line's
    # byte mask without it (the other 169 blocks of the page are never looked at).
    assert CountedRanges.looks <= 2 * 32 + 1
    check_code_index(emu)


def check_code_index(emu):
    """The line index says exactly what the cached blocks cover, and the page bitmaps agree."""
    from pykvm.emulator.emulator import _line_bytes

    mmu = emu.mmu
    bytes_, lines, pages = {}, {}, {}
    for cache in emu._caches.values():
        for blk in cache.values():
            for page, start, end in blk.ranges:
                pages.setdefault(page, set()).add(blk)
                for key, mask in _line_bytes(page, start, end):
                    lines.setdefault(key, set()).add(blk)
                    bytes_[key] = bytes_.get(key, 0) | mask
    assert mmu.line_blocks == lines
    assert mmu.code_bytes == bytes_
    assert mmu.code_pages == pages
    assert mmu.code_lines == {p: sum(1 << (k & 63) for k in lines if k >> 6 == p) for p in pages}


@pytest.mark.parametrize("seed", range(12))
def test_random_stores_into_random_code_keep_the_index_exact(seed):
    """Random real-mode code running into zeroes stores all over its own code (issue 15's case)."""
    import random

    emu, _, _ = real_mode(random.Random(seed).randbytes(256))
    try:
        for _ in range(200):
            emu.run(50)
            check_code_index(emu)
    except Exception:
        pass                               # an instruction pykvm does not emulate: the index still holds
    check_code_index(emu)


def test_the_translated_code_cache_is_bounded(monkeypatch):
    """Code that wanders through zeroed memory keeps translating new blocks: past the limit the
    cache is dropped whole, and the index with it."""
    import pykvm.emulator.emulator as emulator_module
    from pykvm.emulator.translate import MAX_BLOCK

    monkeypatch.setattr(emulator_module, "CODE_CACHE_LIMIT", 500)
    emu, _, _ = real_mode(b"\xeb\x00" * 2048, org=0x1000)   # 2,048 one-instruction blocks in a row
    peak = 0
    while emu.state.rip < 0x2000:
        emu.run(100)
        peak = max(peak, emu.cached_instructions)
        assert sum(b.n for c in emu._caches.values() for b in c.values()) == emu.cached_instructions
    assert 400 < peak <= 500 + MAX_BLOCK
    check_code_index(emu)
