"""``Vm``: one virtual machine — its memory slots and vCPUs, all closed with it."""

from __future__ import annotations

import os

from pykvm.errors import BadInputError
from pykvm.kvm import ioctls as K
from pykvm.kvm._ffi import ffi
from pykvm.kvm._owned import own_fd
from pykvm.kvm._syscall import ioctl, ioctl_int
from pykvm.memory import GuestMemory


class Vm:
    """Created by ``Kvm.create_vm()``. Owns the guest memory it creates and the vCPUs."""

    def __init__(self, kvm, fd: int):
        self.kvm = kvm
        self.fd = fd
        self._finalizer = own_fd(self, fd, "Vm")
        self.vcpus: list = []
        self.memory_slots: dict[int, GuestMemory] = {}
        self._region = ffi.new("struct kvm_userspace_memory_region *")

    # -- memory -------------------------------------------------------------------------
    def create_memory(self, size: int, guest_phys_addr: int = 0, readonly: bool = False) -> GuestMemory:
        """Map ``size`` bytes of fresh anonymous RAM at ``guest_phys_addr`` into the guest."""
        memory = GuestMemory(size, base=guest_phys_addr)
        try:
            self.map_memory(memory, readonly=readonly)
        except BaseException:
            memory.close()
            raise
        return memory

    def map_memory(self, memory: GuestMemory, readonly: bool = False) -> int:
        """Register ``memory`` as a new slot (the Vm then owns it and unmaps it on close)."""
        for other in self.memory_slots.values():
            if memory.base < other.base + other.size and other.base < memory.base + memory.size:
                raise BadInputError(f"memory at {memory.base:#x} overlaps the slot at {other.base:#x}")
        slot = next(i for i in range(len(self.memory_slots) + 1) if i not in self.memory_slots)
        self._set_region(slot, K.KVM_MEM_READONLY if readonly else 0, memory.base, memory.size,
                         memory.host_address)
        self.memory_slots[slot] = memory
        return slot

    def unmap_memory(self, slot: int) -> None:
        """Remove a slot (size 0 deletes it in KVM) and release its memory."""
        memory = self.memory_slots.pop(slot)
        self._set_region(slot, 0, memory.base, 0, 0)
        memory.close()

    def _set_region(self, slot: int, flags: int, gpa: int, size: int, host_addr: int) -> None:
        r = self._region
        r.slot, r.flags, r.guest_phys_addr, r.memory_size, r.userspace_addr = slot, flags, gpa, size, host_addr
        ioctl(self.fd, K.KVM_SET_USER_MEMORY_REGION, r, "KVM_SET_USER_MEMORY_REGION")

    # -- vCPUs --------------------------------------------------------------------------
    def create_vcpu(self, index: int | None = None):
        from pykvm.kvm.vcpu import Vcpu

        index = len(self.vcpus) if index is None else index
        fd = ioctl_int(self.fd, K.KVM_CREATE_VCPU, index, "KVM_CREATE_VCPU")
        try:
            vcpu = Vcpu(self, index, fd, self.kvm.vcpu_mmap_size)
        except BaseException:
            os.close(fd)
            raise
        self.vcpus.append(vcpu)
        return vcpu

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Close every vCPU, then the VM fd, then unmap guest memory (KVM holds no reference
        after); each step even if an earlier one failed. Closing again does nothing."""
        self._finalizer.detach()
        try:
            while self.vcpus:
                self.vcpus.pop().close()
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            while self.memory_slots:
                self.memory_slots.popitem()[1].close()

    def __enter__(self) -> "Vm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
