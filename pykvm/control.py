"""Stopping a run from outside the guest: ``--timeout`` and Ctrl-C.

Both arrive as signals. The handlers only set flags that the run loops poll
(``Events.pending`` between emulator batches) and ``kvm_run.immediate_exit``, so a
vCPU blocked in ``KVM_RUN`` returns with EINTR. The timeout timer re-fires every
50 ms after its deadline, which closes the window where a signal lands just
before ``KVM_RUN`` is entered.
"""

from __future__ import annotations

import signal
import threading

from pykvm.errors import GuestTimeoutError, InterruptedByUser
from pykvm.pvm import Events


class RunControl:
    """Install SIGALRM/SIGINT handlers for one run; ``raise_if_stopped()`` turns a request into its error."""

    RETRIGGER = 0.05

    def __init__(self, events: Events, vcpus, timeout: float | None):
        self.events = events
        self.vcpus = vcpus
        self.timeout = timeout
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

    def __enter__(self) -> "RunControl":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals only reach the main thread; callers elsewhere use request_stop()
        self._saved[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: self.request_stop("interrupt"))
        if self.timeout is not None:
            self._saved[signal.SIGALRM] = signal.signal(signal.SIGALRM, lambda *_: self.request_stop("timeout"))
            signal.setitimer(signal.ITIMER_REAL, max(self.timeout, 1e-3), self.RETRIGGER)
        return self

    def __exit__(self, *exc) -> None:
        if signal.SIGALRM in self._saved:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()
