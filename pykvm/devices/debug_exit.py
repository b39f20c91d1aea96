"""The debug-exit port (0xf4), as QEMU's isa-debug-exit: a guest ends the run with a status.

Self-checking guests (kvm-unit-tests style) write their failure count here with
``outb``/``outw``/``outl``; the run stops and the process exits with
``(value << 1) | 1``. The status is always odd, so it never collides with
pykvm's own (even) error exit codes, and a guest writing 0 still yields 1,
which distinguishes "the guest said so" from a clean pykvm exit of 0.

A guest exit is a normal end of a run, not a failure of pykvm, so ``GuestExit``
is deliberately *not* a ``PykvmError``: it travels up through the bus, the
emulator or the KVM run loop to the machine, which turns it into the status.
"""

from __future__ import annotations

PORT = 0xF4
LENGTH = 1

_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}


class GuestExit(Exception):
    """The guest wrote ``value`` to the debug-exit port; ``status`` is the process exit status."""

    def __init__(self, value: int):
        super().__init__(f"guest wrote {value:#x} to the debug-exit port")
        self.value = value
        self.status = (value << 1) | 1


class DebugExit:
    """Register at ``PORT`` with length ``LENGTH``; any access size at offset 0 works."""

    def read(self, offset: int, size: int) -> int:
        """Nothing to read: floating-bus all-ones, as on real hardware with no device behind."""
        return _ONES.get(size, (1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        raise GuestExit(value & ((1 << (8 * size)) - 1))
