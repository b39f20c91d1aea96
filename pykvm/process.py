"""The ``pykvm`` process around the CLI: signals from the first moment, stdout at exit, how it ends.

This module is what the ``pykvm`` command and ``python -m pykvm`` start. It imports nothing
heavy, so that:

* Ctrl-C, SIGTERM and SIGHUP stop pykvm the same way from the moment ``main()`` starts: while
  the CLI is imported, a guest is built or loaded, they raise ``Stop``, which unwinds and
  closes what was opened; during a run ``RunControl`` takes over and stops the guest between
  batches and KVM exits. A signal the process inherited ignored (``nohup``, a background job)
  stays ignored. ``Stop`` is not a ``KeyboardInterrupt``, which click reports as "Aborted!"
  with status 1 (a guest's "all passed").
* ``Stop`` is raised only in code below this module (the CLI, the machine): a signal that
  arrives while this module's own code runs is noted and ends pykvm just the same, so no
  signal ever escapes as a traceback.
* After a stop, what is left to do (unwinding, flushing the guest's output, closing) gets
  ``STOP_GRACE`` before a write that blocks (a pipe whose reader takes nothing) is abandoned.
* Every error is one line on stderr: ``report``.
* stdout is flushed here, not at interpreter exit, so a failed write becomes one line and a
  status (or, for a reader that went away, a quiet end) instead of "Exception ignored".
* pykvm stopped by SIGTERM, SIGHUP or a closed pipe (SIGPIPE) ends *by that signal* once the
  guest is stopped and everything is flushed and closed: the shell shows 128 + the signal's
  number, and no odd status (which would read as a guest's debug-exit status) is involved.
  Ctrl-C ends with status 130.
"""

from __future__ import annotations

import os
import signal
import sys

from pykvm.errors import (STOP_SIGNALS, GuestTimeoutError, OutputClosed, StoppedBySignal, output_error,
                          signal_error)

STOP_GRACE = 0.5       # seconds what is left after a stop may block on a write before it is abandoned


class Stop(BaseException):
    """A stop signal arrived outside a run (start-up, teardown)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class ErrorExit(SystemExit):
    """``SystemExit`` for an error already reported on stderr; ``error`` is the PykvmError."""

    def __init__(self, error):
        super().__init__(error.exit_code)
        self.error = error


_stop_signum = None    # the first stop signal outside a run
_reported = False      # the one error line is out


def _ours(frame) -> bool:
    """Whether the code a signal interrupted is this module's own."""
    return frame is not None and frame.f_globals is globals()


def _on_stop_signal(signum, frame) -> None:
    """The stop signals' handler outside a run: note the first one, give what is left
    ``STOP_GRACE`` (see the module), and unwind with ``Stop`` until the error line is out."""
    global _stop_signum
    if _stop_signum is None:
        _stop_signum = signum
        signal.signal(signal.SIGALRM, _on_grace_over)
        signal.setitimer(signal.ITIMER_REAL, STOP_GRACE)
    if not _reported and not _ours(frame):
        raise Stop(_stop_signum)


def _on_grace_over(_signum, frame) -> None:
    if not _reported and not _ours(frame):
        raise Stop(_stop_signum)


def raise_if_stop_noted() -> None:
    """Raise ``Stop`` for a signal that arrived before the CLI started (noted, not raised)."""
    if _stop_signum is not None:
        raise Stop(_stop_signum)


def _set_stop_handlers(handler) -> None:
    """Install ``handler`` for the stop signals, except those the process inherited ignored."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)


def report(message: str, prefix: str = "pykvm: error: ") -> None:
    """Write the one error line (a stderr that cannot take it is left alone)."""
    global _reported
    _reported = True
    try:
        sys.stderr.write(f"{prefix}{message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# -- the end -----------------------------------------------------------------------------------
def _flush() -> None:
    """The last flush of stdout: the one place the end's handler (``_while_flushing``) raises."""
    sys.stdout.flush()


def _while_flushing(signum, frame) -> None:
    """A stop signal, or the grace's SIGALRM, abandons the last flush; anywhere else it is noted."""
    global _stop_signum
    if frame is not None and frame.f_code is _flush.__code__:
        raise Stop(signum)
    if _stop_signum is None and signum in STOP_SIGNALS:
        _stop_signum = signum


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so what is still buffered for stdout goes nowhere quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _flush_stdout(error):
    """Flush stdout now, not at interpreter exit; returns the error to end with (``error``, or
    the flush's own). A reader that takes nothing blocks this as it blocks any program, but a
    stop signal abandons the flush, and after a run stopped (by a signal, by --timeout) it gets
    ``STOP_GRACE``."""
    _set_stop_handlers(_while_flushing)
    signal.signal(signal.SIGALRM, _while_flushing)
    if isinstance(error, (StoppedBySignal, GuestTimeoutError)):
        signal.setitimer(signal.ITIMER_REAL, STOP_GRACE)
    try:
        _flush()
    except Stop:
        _silence_stdout()
    except OSError as e:
        _silence_stdout()
        if error is None:
            error = output_error(e, "stdout")
            if not getattr(error, "quiet", False):
                report(str(error))
    signal.setitimer(signal.ITIMER_REAL, 0)
    if isinstance(error, OutputClosed):
        _silence_stdout()
    return error


def _record_if_missing(error, status) -> None:
    """``pykvm run --json`` that ended before its command wrote the record (a stop signal while
    starting up): the record of what is known goes out with the last flush."""
    if error is None and _stop_signum is not None:
        error = signal_error(_stop_signum)
    try:
        from pykvm import record

        record.emit_missing(sys.argv[1:], status if error is None else error.exit_code, error, record.stdout_line)
    except (Stop, OSError, ValueError):
        pass                            # the status and the error line still say what happened


def main() -> None:
    """The ``pykvm`` command."""
    _set_stop_handlers(_on_stop_signal)
    error = None
    status = 0
    try:
        from pykvm import quickrun

        if not quickrun.main(sys.argv[1:]):       # a plain `pykvm run` starts without click
            from pykvm.cli import main as cli

            cli.main(prog_name="pykvm")
    except Stop:
        pass                            # importing or parsing: _stop_signum says which
    except ErrorExit as e:
        error = e.error
    except SystemExit as e:
        status = e.code
    except Exception as e:              # a bug outside the commands' guard: still one line
        report(f"{type(e).__name__}: {e}", prefix="pykvm: internal error: ")
        status = 14
    if error is not None or _stop_signum is not None or status == 14:
        _record_if_missing(error, status)
    error = _flush_stdout(error)
    if error is None and _stop_signum is not None and not _reported:
        error = signal_error(_stop_signum)
        report(str(error))
    if error is not None:
        status = error.exit_code
    signum = getattr(error, "signum", None)
    if signum is not None and signum != signal.SIGINT:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    sys.exit(status)
