#!/usr/bin/env python3
"""The generated differential sweep (``tests/differential/sweep.py``) from the command line:
every opcode form x mode x prefix on pykvm's emulator against the host kernel's emulator
and unicorn, then a coverage table and one example of every differing form.

Table cells hold one letter per prefix (no prefix, 66, 67, 66 67; string forms add F3/F2
variants): K agrees with the kernel, U with unicorn, r refused (EmulationError: unclaimed forms, and
what UNSUPPORTED names, such as user-mode tasks), P/p a known
pykvm bug (PENDING_PYKVM_FIXES) seen against the kernel/unicorn, E/e an oracle's explained
erratum, D/d a new difference, X an emulator crash, - no oracle could run it, . not generated.

usage: python scripts/diff_sweep.py [--scale N] [--seed S] [--form REGEX] [--mode NAME]
                                    [--no-kvm] [--case ID] [--all-forms] [--examples N]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.differential.sweep import (FORMS, MODES, Sweep, cell_letter, prefixes_for, verdict_letter,  # noqa: E402
                                      replay, run_sweep)


def table(coverage, forms, modes, all_forms: bool) -> list[str]:
    lines = [f"{'form':<44} " + " ".join(f"{m.name:<12}" for m in modes)]
    for form in forms:
        row = []
        interesting = all_forms
        for mode in modes:
            letters = ""
            for prefix in prefixes_for(form):
                counter = coverage.cells.get((form.name, mode.name, prefix))
                letters += cell_letter(counter) if counter else "."
            interesting |= any(ch not in "K.r" for ch in letters)
            row.append(f"{letters:<12}")
        if interesting or form.claimed:
            lines.append(f"{form.name[:44]:<44} " + " ".join(row))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1, help="instances of every claimed form x mode x prefix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--form", help="only forms whose name matches this regex")
    parser.add_argument("--mode", action="append", choices=list(MODES), help="only these modes")
    parser.add_argument("--no-kvm", action="store_true", help="unicorn as the only oracle")
    parser.add_argument("--case", help="replay one case by its id (printed with every difference)")
    parser.add_argument("--all-forms", action="store_true", help="table rows for unclaimed forms too")
    parser.add_argument("--examples", type=int, default=1, help="examples printed per differing form")
    args = parser.parse_args(argv)

    with Sweep(kvm=not args.no_kvm) as sweep:
        if args.case:
            result = replay(sweep, args.case)
            print(result.report())
            return 0 if result.verdict not in ("differ", "crash") else 1
        forms = [f for f in FORMS if not args.form or re.search(args.form, f.name)]
        modes = [MODES[m] for m in args.mode] if args.mode else list(MODES.values())
        started = time.perf_counter()
        coverage = run_sweep(sweep, args.seed, args.scale, forms, modes)
        elapsed = time.perf_counter() - started

    print("\n".join(table(coverage, forms, modes, args.all_forms)))
    total = sum(coverage.counts.values())
    print(f"\n{total} cases in {elapsed:.1f} s ({total / elapsed:.0f} cases/s), seed {args.seed}, "
          f"scale {args.scale}; {len(coverage.not_generated)} form x mode x prefix combinations not generated")
    for (verdict, oracle), n in sorted(coverage.counts.items(), key=lambda kv: -kv[1]):
        print(f"  {verdict:<10} {oracle or '':<8} {n:>7}  [{verdict_letter(verdict, oracle)}]")
    forms_by_verdict = Counter()
    for key, counter in coverage.cells.items():
        forms_by_verdict[cell_letter(counter)] += 1
    print("cells by verdict: " + ", ".join(f"{k}={v}" for k, v in sorted(forms_by_verdict.items())))
    shown: Counter = Counter()
    for result in coverage.results:
        key = (result.verdict, result.case.form.name)
        if result.verdict in ("differ", "crash") and shown[key] < args.examples:
            shown[key] += 1
            print("\n" + result.report())
    pending = Counter(r.note for r in coverage.results if r.verdict == "pending")
    if pending:
        print("\npending pykvm fixes seen (cases):")
        for note, n in pending.most_common():
            print(f"  {n:>6}  {note}")
    return 1 if coverage.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
