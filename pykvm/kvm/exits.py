"""Typed KVM exits that read straight out of the vCPU's mmap'd ``kvm_run``.

Like rust-vmm's ``VcpuExit``, an exit carries no copy of its data: each vCPU
owns one preallocated record per exit reason, and ``Vcpu.run()`` returns the
record for the reason KVM reported. A record is valid until the next
``run()``. I/O and MMIO records expose the data bytes inside ``kvm_run`` after
checking KVM's offset against the mapping. Unknown reasons become
``UnsupportedExit``, never a crash.
"""

from __future__ import annotations

import enum
import struct

from pykvm.errors import EmulationError

# Little-endian value layouts by access size: port I/O is 1, 2 or 4 bytes; MMIO up to 8.
IO_STRUCTS = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I")}
MMIO_LENGTHS = range(1, 9)   # KVM splits an access that leaves a memory slot: any fragment of 1-8 bytes


class ExitReason(enum.IntEnum):
    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24
    X86_RDMSR = 29
    X86_WRMSR = 30
    X86_BUS_LOCK = 33
    NOTIFY = 37


INTERNAL_ERROR_EMULATION = 1
INTERNAL_ERROR_NAMES = {1: "emulation failure", 2: "simultaneous exceptions",
                        3: "unexpected exit while delivering an event", 4: "unexpected exit reason"}


class Exit:
    """Base of all exit records; ``reason`` is the ``ExitReason``."""

    __slots__ = ("_run", "_view")
    reason = ExitReason.UNKNOWN

    def __init__(self, run, view: memoryview):
        self._run = run          # cdata 'struct kvm_run *'
        self._view = view        # the whole kvm_run mapping, for data the kernel points into

    def describe(self) -> str:
        return self.reason.name.lower()

    def detach(self) -> None:
        """Called when the vCPU closes: the record must never read the unmapped kvm_run again."""
        self._run = None

    def __repr__(self) -> str:
        if self._run is None:
            return f"<{type(self).__name__} (vCPU closed)>"
        return f"<{type(self).__name__} {self.describe()}>"


# kvm_run.io as one little-endian record: direction, size, port, count, data_offset.
IO_HEADER = struct.Struct("<BBHIQ")
IO_HEADER_OFFSET = 32  # offsetof(struct kvm_run, io); checked against cffi in the tests
# The exit header in one unpack from offsetof(struct kvm_run, exit_reason) = 8: the reason, then
# (past ready_for_interrupt_injection, if_flag, flags, cr8, apic_base) the io member of the union
# as IO_HEADER reads it. For another reason the io fields are whatever the union holds.
EXIT_HEADER = struct.Struct("<I20xBBHIQ")
EXIT_HEADER_OFFSET = 8


# The answer of ``Vcpu.exit_call()``'s function (KVM_RUN and a first look at the exit, in C in
# the compiled module): < 0 is -errno; else these bits.
EXIT_REASON = 0x1F            # the exit reason, or 31: read kvm_run.exit_reason
EXIT_PVM = 1 << 5             # EFER.LMA and CS.L in the sync regs: still in PVM mode
EXIT_OUT = 1 << 6             # a simple I/O exit: an OUT (else an IN)
EXIT_KEY_SHIFT = 7            # a simple I/O exit: (r >> 7) & EXIT_KEY = port << 3 | size
EXIT_KEY = 0x7FFFF
EXIT_SIMPLE = 1 << 26         # a port I/O exit of one 1-, 2- or 4-byte element at offset PIO_DATA
PIO_DATA = 4096               # where KVM puts port I/O data in the vCPU mapping (page 1, x86)


def exit_header_with(*offsets: int) -> struct.Struct:
    """``EXIT_HEADER`` followed by the bytes of ``kvm_run`` at ``offsets`` (ascending, past the
    header): what the run loop reads at every exit, in one unpack."""
    fmt, at = EXIT_HEADER.format, EXIT_HEADER_OFFSET + EXIT_HEADER.size
    for offset in offsets:
        if offset < at:
            raise ValueError("offsets must ascend past the exit header")
        fmt += f"{offset - at}xB" if offset > at else "B"
        at = offset + 1
    return struct.Struct(fmt)


class IoExit(Exit):
    """Port I/O (``KVM_EXIT_IO``): ``is_out``, ``port``, ``size`` (1/2/4), ``count`` (>1 for REP INS/OUTS)."""

    __slots__ = ()
    reason = ExitReason.IO

    @property
    def is_out(self) -> bool:
        return self._run.io.direction == 1

    @property
    def port(self) -> int:
        return self._run.io.port

    @property
    def size(self) -> int:
        return self._run.io.size

    @property
    def count(self) -> int:
        return self._run.io.count

    def data_offset(self) -> int:
        """KVM's offset of the data bytes, checked to lie inside the mapping."""
        io = self._run.io
        off = io.data_offset
        if io.size not in IO_STRUCTS or off + io.size * io.count > len(self._view) or off < 0:
            raise EmulationError(f"KVM reported an I/O exit with data at {off:#x} "
                                 f"(size {io.size} x {io.count}) outside kvm_run")
        return off

    def values(self) -> list[int]:
        """The values an OUT wrote (one per repetition)."""
        size = self._run.io.size
        off = self.data_offset()
        unpack = IO_STRUCTS[size].unpack_from
        return [unpack(self._view, off + i * size)[0] for i in range(self._run.io.count)]

    def set_values(self, values) -> None:
        """Supply the values an IN reads, one per repetition."""
        size = self._run.io.size
        off = self.data_offset()
        pack = IO_STRUCTS[size].pack_into
        mask = (1 << (8 * size)) - 1
        for i, v in enumerate(values):
            pack(self._view, off + i * size, v & mask)

    def describe(self) -> str:
        return f"io {'out' if self.is_out else 'in'} port={self.port:#x} size={self.size} count={self.count}"


class MmioExit(Exit):
    """An access to guest-physical memory no slot backs (``KVM_EXIT_MMIO``)."""

    __slots__ = ()
    reason = ExitReason.MMIO

    @property
    def address(self) -> int:
        return self._run.mmio.phys_addr

    @property
    def length(self) -> int:
        return self._run.mmio.len

    @property
    def is_write(self) -> bool:
        return bool(self._run.mmio.is_write)

    def _checked_len(self) -> int:
        n = self._run.mmio.len
        if n not in MMIO_LENGTHS:
            raise EmulationError(f"KVM reported an MMIO exit of {n} bytes")
        return n

    @property
    def value(self) -> int:
        """The value written (for writes)."""
        n = self._checked_len()
        return int.from_bytes(bytes(self._run.mmio.data)[:n], "little")

    def set_value(self, value: int) -> None:
        """The value a read returns."""
        n = self._checked_len()
        data = self._run.mmio.data
        for i in range(n):
            data[i] = (value >> (8 * i)) & 0xFF

    def describe(self) -> str:
        return f"mmio {'write' if self.is_write else 'read'} addr={self.address:#x} len={self.length}"


class HltExit(Exit):
    __slots__ = ()
    reason = ExitReason.HLT


class ShutdownExit(Exit):
    """Triple fault or another shutdown condition."""

    __slots__ = ()
    reason = ExitReason.SHUTDOWN


class IntrExit(Exit):
    """KVM_RUN returned early: a signal arrived or ``immediate_exit`` was set."""

    __slots__ = ()
    reason = ExitReason.INTR


class DebugExit(Exit):
    """Single step or breakpoint (``KVM_EXIT_DEBUG``)."""

    __slots__ = ()
    reason = ExitReason.DEBUG

    @property
    def exception(self) -> int:
        return self._run.debug.arch.exception

    @property
    def pc(self) -> int:
        return self._run.debug.arch.pc

    @property
    def dr6(self) -> int:
        return self._run.debug.arch.dr6

    @property
    def dr7(self) -> int:
        return self._run.debug.arch.dr7

    def describe(self) -> str:
        return f"debug exception={self.exception} pc={self.pc:#x} dr6={self.dr6:#x}"


class FailEntryExit(Exit):
    """The hardware refused to enter the guest (``KVM_EXIT_FAIL_ENTRY``)."""

    __slots__ = ()
    reason = ExitReason.FAIL_ENTRY

    @property
    def hardware_reason(self) -> int:
        return self._run.fail_entry.hardware_entry_failure_reason

    @property
    def cpu(self) -> int:
        return self._run.fail_entry.cpu

    def describe(self) -> str:
        return f"fail_entry hardware_reason={self.hardware_reason:#x} cpu={self.cpu}"


class InternalErrorExit(Exit):
    """KVM gave up (``KVM_EXIT_INTERNAL_ERROR``), e.g. its emulator failed on an instruction."""

    __slots__ = ()
    reason = ExitReason.INTERNAL_ERROR

    @property
    def suberror(self) -> int:
        return self._run.internal.suberror

    @property
    def data(self) -> list[int]:
        n = min(self._run.internal.ndata, 16)
        return [self._run.internal.data[i] for i in range(n)]

    @property
    def instruction_bytes(self) -> bytes:
        """The failing instruction's bytes, when KVM supplied them (emulation failures only)."""
        ef = self._run.emulation_failure
        if ef.suberror != INTERNAL_ERROR_EMULATION or ef.ndata < 2 or not ef.flags & 1:
            return b""
        n = min(ef.insn_size, 15)
        return bytes(ef.insn_bytes)[:n]

    @property
    def suberror_name(self) -> str:
        return INTERNAL_ERROR_NAMES.get(self.suberror, f"suberror {self.suberror}")

    def describe(self) -> str:
        text = f"internal error: {self.suberror_name}"
        if self.instruction_bytes:
            text += f" bytes={self.instruction_bytes.hex(' ')}"
        return text


class SystemEventExit(Exit):
    __slots__ = ()
    reason = ExitReason.SYSTEM_EVENT
    NAMES = {1: "shutdown", 2: "reset", 3: "crash", 4: "wakeup", 5: "suspend"}

    @property
    def type(self) -> int:
        return self._run.system_event.type

    def describe(self) -> str:
        return f"system_event {self.NAMES.get(self.type, self.type)}"


class HypercallExit(Exit):
    __slots__ = ()
    reason = ExitReason.HYPERCALL

    @property
    def nr(self) -> int:
        return self._run.hypercall.nr


class UnsupportedExit(Exit):
    """An exit reason pykvm has no record for; ``raw_reason`` says which."""

    __slots__ = ()

    @property
    def raw_reason(self) -> int:
        return self._run.exit_reason

    def describe(self) -> str:
        try:
            return f"unsupported exit {ExitReason(self.raw_reason).name}"
        except ValueError:
            return f"unsupported exit reason {self.raw_reason}"


EXIT_CLASSES = (IoExit, MmioExit, HltExit, ShutdownExit, IntrExit, DebugExit, FailEntryExit,
                InternalErrorExit, SystemEventExit, HypercallExit)


def make_exit_table(run, view: memoryview, size: int = 64) -> tuple[list[Exit], Exit]:
    """One record per known reason (indexable by the raw reason), plus the fallback record."""
    unsupported = UnsupportedExit(run, view)
    table: list[Exit] = [unsupported] * size
    for cls in EXIT_CLASSES:
        table[cls.reason] = cls(run, view)
    return table, unsupported
