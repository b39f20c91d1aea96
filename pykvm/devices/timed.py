"""The run loop's side of a device that raises interrupts at host times (the PIT, the RTC).

Such a device keeps the host time of its next interrupt; the run loop sleeps
(in HLT) or arms a host timer until ``next_deadline_ns()`` and calls
``update()`` often — once per emulated batch, after each KVM exit — which costs
one comparison until the deadline passes and then raises what fell due.
"""

from __future__ import annotations



class TimedDevice:
    """Mix-in: subclasses set ``clock`` and ``_deadline`` and implement ``_due(now)``."""

    clock: Callable[[], int]
    _deadline: int | None = None

    def update(self, now_ns: int | None = None) -> None:
        """Raise the interrupts due by ``now_ns`` (default: the device's clock now)."""
        deadline = self._deadline
        if deadline is None:
            return
        now = self.clock() if now_ns is None else now_ns
        if now >= deadline:
            self._due(now)

    def next_deadline_ns(self) -> int | None:
        """Host time (ns, the device's clock) of the next interrupt, or None when none is coming."""
        return self._deadline

    def _due(self, now: int) -> None:
        raise NotImplementedError
