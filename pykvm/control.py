"""Stopping a run from outside the guest: ``--timeout`` and Ctrl-C.

Both arrive as signals. Python runs a signal handler only between bytecodes, so a
handler cannot reach into a vCPU blocked in ``KVM_RUN``: the signal that interrupts
KVM_RUN (EINTR) is what brings control back. A signal that lands just *before*
KVM_RUN is entered has already been consumed by then, and a guest spinning without
exits would never come back. So during a run a watchdog timer ticks every 100 ms: each
tick interrupts KVM_RUN, lets the pending handlers run, and checks the deadline. The
handlers only set flags the run loops poll (``Events.pending`` between emulator
batches) and ``kvm_run.immediate_exit``, so the next KVM_RUN returns at once.
"""

from __future__ import annotations

import signal
import threading
import time

from pykvm.errors import GuestTimeoutError, InterruptedByUser
from pykvm.pvm import Events


class RunControl:
    """Install SIGINT and a SIGALRM watchdog for one run; ``raise_if_stopped()`` turns a request into its error."""

    TICK = 0.1

    def __init__(self, events: Events, vcpus, timeout: float | None):
        self.events = events
        self.vcpus = vcpus
        self.timeout = timeout
        self.deadline: float | None = None
        self.reason: str | None = None
        self._saved = {}

    def request_stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.events.pending = True
        for vcpu in self.vcpus:
            if vcpu.fd >= 0:
                vcpu.immediate_exit = True

    def raise_if_stopped(self) -> None:
        if self.reason == "timeout":
            raise GuestTimeoutError(f"guest still running after --timeout {self.timeout:g}s")
        if self.reason == "interrupt":
            raise InterruptedByUser("interrupted by Ctrl-C")

    def _tick(self, *_) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.request_stop("timeout")

    def __enter__(self) -> "RunControl":
        if self.timeout is not None:
            self.deadline = time.monotonic() + self.timeout
        if threading.current_thread() is not threading.main_thread():
            return self  # signals only reach the main thread; callers elsewhere use request_stop()
        self._saved[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: self.request_stop("interrupt"))
        self._saved[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._tick)
        first = self.TICK if self.timeout is None else max(min(self.timeout, self.TICK), 1e-3)
        signal.setitimer(signal.ITIMER_REAL, first, self.TICK)
        return self

    def __exit__(self, *exc) -> None:
        if signal.SIGALRM in self._saved:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()
