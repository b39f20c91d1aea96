"""Guest-visible faults raised inside the emulator, and the triple-fault shutdown.

``CpuFault`` is internal control flow: an instruction raises it, the executor catches
it, puts RIP back on the faulting instruction and delivers the exception through the
IVT/IDT. It never escapes the ``Emulator`` API. ``TripleFault`` does: it is the guest
shutting down, a ``GuestShutdownError``.
"""

from __future__ import annotations

from pykvm.errors import GuestShutdownError
from pykvm.x86.bits import EXC_DE, EXC_GP, EXC_NP, EXC_PF, EXC_SS, EXC_TS, EXC_UD

_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
          10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM"}


def vector_name(vector: int) -> str:
    return _NAMES.get(vector, f"vector {vector}")


class CpuFault(Exception):
    """An exception the guest must see: ``vector``, optional ``error_code``, ``cr2`` for #PF."""

    __slots__ = ("vector", "error_code", "cr2")

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None):
        super().__init__(vector, error_code)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2

    def __str__(self) -> str:
        s = vector_name(self.vector)
        if self.error_code is not None:
            s += f"({self.error_code:#x})"
        if self.cr2 is not None:
            s += f" cr2={self.cr2:#x}"
        return s


class Preempted(Exception):
    """A long REP string instruction stopped between two elements so that an event (Ctrl-C,
    --timeout, a timer, an interrupt) is handled first. As the architecture allows: RIP stays
    on the instruction, (E)CX/(E)SI/(E)DI describe the work done, and it resumes where it
    stopped. Internal control flow, like ``CpuFault``: it never escapes the ``Emulator``."""


class BreakpointHit(Exception):
    """A debugger breakpoint: raised by the guard closure planted in front of the instruction
    at ``address`` (linear) before it runs. Internal control flow: ``run`` returns with RIP on
    that instruction, and the instruction has not executed."""

    __slots__ = ("address",)

    def __init__(self, address: int):
        super().__init__(address)
        self.address = address


class TripleFault(GuestShutdownError):
    """A fault while delivering a double fault: the CPU shuts down."""

    def __init__(self, rip: int, vectors: list[int]):
        names = " -> ".join(vector_name(v) for v in vectors)
        super().__init__(f"triple fault at rip={rip:#x} ({names})")
        self.rip = rip
        self.vectors = vectors


def gp(code: int = 0) -> CpuFault:
    return CpuFault(EXC_GP, code)


def ss(code: int = 0) -> CpuFault:
    return CpuFault(EXC_SS, code)


def np_(code: int) -> CpuFault:
    return CpuFault(EXC_NP, code)


def ts(code: int) -> CpuFault:
    return CpuFault(EXC_TS, code)


def ud() -> CpuFault:
    return CpuFault(EXC_UD)


def de() -> CpuFault:
    return CpuFault(EXC_DE)


def pf(linear: int, code: int) -> CpuFault:
    return CpuFault(EXC_PF, code, cr2=linear)
