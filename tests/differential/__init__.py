"""Differential tests: pykvm's userspace emulator against oracles nobody here wrote.

Oracles
  * the host kernel's own emulator (``Machine(emulator="kernel")``: KVM_RUN in non-PVM
    mode) for real mode and 32-bit protected mode without paging — ``test_kernel_*.py``
    and ``test_guests.py`` (whole guests), marked ``kvm``;
  * unicorn (QEMU's TCG) for what the kernel cannot run — paging outside long mode,
    ENTER with nesting, protected-mode IRET — ``test_unicorn_*.py``, no KVM needed;
  * the Intel SDM itself where an oracle is wrong or refuses (each such test quotes it).

Layout
  ``harness.py``        Snippet -> Snapshot under an oracle; ``differences``/``assert_same``
  ``unicorn_oracle.py`` the unicorn runner; ``page_faults.py`` #PF capture and comparison
  ``undefined.py``      the tracker: flags, registers and pushed images the SDM leaves
                        undefined along the emulator's run, masked in every comparison
  ``accesses.py``       where an instruction's memory operands lie (for the tracker and sweep)
  ``flags.py``          the SDM's count-dependent undefined-flag rules of shifts/rotates
  ``paging_tables.py``  page tables for the paging snippets; ``protected_mode.py`` a GDT/IDT
                        setting for protected-mode fault snippets
  ``sweep_cases.py``    the generated sweep's forms (from iced-x86's tables), modes and cases;
  ``sweep.py``          running them on both oracles, and the tables of oracle departures,
                        oracle errata and pending pykvm fixes (``test_sweep.py``,
                        ``scripts/diff_sweep.py``)

Run: ``.venv/bin/python -m pytest tests/differential -q`` (about 50 s, 20 of them the sweep).
For a longer bug hunt multiply every hypothesis test's examples and the sweep's instances:
``PYKVM_DIFF_SCALE=10``.
"""
