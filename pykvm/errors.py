"""One exception hierarchy for everything pykvm reports to a user.

Each class carries the process exit code the CLI uses for it. pykvm's own codes
are even so they never collide with a guest's debug-exit status, which is always
odd (``(value << 1) | 1``, as QEMU's isa-debug-exit does it).
"""

from __future__ import annotations


class PykvmError(Exception):
    """Base of every error pykvm reports as a one-line message."""

    exit_code = 1


class BadInputError(PykvmError):
    """An image, option or file the user gave is unusable (too big, malformed, missing)."""

    exit_code = 2


class HostError(PykvmError):
    """The host cannot run guests: no /dev/kvm, no permission, wrong API version, ioctl failure."""

    exit_code = 4


class KvmIoctlError(HostError):
    """An ioctl on a KVM fd failed; carries the ioctl's name and errno."""

    def __init__(self, name: str, errno: int, message: str):
        super().__init__(f"{name} failed: {message} (errno {errno})")
        self.name = name
        self.errno = errno


class GuestShutdownError(PykvmError):
    """The guest shut down: a triple fault, or a shutdown exit from KVM."""

    exit_code = 6


class EmulationError(PykvmError):
    """An instruction could not be emulated, or KVM reported an internal/entry error.

    ``rip`` and ``code`` (the instruction bytes) are kept so the message names the culprit.
    """

    exit_code = 8

    def __init__(self, message: str, rip: int | None = None, code: bytes = b"", mnemonic: str = ""):
        detail = message
        if rip is not None:
            detail += f" at rip={rip:#x}"
        if code:
            detail += f" bytes={code.hex(' ')}"
        if mnemonic:
            detail += f" ({mnemonic})"
        super().__init__(detail)
        self.rip = rip
        self.code = code
        self.mnemonic = mnemonic


class GuestTimeoutError(PykvmError):
    """The guest ran longer than ``--timeout`` allowed."""

    exit_code = 10


class InterruptedByUser(PykvmError):
    """Ctrl-C: the run was stopped by the user."""

    exit_code = 130


#: Exit status for a bug in pykvm itself (an unexpected exception): reported in one line too.
INTERNAL_BUG_EXIT = 14
