"""Randomised paging vs unicorn: hypothesis maps eight linear pages onto random physical
frames with random P/RW/A/D flags, picks CR0.WP, and runs a random sequence of loads,
stores, read-modify-writes, string copies across page boundaries, reads of the page
tables themselves (to see A/D bits mid-run) and remaps (a PTE store followed by INVLPG).

Either both run to the end and agree on everything (memory includes the A/D bits), or
unicorn stops at a #PF and the emulator delivered the same one (``page_faults``): same
CR2 and faulting EIP, the P bit of the error code matching the page table, and the same
state otherwise.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.differential import paging_tables as T
from tests.differential.harness import DATA, Snippet, assert_same, examples, run_emulator
from tests.differential.page_faults import FAULT_TABLE_FLAGS, compare_fault, with_fault_capture
from tests.differential.paging_tables import A, D, P, RW
from tests.differential.unicorn_oracle import run_unicorn

ALIAS = 0x400000
PAGES = 8
FRAMES = [0x30000 + i * 0x1000 for i in range(PAGES)]
CR0_WP = 1 << 16

addresses = st.builds(lambda page, offset: ALIAS + page * 0x1000 + offset,
                      st.integers(0, PAGES - 1), st.sampled_from([0, 4, 0x7F0, 0xFFC, 0xFFE, 0xFFF]))
pte_flags = st.sampled_from([P | RW, P | RW, P, P | RW | A, P | RW | A | D, 0])


@st.composite
def operation(draw) -> str:
    kind = draw(st.sampled_from(["load", "store", "rmw", "copy", "fill", "peek", "remap"]))
    a = draw(addresses)
    if kind == "load":
        return f"mov eax, [{a:#x}]\nadd esi, eax"
    if kind == "store":
        return f"mov dword ptr [{a:#x}], {draw(st.integers(0, 0xFFFFFFFF)):#x}"
    if kind == "rmw":
        return f"{draw(st.sampled_from(['add', 'xor', 'sub']))} dword ptr [{a:#x}], ebx"
    if kind == "copy":
        return (f"mov esi, {a:#x}\nmov edi, {draw(addresses):#x}\nmov ecx, {draw(st.integers(1, 12))}\n"
                f"{'std' if draw(st.booleans()) else 'cld'}\nrep movsd\ncld")
    if kind == "fill":
        return f"mov edi, {a:#x}\nmov ecx, {draw(st.integers(1, 40))}\nmov al, 0x5a\nrep stosb"
    page = draw(st.integers(0, PAGES - 1))
    pte = T.PT1 + page * 4
    if kind == "peek":
        return f"mov edx, [{pte:#x}]\nadd ebp, edx"
    frame = draw(st.sampled_from(FRAMES))
    return f"mov dword ptr [{pte:#x}], {frame | draw(pte_flags):#x}\ninvlpg [{ALIAS + page * 0x1000:#x}]"


@settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(st.sampled_from(FRAMES), min_size=PAGES, max_size=PAGES),
       flags=st.lists(pte_flags, min_size=PAGES, max_size=PAGES), wp=st.booleans(),
       program=st.lists(operation(), min_size=1, max_size=10))
def test_random_paging_programs_match_unicorn(frames, flags, wp, program):
    mappings = {ALIAS + i * 0x1000: (frame, flag) for i, (frame, flag) in enumerate(zip(frames, flags))}
    body = "\n".join([T.enable_paging()] + ([f"mov eax, cr0\nor eax, {CR0_WP:#x}\nmov cr0, eax"] if wp else [])
                     + program)
    snippet = Snippet(with_fault_capture(body), bits=32, regs=dict(rbx=0x01010101),
                      memory=[(DATA, bytes(range(256)) * 16)]
                      + [(frame, bytes([i * 17 & 0xFF]) * 0x1000) for i, frame in enumerate(FRAMES)]
                      + T.tables32(mappings, **FAULT_TABLE_FLAGS))
    oracle = run_unicorn(snippet)
    if oracle.outcome == "halted":
        assert_same(oracle, run_emulator(snippet), names=("unicorn", "emulator"))
        return
    error = compare_fault(snippet, oracle)
    pte = int.from_bytes(oracle.memory[T.PT1 + ((oracle.cr2 - ALIAS) >> 12) * 4:][:4], "little")
    assert error & ~3 == 0                      # supervisor data access, no reserved bits
    assert error & P == pte & P                 # P: a protection violation, else not present
    if pte & P:
        assert error & RW                       # at CPL 0 only writes fault on present pages
