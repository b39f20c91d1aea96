"""The userspace x86 emulator for PVM's non-PVM mode (real mode, 16/32-bit protected mode).

``Emulator(state, memory, bus, cpuid=None)`` runs a ``CpuState`` over guest RAM and the
device bus; ``TripleFault`` is raised when the guest shuts down by triple-faulting.
"""

from pykvm.emulator.emulator import Emulator
from pykvm.emulator.faults import CpuFault, TripleFault

__all__ = ["Emulator", "TripleFault", "CpuFault"]
