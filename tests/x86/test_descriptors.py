"""Descriptor and gate encoding/decoding (pure, no emulator)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pykvm.x86 import descriptors as D


def test_flat_code_descriptor_matches_the_textbook_value():
    assert D.flat_descriptor(True) == 0x00CF9A000000FFFF
    assert D.flat_descriptor(False) == 0x00CF92000000FFFF
    assert D.flat_descriptor(True, l=1) == 0x00AF9A000000FFFF


def test_decode_scales_the_limit_with_g():
    d = D.decode_descriptor(0x00CF9A000000FFFF)
    assert (d.base, d.limit, d.type, d.s, d.dpl, d.present, d.db, d.g, d.l) == \
        (0, 0xFFFFFFFF, 0xA, 1, 0, 1, 1, 1, 0)
    assert d.is_code and not d.is_data
    d = D.decode_descriptor(D.encode_descriptor(0x12345678, 0xABCDE, 0x3, dpl=3))
    assert (d.base, d.limit, d.dpl, d.g) == (0x12345678, 0xABCDE, 3, 0)


@given(base=st.integers(0, 0xFFFFFFFF), limit=st.integers(0, 0xFFFFF), type=st.integers(0, 15),
       s=st.integers(0, 1), dpl=st.integers(0, 3), p=st.integers(0, 1), avl=st.integers(0, 1),
       l=st.integers(0, 1), db=st.integers(0, 1), g=st.integers(0, 1))
def test_descriptor_roundtrip(base, limit, type, s, dpl, p, avl, l, db, g):
    raw = D.encode_descriptor(base, limit, type, s, dpl, p, avl, l, db, g)
    d = D.decode_descriptor(raw)
    assert (d.base, d.type, d.s, d.dpl, d.present, d.avl, d.l, d.db, d.g) == (base, type, s, dpl, p, avl, l, db, g)
    assert d.limit == ((limit << 12) | 0xFFF if g else limit)


def test_encode_rejects_a_too_large_limit():
    import pytest
    with pytest.raises(ValueError):
        D.encode_descriptor(0, 0x100000, 3)


def test_gates():
    raw = D.encode_gate(0x08, 0x12345678, D.SYS_INT_GATE32, dpl=3)
    g = D.decode_gate(raw)
    assert (g.selector, g.offset, g.type, g.dpl, g.present) == (0x08, 0x12345678, 0xE, 3, 1)
    g16 = D.decode_gate(D.encode_gate(0x10, 0x1234, D.SYS_TRAP_GATE16))
    assert (g16.offset, g16.type) == (0x1234, 7)
    lo = D.encode_gate(0x18, 0x89ABCDEF, D.SYS_INT_GATE32)
    g64 = D.decode_gate64(lo, 0xFFFFFFFF)
    assert g64.offset == 0xFFFFFFFF89ABCDEF and g64.selector == 0x18


def test_selector_fields():
    assert (D.selector_index(0x2B), D.selector_ti(0x2B), D.selector_rpl(0x2B)) == (5, 0, 3)
    assert D.selector_ti(0x0C) == 1
