#!/usr/bin/env python3
"""Take a sample of SingleStepTests' 80286 real-mode suite into pykvm's test data.

The suite (https://github.com/SingleStepTests/80286, MIT) has 5,000 hardware-captured tests
per opcode form in ``v1_real_mode/*.MOO.gz`` (about 320 MB). This keeps the first ``--per``
tests of each file that are not on the suite's revocation list, without their bus-cycle
traces, as one JSON object per line in ``tests/data/singlestep-80286/sample.jsonl.gz``, which
``tests/differential/test_singlestep_286.py`` runs. ``--run`` instead runs every test of the
given files and prints a table of differences (the full suite takes ~20 minutes).

usage: python scripts/import_singlestep.py SUITE_DIR [--per N] [--run [FILE...]]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.differential import moo  # noqa: E402
from tests.differential.singlestep import SAMPLE, Runner, to_record  # noqa: E402


def revoked(suite: Path) -> set[str]:
    path = suite / "revocation_list.txt"
    return {line.strip().lower() for line in path.read_text().splitlines() if line.strip()} if path.exists() else set()


def files(suite: Path, names=None) -> list[Path]:
    found = sorted((suite / "v1_real_mode").glob("*.MOO.gz"))
    return [p for p in found if not names or p.name.split(".MOO")[0] in names]


def readable(paths):
    """(form, tests) of each file that reads (a truncated download is said and skipped)."""
    for path in paths:
        try:
            _, tests = moo.read(path)
        except (OSError, EOFError, ValueError) as e:
            print(f"{path.name}: skipped ({e})", file=sys.stderr)
            continue
        yield path.name.split(".MOO")[0], tests


def sample(suite: Path, per: int) -> None:
    skip = revoked(suite)
    SAMPLE.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with gzip.open(SAMPLE, "wt", compresslevel=9) as out:
        for form, tests in readable(files(suite)):
            for test in [t for t in tests if t.hash not in skip][:per]:
                out.write(json.dumps(to_record(form, test), separators=(",", ":")) + "\n")
                count += 1
    print(f"{count} tests from {SAMPLE.relative_to(REPO)}")


def run(suite: Path, names) -> None:
    runner, skip = Runner(), revoked(suite)
    compared, skipped, differing = Counter(), Counter(), Counter()
    for form, tests in readable(files(suite, names)):
        for test in tests:
            if test.hash in skip:
                continue
            outcome = runner.run(test)
            if outcome.skipped:
                skipped[outcome.skipped.split(":")[0][:60]] += 1
            elif outcome.differences:
                differing[form] += 1
                if differing[form] == 1:
                    print(f"{form}: {test.name} ({test.code.hex()}): {'; '.join(outcome.differences[:4])}")
            compared[form] += 1
    print(f"{sum(compared.values())} tests, {sum(differing.values())} differ, by form: {dict(differing)}")
    for reason, n in skipped.most_common():
        print(f"  not compared ({n}): {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path, help="a checkout of SingleStepTests/80286")
    parser.add_argument("--per", type=int, default=20, help="tests kept per opcode form")
    parser.add_argument("--run", nargs="*", metavar="FORM", help="run these forms (all: none given) instead")
    args = parser.parse_args()
    if args.run is not None:
        run(args.suite, set(args.run))
    else:
        sample(args.suite, args.per)


if __name__ == "__main__":
    main()
