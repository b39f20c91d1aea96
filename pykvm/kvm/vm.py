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
        self.memory_slots: dict[int, tuple[GuestMemory, int, int]] = {}   # slot -> (memory, gpa, size)
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

    def map_memory(self, memory: GuestMemory, readonly: bool = False,
                   ranges: list[tuple[int, int, int]] | None = None) -> int:
        """Register ``memory`` as one slot per ``(gpa, offset in memory, size)`` of ``ranges``
        (default: all of it at ``memory.base``); the Vm then owns it and unmaps it on close.
        A read-only slot (``KVM_MEM_READONLY``) turns guest writes into MMIO exits.
        Returns the first slot's number."""
        ranges = [(memory.base, 0, memory.size)] if ranges is None else ranges
        taken = [(gpa, gpa + size) for _, gpa, size in self.memory_slots.values()]
        for gpa, offset, size in ranges:
            if offset < 0 or offset + size > memory.size:
                raise BadInputError(f"slot {gpa:#x}+{size:#x} reaches outside its memory ({memory.size:#x} bytes)")
            for start, end in taken:
                if gpa < end and start < gpa + size:
                    raise BadInputError(f"memory at {gpa:#x} overlaps the slot at {start:#x}")
            taken.append((gpa, gpa + size))
        slots = []
        try:
            for gpa, offset, size in ranges:
                slot = next(i for i in range(len(self.memory_slots) + 1) if i not in self.memory_slots)
                self._set_region(slot, K.KVM_MEM_READONLY if readonly else 0, gpa, size,
                                 memory.host_address + offset)
                self.memory_slots[slot] = (memory, gpa, size)
                slots.append(slot)
        except BaseException:
            for slot in slots:
                self.unmap_memory(slot, close=False)
            raise
        return slots[0]

    def unmap_memory(self, slot: int, close: bool = True) -> None:
        """Remove a slot (size 0 deletes it in KVM); its memory is released with its last slot."""
        memory, gpa, _ = self.memory_slots.pop(slot)
        self._set_region(slot, 0, gpa, 0, 0)
        if close and all(m is not memory for m, _, _ in self.memory_slots.values()):
            memory.close()

    def _set_region(self, slot: int, flags: int, gpa: int, size: int, host_addr: int) -> None:
        r = self._region
        r.slot, r.flags, r.guest_phys_addr, r.memory_size, r.userspace_addr = slot, flags, gpa, size, host_addr
        ioctl(self.fd, K.KVM_SET_USER_MEMORY_REGION, r, "KVM_SET_USER_MEMORY_REGION")

    # -- vCPUs --------------------------------------------------------------------------
    def register_coalesced(self, address: int, size: int, pio: bool) -> bool:
        """KVM_REGISTER_COALESCED_MMIO: writes to these ports (``pio``) or guest-physical addresses
        no longer exit; KVM queues them in the ring of the vCPU mapping (``Vcpu.coalesced_ring``)
        and they are to be replayed, in order, at the next exit. False where the host has no
        such capability (nothing registered then)."""
        if not self.kvm.check_extension(K.KVM_CAP_COALESCED_PIO if pio else K.KVM_CAP_COALESCED_MMIO):
            return False
        zone = ffi.new("struct kvm_coalesced_mmio_zone *", {"addr": address, "size": size, "pio": int(pio)})
        ioctl(self.fd, K.KVM_REGISTER_COALESCED_MMIO, zone, "KVM_REGISTER_COALESCED_MMIO")
        return True

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
                self.memory_slots.popitem()[1][0].close()   # idempotent: slots may share a mapping

    def __enter__(self) -> "Vm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
