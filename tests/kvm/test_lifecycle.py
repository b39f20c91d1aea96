"""Kvm → Vm → Vcpu lifecycle: capabilities, memory slots, clean close, no fd or mapping leaks."""

from __future__ import annotations

import os

import pytest

from pykvm.errors import BadInputError, HostError
from pykvm.kvm import Kvm
from pykvm.kvm import ioctls as K
from pykvm.memory import GuestMemory

pytestmark = pytest.mark.kvm


def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_api_version_and_capabilities():
    with Kvm() as kvm:
        assert kvm.api_version == 12
        assert kvm.vcpu_mmap_size >= 4096
        caps = kvm.capabilities()
        assert caps["USER_MEMORY"] and caps["SET_GUEST_DEBUG"] and caps["IMMEDIATE_EXIT"]
        assert kvm.check_extension(K.KVM_CAP_SYNC_REGS) & 0x7 == 0x7


def test_supported_cpuid_offers_long_mode():
    with Kvm() as kvm:
        cpuid = kvm.supported_cpuid()
        leaves = {(cpuid.entries[i].function, cpuid.entries[i].index): cpuid.entries[i] for i in range(cpuid.nent)}
        assert leaves[(0x80000001, 0)].edx & (1 << 29), "LM bit"


def test_no_fd_or_mapping_leaks_over_200_cycles(open_fds):
    with Kvm() as kvm:
        fds, maps = open_fds(), _maps()
        for _ in range(200):
            with kvm.create_vm() as vm:
                vm.create_memory(1 << 20)
                vm.create_vcpu()
        assert open_fds() == fds
        assert _maps() <= maps + 2  # allocator arenas may settle; 200 leaked mappings would show


def test_closing_a_vm_closes_its_vcpus_and_memory():
    with Kvm() as kvm:
        vm = kvm.create_vm()
        mem = vm.create_memory(1 << 20)
        vcpu = vm.create_vcpu()
        vm.close()
        assert vcpu.fd == -1 and mem.closed and vm.fd == -1
        vm.close()  # idempotent


def test_overlapping_slots_are_refused():
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_memory(1 << 20)
        with pytest.raises(BadInputError, match="overlaps"):
            vm.create_memory(1 << 20, guest_phys_addr=0x80000)


def test_slot_can_be_removed_and_reused():
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_memory(1 << 20)
        slot = vm.map_memory(GuestMemory(1 << 20, base=1 << 20))
        vm.unmap_memory(slot)
        assert vm.map_memory(GuestMemory(1 << 20, base=1 << 20)) == slot


def test_registers_round_trip():
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_memory(1 << 20)
        vcpu = vm.create_vcpu()
        regs = vcpu.get_regs()
        regs.rbx, regs.r15 = 0x1234, 0xFEDCBA9876543210
        vcpu.set_regs(regs)
        assert (vcpu.get_regs().rbx, vcpu.get_regs().r15) == (0x1234, 0xFEDCBA9876543210)
        sregs = vcpu.get_sregs()
        assert sregs.cs.selector == 0xF000 and sregs.cr0 == 0x60000010  # the reset state PVM.md measured
        assert vcpu.get_mp_state() in (K.KVM_MP_STATE_RUNNABLE, K.KVM_MP_STATE_UNINITIALIZED)
        vcpu.get_fpu()
        vcpu.get_vcpu_events()


def test_msrs_round_trip():
    from pykvm.x86.bits import MSR_IA32_SYSENTER_CS

    with Kvm() as kvm, kvm.create_vm() as vm:
        vcpu = vm.create_vcpu()
        vcpu.set_cpuid(kvm.supported_cpuid())
        vcpu.set_msrs({MSR_IA32_SYSENTER_CS: 0x10})
        assert vcpu.get_msrs([MSR_IA32_SYSENTER_CS]) == {MSR_IA32_SYSENTER_CS: 0x10}


def test_missing_device_is_a_one_line_host_error(tmp_path):
    with pytest.raises(HostError, match="does not exist"):
        Kvm(str(tmp_path / "kvm"))


def test_device_without_permission_is_a_host_error(monkeypatch):
    """The EACCES path (root cannot be denied here, so the open itself is made to fail)."""
    def denied(*_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(HostError, match="no permission to open /dev/kvm"):
        Kvm()


def test_exit_records_are_safe_after_the_vcpu_closes():
    """A record kept past close (a traceback's locals, a log) must not read the unmapped kvm_run."""
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_memory(1 << 20)
        vcpu = vm.create_vcpu()
        record = vcpu.exit_record(2)
        vcpu.close()
        assert "closed" in repr(record)
        with pytest.raises(AttributeError):
            record.port
