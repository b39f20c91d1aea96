"""pykvm's real-mode emulator against an 80286 (SingleStepTests' hardware-captured suite).

``tests/data/singlestep-80286/sample.jsonl.gz`` holds 20 tests of each of the suite's opcode
forms (taken by ``scripts/import_singlestep.py``); each runs one instruction from a random
state, and every register and changed byte must match what the CPU did, less the flags the SDM
leaves undefined (tracked, never guessed) and the cases ``DEPARTURES`` explains by the
processor generation (checked to be few).
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.differential.singlestep import SAMPLE, Runner, load_sample


@pytest.fixture(scope="module")
def outcomes():
    if not SAMPLE.exists():
        pytest.skip(f"{SAMPLE} is absent (see its README.md)")
    runner = Runner()
    return [(form, runner.run(test)) for form, test in load_sample()]


def test_every_compared_test_matches_the_286(outcomes):
    differing = [(form, o.test.name, o.test.code.hex(), o.differences[:3]) for form, o in outcomes
                 if o.differences]
    assert not differing, f"{len(differing)} differ, e.g. {differing[:5]}"


def test_nearly_every_test_is_compared(outcomes):
    """The departures and the port reads not compared stay a small part (none may grow silently)."""
    skipped = Counter(o.skipped.split(":")[0] for _, o in outcomes if o.skipped)
    compared = len(outcomes) - sum(skipped.values())
    assert len(outcomes) >= 4600 and compared >= 0.95 * len(outcomes), skipped
    assert len({form for form, _ in outcomes}) >= 230
