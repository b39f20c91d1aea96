"""Randomised protected-mode segment loads vs the host kernel's emulator: any selector
(null, past the GDT limit, LDT, every RPL; descriptors not present, read-only, DPL 3,
16-bit, small limits, code, system) into any data segment register or SS, by MOV, POP or
LDS/LES/LFS/LGS/LSS, then an access through it. Both must agree on which fault (#GP, #NP,
#SS, with the selector as error code) or on the hidden segment state and the data read.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.differential.harness import DATA, assert_same, examples, run_kernel, run_userspace
from tests.differential.protected_mode import protected

pytestmark = pytest.mark.kvm

@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, 15), ti=st.integers(0, 1), rpl=st.integers(0, 3),
       register=st.sampled_from(["ds", "es", "fs", "gs", "ss"]), how=st.sampled_from(["mov", "pop", "far"]),
       offset=st.sampled_from([0, 0xFFC, 0xFFE, 0x1000, 0xFFFC, 0x10000]))
def test_random_segment_loads_match_the_kernel(index, ti, rpl, register, how, offset):
    selector = index << 3 | ti << 2 | rpl
    if how == "mov":
        load = f"mov ax, {selector:#x}\nmov {register}, ax"
    elif how == "pop":
        load = f"push {selector:#x}\npop {register}"
    else:
        load = f"mov word ptr [{DATA + 4:#x}], {selector:#x}\nl{register} ebx, [{DATA:#x}]"
    # The kernel pushes exception frames at linear ESP, ignoring SS.base (see
    # test_kernel_exceptions.test_exception_frames_are_pushed_through_ss_base): the one
    # data segment with a non-zero base is not loaded into SS here. ESP fits every limit.
    assume(not (register == "ss" and index == 7))
    access = f"mov esp, 0x800\nmov eax, {register}:[{offset:#x}]"
    snippet = protected(f"{load}\n{access}", (11, 12, 13), memory=[(DATA, b"\x78\x56\x34\x12")])
    kernel, emulator = run_kernel(snippet), run_userspace(snippet)
    assert kernel.outcome == "halted", kernel.outcome
    assert_same(kernel, emulator)
