"""Stopping and waking a run from outside the guest: ``--timeout``, Ctrl-C (and SIGTERM,
SIGHUP), device timers.

All of these arrive as signals. Python runs a signal handler only between bytecodes, so a
handler cannot reach into a vCPU blocked in ``KVM_RUN``: the signal that interrupts
KVM_RUN (EINTR) is what brings control back. A signal that lands just *before*
KVM_RUN is entered has already been consumed by then, and a guest spinning without
exits would never come back. So during a run a watchdog timer ticks every 100 ms: each
tick interrupts KVM_RUN, lets the pending handlers run, and checks the deadline. The
handlers only set flags the run loops poll (``Events.pending`` between emulator
batches) and ``kvm_run.immediate_exit``, so the next KVM_RUN returns at once.

Device timers (the PIT) use the same SIGALRM: ``arm(deadline)`` brings the next tick forward
to a device deadline, and that tick kicks the vCPU out of KVM_RUN (or the emulator out of its
batch) so the machine can raise the interrupt. A vCPU halted with interrupts enabled sleeps
in ``sleep_until``: a ``select`` on the signal wake-up fd, so Ctrl-C, the watchdog and device
threads (``wake()``) end the sleep at once, and an idle guest costs next to no CPU.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import threading
import time

from pykvm.errors import STOP_SIGNALS, GuestTimeoutError, signal_error
from pykvm.pvm import Events

_MIN_DELAY = 50e-6     # the shortest timer delay armed (the PIT coalesces what is due by then)


class RunControl:
    """Install the stop signals' handlers and a SIGALRM watchdog for one run;
    ``raise_if_stopped()`` turns a request into its error.

    A stop (a signal, the deadline) only asks the run loops to stop: they look between batches
    and KVM exits. The guest's output is the exception: its write can block on a pipe whose
    reader takes nothing, where the loops cannot look. A write (``writing_output``) still going
    on ``WRITE_GRACE`` after a stop was asked for is abandoned by the watchdog raising the stop's
    error. A second stop signal raises it at once, wherever the run is.
    """

    TICK = 0.1
    WRITE_GRACE = 0.5

    def __init__(self, events: Events, vcpus, timeout: float | None):
        self.events = events
        self.vcpus = vcpus
        self.timeout = timeout
        self.deadline: float | None = None
        self.reason: str | int | None = None   # "timeout" or the stop signal's number
        self.stop_time: float | None = None     # monotonic time the stop was asked for
        self.timer_due: float | None = None    # monotonic time of the next device deadline armed
        self._saved = {}
        self._writing = False               # inside writing_output()
        self._wake_r = self._wake_w = -1      # the wake-up pipe, open while the run lasts
        self._saved_wakeup_fd = None

    def request_stop(self, reason) -> None:
        """Stop the run: ``reason`` is "timeout" or the number of the stop signal received."""
        if self.reason is None:
            self.reason = reason
            self.stop_time = time.monotonic()
        self._kick()

    def _on_stop_signal(self, signum: int, _frame) -> None:
        asked_before = isinstance(self.reason, int)
        self.request_stop(signum)
        if asked_before:
            raise self.stop_error()          # asked twice: the run loops are not getting there

    @contextlib.contextmanager
    def writing_output(self):
        """Around a write of the guest's output, which may block (see the class)."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False

    def _kick(self) -> None:
        """Make the run loops come back: the emulator between batches, KVM_RUN at once."""
        self.events.pending = True
        for vcpu in self.vcpus:
            if vcpu.fd >= 0:
                vcpu.immediate_exit = True

    def stop_error(self):
        """The error the requested stop ends the run with."""
        if self.reason == "timeout":
            return GuestTimeoutError(f"guest still running after --timeout {self.timeout:g}s")
        return signal_error(self.reason)

    def raise_if_stopped(self) -> None:
        if self.reason is not None:
            raise self.stop_error()

    def _tick(self, *_) -> None:
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            self.request_stop("timeout")
        if self._writing and self.stop_time is not None and now - self.stop_time >= self.WRITE_GRACE:
            raise self.stop_error()              # a blocked write of the output holds the stop up
        due = self.timer_due
        if due is not None:
            if now >= due:
                self.timer_due = None
                self._kick()
            else:              # the timer fired a little early: fire again at the deadline
                signal.setitimer(signal.ITIMER_REAL, max(due - now, _MIN_DELAY), self.TICK)

    # -- device timers and sleeping ---------------------------------------------------------------
    def arm(self, deadline_ns: int | None) -> None:
        """Have SIGALRM kick the vCPU at ``deadline_ns`` (CLOCK_MONOTONIC), unless a tick comes first."""
        if deadline_ns is None or threading.current_thread() is not threading.main_thread():
            return
        due = deadline_ns / 1e9
        if self.timer_due is not None and self.timer_due <= due:
            return
        self.timer_due = due
        signal.setitimer(signal.ITIMER_REAL, max(due - time.monotonic(), _MIN_DELAY), self.TICK)

    def sleep_until(self, deadline_ns: int | None) -> None:
        """Block until ``deadline_ns`` (None: no deadline), a signal (Ctrl-C, a watchdog tick) or
        ``wake()``; spurious wake-ups are fine, the caller re-checks what it waits for."""
        timeout = None if deadline_ns is None else max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9)
        if timeout is None or timeout > 0:
            select.select([self._wake_r], [], [], timeout)
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def wake(self) -> None:
        """End a ``sleep_until`` from another thread (a device with new input, a debugger).
        Outside the run (the pipe not open yet, or closed already) there is nothing to wake."""
        fd = self._wake_w
        if fd < 0:
            return
        try:
            os.write(fd, b"\0")
        except BlockingIOError:
            pass                     # already full: the sleeper wakes anyway
        except OSError as e:
            if e.errno != errno.EBADF:   # closed as the run ended
                raise

    # -- install / restore ------------------------------------------------------------------------
    def __enter__(self) -> "RunControl":
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.timeout is not None:
            self.deadline = time.monotonic() + self.timeout
        if threading.current_thread() is not threading.main_thread():
            return self  # signals only reach the main thread; callers elsewhere use request_stop()
        try:
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._saved[signum] = signal.signal(signum, self._on_stop_signal)
            self._saved[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._tick)
            self._saved_wakeup_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
            first = self.TICK if self.timeout is None else max(min(self.timeout, self.TICK), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, first, self.TICK)
        except BaseException:        # a signal during the set-up: undo what was done
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if signal.SIGALRM in self._saved:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if self._saved_wakeup_fd is not None:
            signal.set_wakeup_fd(self._saved_wakeup_fd)
            self._saved_wakeup_fd = None
        for signum, handler in self._saved.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._saved.clear()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1
