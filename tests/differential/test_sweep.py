"""The generated sweep (``sweep.py``): every opcode form the emulator claims, in every mode
and with every size prefix, against the host kernel's emulator (and unicorn where the kernel
cannot run a case); plus checks of the generator itself, which need no KVM.

``PYKVM_DIFF_SCALE=N`` runs N instances of every claimed form x mode x prefix instead of one;
``PYKVM_SWEEP_SEED`` picks another deterministic set. A failure prints every differing case
with its bytes, disassembly, initial state, differences and the command that replays it.
"""

from __future__ import annotations

import os

import iced_x86 as X
import pytest

from pykvm.emulator.handlers import HANDLERS
from tests.differential.harness import examples
from tests.differential.sweep import FORMS, MODES, PENDING_PYKVM_FIXES, UNSUPPORTED, Sweep, run_sweep
from tests.differential.sweep_cases import form_key, make_case, prefixes_for

SEED = int(os.environ.get("PYKVM_SWEEP_SEED", "0"))
CLAIMED = [f for f in FORMS if f.claimed]


def _failure_report(coverage, limit: int = 30) -> str:
    failures = coverage.failures()
    lines = [f"{len(failures)} cases differ (seed {SEED}); unexplained, and not in PENDING_PYKVM_FIXES:"]
    lines += [r.report() for r in failures[:limit]]
    return "\n".join(lines)


def test_every_handler_is_reached_by_some_form():
    mnemonics = {m for f in CLAIMED for m in f.mnemonics}
    names = {getattr(X.Mnemonic, n): n for n in dir(X.Mnemonic) if n.isupper()}
    assert {names[m] for m in HANDLERS} <= mnemonics


@pytest.mark.parametrize("mode", ["real", "pm32-s16"])
def test_cases_decode_to_their_form_and_sit_at_cs_eip(mode):
    for form in CLAIMED:
        for prefix in prefixes_for(form):
            case = make_case(form, MODES[mode], prefix, 12345)
            if case is None:
                continue
            ins = X.Decoder(MODES[mode].code, case.code).decode()
            assert ins.len == len(case.code), case.id
            if form.operands != "reg!":
                assert form_key(X.OpCodeInfo(ins.code)) == form.key, case.id
            assert (case.linear, case.code) == case.writes[-1], case.id


def test_a_case_is_the_same_from_the_same_seed():
    form = next(f for f in CLAIMED if f.label.startswith("0F A5 "))   # SHLD r/m, r, CL
    one, two = (make_case(form, MODES["pm16-s32"], "66", 99) for _ in range(2))
    assert (one.code, one.state, one.writes) == (two.code, two.state, two.writes)


def test_pending_and_unsupported_entries_name_forms_that_exist():
    import re

    for entry in PENDING_PYKVM_FIXES + UNSUPPORTED:
        assert any(re.search(entry.form, f.name) for f in CLAIMED), entry.form


@pytest.mark.kvm
def test_sweep_against_the_kernel_and_unicorn():
    """One instance (PYKVM_DIFF_SCALE instances) of every claimed form x mode x prefix; the
    forms the emulator does not claim (x87, SSE, ...: refused) without a prefix only."""
    with Sweep() as sweep:
        coverage = run_sweep(sweep, seed=SEED, scale=examples(1), unclaimed_prefixes=("",))
    assert coverage.counts[("agree", "kernel")] > 5000      # not vacuous: the kernel ran them
    assert not coverage.failures(), _failure_report(coverage)


def test_sweep_against_unicorn_alone():
    """Without KVM: the claimed forms in real mode and flat 32-bit protected mode, no prefix."""
    pytest.importorskip("unicorn")
    with Sweep(kvm=False) as sweep:
        coverage = run_sweep(sweep, seed=SEED, scale=examples(1), forms=CLAIMED,
                             modes=[MODES["real"], MODES["pm32-s32"]], prefixes=("",))
    assert coverage.counts[("agree", "unicorn")] > 500
    assert not coverage.failures(), _failure_report(coverage)
