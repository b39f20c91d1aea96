"""One exception hierarchy for everything pykvm reports to a user.

Each class carries the process exit code the CLI uses for it. pykvm's own codes
are even so they never collide with a guest's debug-exit status, which is always
odd (``(value << 1) | 1``, as QEMU's isa-debug-exit does it). The exceptions are the
statuses of signals, 128 + the signal's number: Ctrl-C's 130 is even; for SIGTERM,
SIGHUP and SIGPIPE (odd) the ``pykvm`` process ends by the signal itself
(``pykvm.process``), so no status is involved at all.
"""

from __future__ import annotations

import errno
import signal


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


class OutputError(PykvmError):
    """Writing the guest's output failed: a full disk (ENOSPC), an I/O error (EIO), ..."""

    exit_code = 12


class StoppedBySignal(PykvmError):
    """A signal stopped pykvm: Ctrl-C (SIGINT), SIGTERM, SIGHUP, or a reader that closed the
    output pipe (SIGPIPE). The status is 128 + the signal's number, as shells report it."""

    #: Said on stderr (a closed pipe ends quietly, as command-line tools do).
    quiet = False

    def __init__(self, signum: int, message: str | None = None):
        super().__init__(message or _SIGNAL_MESSAGES.get(signum, f"stopped by signal {signum}"))
        self.signum = signum
        self.exit_code = 128 + signum


class InterruptedByUser(StoppedBySignal):
    """Ctrl-C: the run was stopped by the user."""

    def __init__(self, message: str | None = None):
        super().__init__(signal.SIGINT, message)


class OutputClosed(StoppedBySignal, OutputError):
    """The reader of the guest's output went away (EPIPE): pykvm ends quietly, as if by SIGPIPE."""

    quiet = True

    def __init__(self, message: str = "the output's reader went away"):
        super().__init__(signal.SIGPIPE, message)


#: The signals that stop pykvm as Ctrl-C does, unless the process inherited them ignored
#: (``nohup`` ignores SIGHUP, a background job of a non-interactive shell SIGINT).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def signal_error(signum: int) -> StoppedBySignal:
    """The error a stop signal becomes."""
    return InterruptedByUser() if signum == signal.SIGINT else StoppedBySignal(signum)


def output_error(error: OSError, where: str) -> OutputError:
    """What a failed write of the guest's output (to ``where``) becomes."""
    if error.errno == errno.EPIPE:
        return OutputClosed(f"{where}: the reader went away")
    return OutputError(f"cannot write to {where}: {error.strerror or error}")


_SIGNAL_MESSAGES = {
    signal.SIGINT: "interrupted by Ctrl-C",
    signal.SIGTERM: "terminated (SIGTERM)",
    signal.SIGHUP: "hung up (SIGHUP)",
}

#: Exit status for a bug in pykvm itself (an unexpected exception): reported in one line too.
INTERNAL_BUG_EXIT = 14
