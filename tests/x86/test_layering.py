"""The layering the design promises: the KVM layer and the architecture facts import nothing
from the emulator package (a 64-bit guest must not pay for importing it)."""

from __future__ import annotations

import subprocess
import sys


def _modules_after_import(*modules: str) -> set[str]:
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_kvm_and_x86_do_not_import_the_emulator():
    loaded = _modules_after_import("pykvm.kvm", "pykvm.kvm.cpu_state", "pykvm.x86.state", "pykvm.x86.boot",
                                   "pykvm.x86.paging", "pykvm.x86.descriptors", "pykvm.cpuid")
    assert not {m for m in loaded if m.startswith("pykvm.emulator")}


def test_the_emulator_uses_the_shared_state_model():
    from pykvm.emulator import emulator
    from pykvm.x86 import state

    assert emulator.CpuState is state.CpuState
