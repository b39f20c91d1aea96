"""Both ways pykvm reaches KVM through cffi: the compiled API-mode module built at install time,
and the in-line ABI-mode fallback used where it was not built (``PYKVM_CFFI=abi`` forces it).

The two must describe the same structs, and a guest must run the same way through either; the
compiled one must need no C parser at run time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from pykvm.kvm import _ffi
from pykvm.kvm.cdef import TYPES

STRUCTS = sorted({line.split()[1] for line in TYPES.splitlines() if line.startswith("struct ") and "{" in line})

PROBE = """
import json, sys
from pykvm.kvm import _ffi
layout = {s: _ffi.ffi.sizeof("struct " + s) for s in %r}
layout["kvm_run.s"] = _ffi.ffi.offsetof("struct kvm_run", "s")
print(json.dumps({"mode": _ffi.MODE, "layout": layout, "pycparser": "pycparser" in sys.modules}))
""" % (STRUCTS,)


def probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYKVM_CFFI": mode}, check=True)
    return json.loads(done.stdout)


def compiler_available() -> bool:
    return bool(shutil.which(sysconfig.get_config_var("CC").split()[0] if sysconfig.get_config_var("CC") else "cc"))


def test_the_compiled_module_is_used_where_it_could_be_built():
    """An install with a C compiler builds the module (setup.py's cffi_modules); without one
    the fallback is the only way, and this has nothing to check."""
    if not compiler_available():
        pytest.skip("no C compiler: pykvm runs in the in-line ABI mode here")
    default = probe("")
    assert default["mode"] == "api", "pykvm.kvm._kvm_api was not built: reinstall pykvm (pip install -e .)"
    assert not default["pycparser"]


def test_the_fallback_describes_the_same_structs():
    fallback = probe("abi")
    assert fallback["mode"] == "abi"
    default = probe("")
    assert fallback["layout"] == default["layout"]


@pytest.mark.kvm
@pytest.mark.parametrize("mode", ["", "abi"])
def test_a_guest_runs_the_same_through_either(mode, tmp_path):
    from pykvm.guests import build_guest

    image = build_guest("hello64")
    done = subprocess.run([sys.executable, "-m", "pykvm", "run", str(image), "--mode", "long"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYKVM_CFFI": mode})
    assert done.stdout == "Hello from a 64-bit pykvm guest!\n"
    assert done.returncode == 1


@pytest.mark.kvm
@pytest.mark.parametrize("mode", ["", "abi"])
def test_the_exit_loop_is_the_same_through_either(mode):
    """Port I/O exits of every size and direction, counted and answered, in both modes (the
    compiled module reads the exit in C, the fallback in Python)."""
    code = """
import io, sys
from tests.asm import assemble
from pykvm.machine import Machine
from pykvm.kvm import _ffi
guest = assemble('''
    mov ecx, 200
1:  mov eax, ecx
    out 0x81, al
    out 0x82, ax
    out 0x84, eax
    mov dx, 0x70
    mov al, 0x0e
    out dx, al
    in al, 0x71
    dec ecx
    jnz 1b
    mov dx, 0xf4
    mov eax, ecx
    out dx, eax
''')
with Machine(serial_output=io.BytesIO(), coalesce=False) as m:
    m.load(guest, "flat", mode="long")
    status = m.run(timeout=30)
    print(_ffi.MODE, status, m.stats.kvm_exits)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYKVM_CFFI": mode}, check=True)
    got_mode, status, exits = done.stdout.split()
    assert got_mode == (mode or _ffi.MODE)
    assert (int(status), int(exits)) == (1, 200 * 5 + 1)
