"""Machines release everything they own: closed, closed twice, or never closed (issue 15 item 6).

``scripts/leak_machines.py`` is the full-size leak check (1,000 closed + 1,000 dropped
Machines); ``test_many_machines_closed_and_dropped_leave_fds_and_rss_flat`` runs it small.
"""

from __future__ import annotations

import gc
import io
import os

import pytest

from pykvm.kvm import Kvm
from pykvm.machine import Machine
from scripts import leak_machines

pytestmark = pytest.mark.kvm


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_machine_never_closed_closes_its_fds_when_collected_with_a_resource_warning():
    gc.collect()
    before = fds()
    machine = Machine(1 << 20, serial_output=io.BytesIO())
    assert fds() == before + 4          # /dev/kvm, the VM, the vCPU and its mapping's (mmap's dup)
    with pytest.warns(ResourceWarning, match="unclosed Machine"):
        del machine
        gc.collect()
    assert fds() == before


def test_a_dropped_machine_still_flushes_its_guests_output():
    out = io.BytesIO()
    machine = Machine(1 << 20, serial_output=out)
    machine.serial.write(0, 1, ord("x"))            # no newline: still in the UART's buffer
    with pytest.warns(ResourceWarning):
        del machine
        gc.collect()
    assert out.getvalue() == b"x"


def test_kvm_vm_and_vcpu_dropped_without_close_close_their_own_fds():
    gc.collect()
    before = fds()
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.create_vcpu()
    assert fds() == before + 4
    with pytest.warns(ResourceWarning) as caught:
        del kvm, vm
        gc.collect()
    assert fds() == before
    assert sorted(str(w.message).split(" (fd")[0] for w in caught) == ["unclosed Kvm /dev/kvm", "unclosed Vcpu 0",
                                                                       "unclosed Vm"]


def test_closing_twice_is_harmless_and_a_closed_machine_is_never_run():
    before = fds()
    machine = Machine(1 << 20, serial_output=io.BytesIO())
    machine.load(b"\xf4", "flat", mode="real")
    vcpu = machine.vcpu
    machine.close()
    machine.close()
    assert fds() == before
    assert vcpu.kvm_run is None                     # the mapping is gone, and nothing reads it:
    vcpu.immediate_exit = True                      # what a late signal handler does: nothing
    assert not vcpu.immediate_exit
    with pytest.raises(ValueError, match="closed"):
        machine.run(timeout=1)
    with pytest.raises(ValueError, match="closed"):
        machine.step()
    with pytest.raises(ValueError, match="closed"):
        with machine:
            pass


def test_a_machine_whose_construction_fails_closes_what_it_opened(monkeypatch):
    import pykvm.machine as machine_module

    def broken_platform(*args, **kw):
        raise RuntimeError("no platform")

    monkeypatch.setattr(machine_module, "PcPlatform", broken_platform)
    before = fds()
    with pytest.raises(RuntimeError):
        Machine(1 << 20, serial_output=io.BytesIO())
    assert fds() == before


def test_many_machines_closed_and_dropped_leave_fds_and_rss_flat():
    gained_fds, gained_rss = leak_machines.rounds(100)
    assert gained_fds == 0
    assert gained_rss < 16
