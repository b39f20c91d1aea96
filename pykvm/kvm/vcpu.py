"""``Vcpu``: registers, MSRs, CPUID, debug control and ``run()`` on one vCPU fd.

Every ioctl goes through a cdata buffer allocated once per vCPU. The getters
return those shared buffers (valid until the next call of the same getter);
copy what you keep. ``run()`` returns the typed exit record for the reason KVM
reported, reading straight from the mmap'd ``kvm_run``.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct

from pykvm.errors import KvmIoctlError
from pykvm.kvm import ioctls as K
from pykvm.kvm._ffi import MODE, ffi, libc
from pykvm.kvm._owned import own_fd

from pykvm.kvm._syscall import NULL, ioctl
from pykvm.kvm.exits import (EXIT_HEADER, EXIT_HEADER_OFFSET, EXIT_OUT, EXIT_PVM, EXIT_SIMPLE, PIO_DATA, Exit,
                              ExitReason, make_exit_table)

_MAX_MSRS = 64
_ioctl = libc.ioctl
_KVM_RUN = K.KVM_RUN

# Byte offsets inside the kvm_run mapping of the sync-regs fields the run loop checks on every
# exit to see whether the vCPU is still in PVM mode (a byte read beats a chain of cdata lookups).
_SYNC_SREGS = ffi.offsetof("struct kvm_run", "s") + ffi.offsetof("struct kvm_sync_regs", "sregs")
SYNC_EFER_LMA_BYTE = _SYNC_SREGS + ffi.offsetof("struct kvm_sregs", "efer") + 1   # EFER bit 10 = bit 2 here
SYNC_CS_L_BYTE = (_SYNC_SREGS + ffi.offsetof("struct kvm_sregs", "cs")
                  + ffi.offsetof("struct kvm_segment", "l"))


class Vcpu:
    def __init__(self, vm, index: int, fd: int, mmap_size: int):
        self.vm = vm
        self.index = index
        self.fd = fd
        self._mmap = mmap.mmap(fd, mmap_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = memoryview(self._mmap)
        self.kvm_run = ffi.from_buffer("struct kvm_run *", self._mmap)
        self._exits, self._unsupported = make_exit_table(self.kvm_run, self._view)
        self._regs = ffi.new("struct kvm_regs *")
        self._sregs = ffi.new("struct kvm_sregs *")
        self._fpu = ffi.new("struct kvm_fpu *")
        self._msrs = ffi.new("struct kvm_msrs *", {"entries": _MAX_MSRS})
        self._mp_state = ffi.new("struct kvm_mp_state *")
        self._debug = ffi.new("struct kvm_guest_debug *")
        self._events = ffi.new("struct kvm_vcpu_events *")
        self._interrupt = ffi.new("struct kvm_interrupt *")
        self._translation = ffi.new("struct kvm_translation *")
        self._ring = None
        # Dropped without close(): the fd is closed then, the mapping goes with its last user.
        # (Registered last: if __init__ fails, Vm.create_vcpu closes the fd.)
        self._finalizer = own_fd(self, fd, f"Vcpu {index}")

    # -- running --------------------------------------------------------------------------
    def run(self) -> Exit:
        """KVM_RUN until the next exit; return its typed record (an ``IntrExit`` on EINTR)."""
        return self.exit_record(self.run_raw())

    def run_raw(self) -> int:
        """KVM_RUN, returning the raw exit reason: the run loop's hot path, no record lookup."""
        if _ioctl(self.fd, _KVM_RUN, NULL) < 0:
            self.run_failed()
        return self.kvm_run.exit_reason

    def run_call(self) -> tuple:
        """(ioctl, fd, request, arg) of KVM_RUN, for a run loop that issues it inline.

        When the call returns < 0 the loop must call ``run_failed()``.
        """
        return _ioctl, self.fd, _KVM_RUN, NULL

    def exit_call(self) -> tuple:
        """(fn, fd, kvm_run): ``fn(fd, kvm_run)`` is KVM_RUN and a first look at the exit, one int
        (``pykvm.kvm.exits.EXIT_*``; -errno when KVM_RUN failed, to be given to ``run_failed``).
        In C in the compiled module; the same in Python in the in-line fallback."""
        if MODE == "api":
            return libc.pykvm_run_exit, self.fd, self.kvm_run
        return _run_exit, self.fd, self

    def run_failed(self, err: int | None = None) -> None:
        """KVM_RUN returned -1: a signal or ``immediate_exit`` becomes an INTR exit, anything else raises."""
        if err is None:
            err = ffi.errno
        if err != errno.EINTR and err != errno.EAGAIN:
            raise KvmIoctlError("KVM_RUN", err, os.strerror(err))
        self.kvm_run.exit_reason = ExitReason.INTR  # interrupted: report it as KVM itself would

    def exit_record(self, reason: int | None = None) -> Exit:
        """The typed record of the last exit (valid until the next run)."""
        if reason is None:
            reason = self.kvm_run.exit_reason
        return self._exits[reason] if reason < len(self._exits) else self._unsupported

    def complete_pending_io(self) -> None:
        """Let KVM finish an I/O or MMIO exit's instruction without running further guest code.

        After KVM_EXIT_IO/MMIO the guest state is consistent only once KVM_RUN is re-entered
        (KVM's API documentation); with ``immediate_exit`` set, KVM completes the operation
        and returns EINTR at once. Needed before taking the state away from KVM.
        """
        self.kvm_run.immediate_exit = 1
        try:
            self.run_raw()
        finally:
            self.kvm_run.immediate_exit = 0

    @property
    def immediate_exit(self) -> bool:
        return self.fd >= 0 and bool(self.kvm_run.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        """When set, the next KVM_RUN returns at once with EINTR (safe to set from a signal
        handler; on a closed vCPU it does nothing: the mapping is gone)."""
        if self.fd >= 0:
            self.kvm_run.immediate_exit = 1 if value else 0

    def enable_sync_regs(self, mask: int = K.KVM_SYNC_X86_REGS | K.KVM_SYNC_X86_SREGS | K.KVM_SYNC_X86_EVENTS) -> None:
        """Ask KVM to copy regs/sregs/events into ``kvm_run.s.regs`` on every exit (KVM_CAP_SYNC_REGS)."""
        self.kvm_run.kvm_valid_regs = mask

    def coalesced_ring(self) -> "CoalescedRing | None":
        """The ring KVM queues coalesced writes in (``Vm.register_coalesced``), in this vCPU's
        mapping; None where the host offers none."""
        if self._ring is None:
            page = self.vm.kvm.check_extension(K.KVM_CAP_COALESCED_MMIO)
            if not page or (page + 1) * mmap.PAGESIZE > len(self._view):
                return None
            self._ring = CoalescedRing(self._view[page * mmap.PAGESIZE:(page + 1) * mmap.PAGESIZE])
        return self._ring

    @property
    def sync_regs(self):
        """The ``struct kvm_sync_regs`` KVM fills on exit when sync regs are enabled."""
        return self.kvm_run.s.regs

    # -- registers ------------------------------------------------------------------------
    def get_regs(self):
        ioctl(self.fd, K.KVM_GET_REGS, self._regs, "KVM_GET_REGS")
        return self._regs

    def set_regs(self, regs) -> None:
        ioctl(self.fd, K.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self):
        ioctl(self.fd, K.KVM_GET_SREGS, self._sregs, "KVM_GET_SREGS")
        return self._sregs

    def set_sregs(self, sregs) -> None:
        ioctl(self.fd, K.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def get_fpu(self):
        ioctl(self.fd, K.KVM_GET_FPU, self._fpu, "KVM_GET_FPU")
        return self._fpu

    def set_fpu(self, fpu) -> None:
        ioctl(self.fd, K.KVM_SET_FPU, fpu, "KVM_SET_FPU")

    def get_msrs(self, indices) -> dict[int, int]:
        """Read MSRs by index; MSRs KVM does not know are left out of the result."""
        indices = list(indices)
        if len(indices) > _MAX_MSRS:
            raise ValueError(f"at most {_MAX_MSRS} MSRs per call")
        msrs = self._msrs
        for i, index in enumerate(indices):
            msrs.entries[i].index = index
            msrs.entries[i].data = 0
        msrs.nmsrs = len(indices)
        n = ioctl(self.fd, K.KVM_GET_MSRS, msrs, "KVM_GET_MSRS")
        return {msrs.entries[i].index: msrs.entries[i].data for i in range(n)}

    def try_set_msr(self, index: int, value: int) -> bool:
        """Write one MSR; whether KVM accepted it (an unknown MSR or a bad value is refused)."""
        msrs = self._msrs
        msrs.entries[0].index = index
        msrs.entries[0].data = value & 0xFFFFFFFFFFFFFFFF
        msrs.nmsrs = 1
        return ioctl(self.fd, K.KVM_SET_MSRS, msrs, "KVM_SET_MSRS") == 1

    def set_msrs(self, values: dict[int, int]) -> None:
        """Write MSRs; all must be accepted, else ``KvmIoctlError`` names the first refused one."""
        if len(values) > _MAX_MSRS:
            raise ValueError(f"at most {_MAX_MSRS} MSRs per call")
        msrs = self._msrs
        for i, (index, data) in enumerate(values.items()):
            msrs.entries[i].index = index
            msrs.entries[i].data = data
        msrs.nmsrs = len(values)
        n = ioctl(self.fd, K.KVM_SET_MSRS, msrs, "KVM_SET_MSRS")
        if n != len(values):
            refused = msrs.entries[n].index
            raise KvmIoctlError("KVM_SET_MSRS", errno.EINVAL, f"MSR {refused:#x} was refused")

    def set_cpuid(self, cpuid) -> None:
        """KVM_SET_CPUID2 with a ``struct kvm_cpuid2 *`` (e.g. ``Kvm.supported_cpuid()``)."""
        ioctl(self.fd, K.KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2")

    def get_cpuid(self, max_entries: int = 256):
        """KVM_GET_CPUID2: the vCPU's CPUID table as KVM keeps it, a new ``struct kvm_cpuid2 *``.

        Not always what KVM_SET_CPUID2 was given: the hypervisor may adjust entries (PVM ORs
        in the host features its guests can use natively) and KVM keeps run-time bits current.
        """
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": max_entries, "entries": max_entries})
        cpuid.nent = max_entries
        ioctl(self.fd, K.KVM_GET_CPUID2, cpuid, "KVM_GET_CPUID2")
        return cpuid

    # -- interrupts (a userspace interrupt controller: no in-kernel irqchip) --------------------
    def interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT: queue external interrupt ``vector`` for the next KVM_RUN. Only when
        ``kvm_run.ready_for_interrupt_injection`` says the guest can take it (KVM's API)."""
        self._interrupt.irq = vector
        ioctl(self.fd, K.KVM_INTERRUPT, self._interrupt, "KVM_INTERRUPT")

    def nmi(self) -> None:
        """KVM_NMI: queue an NMI for the vCPU (well defined without an in-kernel irqchip)."""
        ioctl(self.fd, K.KVM_NMI, NULL, "KVM_NMI")

    def set_nmi_state(self, pending: bool, blocked: bool) -> None:
        """KVM_SET_VCPU_EVENTS for the NMI fields alone: one latched, and blocking by one in service."""
        events = self.get_vcpu_events()
        events.flags = K.KVM_VCPUEVENT_VALID_NMI_PENDING
        events.nmi.pending = pending
        events.nmi.masked = blocked
        events.nmi.injected = 0
        self.set_vcpu_events(events)

    def get_mp_state(self) -> int:
        ioctl(self.fd, K.KVM_GET_MP_STATE, self._mp_state, "KVM_GET_MP_STATE")
        return self._mp_state.mp_state

    def set_mp_state(self, state: int) -> None:
        self._mp_state.mp_state = state
        ioctl(self.fd, K.KVM_SET_MP_STATE, self._mp_state, "KVM_SET_MP_STATE")

    def get_vcpu_events(self):
        ioctl(self.fd, K.KVM_GET_VCPU_EVENTS, self._events, "KVM_GET_VCPU_EVENTS")
        return self._events

    def set_vcpu_events(self, events) -> None:
        ioctl(self.fd, K.KVM_SET_VCPU_EVENTS, events, "KVM_SET_VCPU_EVENTS")

    def set_guest_debug(self, enable: bool = True, single_step: bool = False,
                        hw_breakpoints: tuple[int, ...] = ()) -> None:
        """KVM_SET_GUEST_DEBUG: single-stepping and up to four hardware execution breakpoints."""
        if len(hw_breakpoints) > 4:
            raise ValueError("x86 has four hardware breakpoints")
        dbg = self._debug
        control = 0
        if enable:
            control = K.KVM_GUESTDBG_ENABLE
            if single_step:
                control |= K.KVM_GUESTDBG_SINGLESTEP
            if hw_breakpoints:
                control |= K.KVM_GUESTDBG_USE_HW_BP
        dr7 = 0
        for i in range(4):
            addr = hw_breakpoints[i] if i < len(hw_breakpoints) else 0
            dbg.arch.debugreg[i] = addr
            if i < len(hw_breakpoints):
                dr7 |= 1 << (2 * i + 1)  # global enable, execute, 1 byte
        dbg.arch.debugreg[7] = dr7
        dbg.control = control
        ioctl(self.fd, K.KVM_SET_GUEST_DEBUG, dbg, "KVM_SET_GUEST_DEBUG")

    def translate(self, linear: int) -> int | None:
        """KVM_TRANSLATE: the guest-physical address of ``linear`` through the vCPU's current
        paging, or None where it is not mapped."""
        tr = self._translation
        tr.linear_address = linear & 0xFFFFFFFFFFFFFFFF
        tr.physical_address = 0
        tr.valid = 0
        ioctl(self.fd, K.KVM_TRANSLATE, tr, "KVM_TRANSLATE")
        return tr.physical_address if tr.valid else None

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Close the vCPU fd and unmap ``kvm_run``; nothing reads the mapping after (the exit
        records are detached, ``kvm_run`` is None). Closing again does nothing."""
        self._finalizer.detach()
        if self.fd < 0:
            return
        for record in {*self._exits, self._unsupported}:
            record.detach()
        self._exits, self._unsupported = [], None
        ffi.release(self.kvm_run)       # drop cffi's export of the mapping
        self.kvm_run = None
        os.close(self.fd)
        self.fd = -1
        if self._ring is not None:
            self._ring.release()
            self._ring = None
        self._view.release()
        self._mmap.close()

    def __enter__(self) -> "Vcpu":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _run_exit(fd: int, vcpu: "Vcpu") -> int:
    """``exit_call``'s function where the compiled module is missing: the C function's answer."""
    if _ioctl(fd, _KVM_RUN, NULL) < 0:
        return -ffi.errno
    view = vcpu._view
    reason, direction, size, port, count, off = EXIT_HEADER.unpack_from(view, EXIT_HEADER_OFFSET)
    r = reason if reason < 31 else 31
    if view[SYNC_EFER_LMA_BYTE] & 4 and view[SYNC_CS_L_BYTE]:
        r |= EXIT_PVM
    if reason == ExitReason.IO and count == 1 and off == PIO_DATA and size in (1, 2, 4):
        r |= (EXIT_OUT if direction else 0) | size << 7 | port << 10 | EXIT_SIMPLE
    return r


class MsrBackend:
    """A vCPU's MSRs as the userspace emulator's backend for the MSRs it does not keep itself:
    ``read(index) -> value | None`` and ``write(index, value) -> accepted``, so the emulator
    implements exactly the MSRs KVM does (KVM_GET_MSRS / KVM_SET_MSRS)."""

    def __init__(self, vcpu: Vcpu):
        self.vcpu = vcpu

    def read(self, index: int) -> int | None:
        return self.vcpu.get_msrs((index,)).get(index)

    def write(self, index: int, value: int) -> bool:
        return self.vcpu.try_set_msr(index, value)


class CoalescedRing:
    """``struct kvm_coalesced_mmio_ring``: KVM appends at ``last``, userspace takes from ``first``.

    ``pending()`` is one look at both indexes; ``drain(pio_write, mmio_write)`` replays the queued
    writes in the order the guest made them and frees their slots.
    """

    _INDEXES = struct.Struct("<II")
    _ENTRY = struct.Struct("<QII8s")      # phys_addr, len, pio, data[8]

    def __init__(self, view: memoryview):
        self.view = view
        self.slots = (len(view) - self._INDEXES.size) // self._ENTRY.size
        self._words = view[:8].cast("I")

    def pending(self) -> bool:
        words = self._words
        return words[0] != words[1]

    def drain(self, pio_write, mmio_write) -> int:
        """Replay every queued write; returns how many there were."""
        view, words, entry, slots = self.view, self._words, self._ENTRY, self.slots
        done = 0
        first = words[0]
        while first != words[1]:
            address, length, pio, data = entry.unpack_from(view, 8 + first * entry.size)
            value = int.from_bytes(data[:length], "little")
            (pio_write if pio else mmio_write)(address, length, value)
            first = (first + 1) % slots
            words[0] = first              # the slot is free once its write is done
            done += 1
        return done

    def release(self) -> None:
        self._words.release()
        self.view.release()
