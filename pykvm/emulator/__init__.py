"""The userspace x86 emulator for PVM's non-PVM mode (real mode, 16/32-bit protected mode).

``Emulator(state, memory, bus, cpuid=None)`` runs a ``CpuState`` over guest RAM and the
device bus; ``TripleFault`` is raised when the guest shuts down by triple-faulting.

Beyond ``run``/``step``/``invalidate_code_cache``/``instructions_executed``:
``emu.state = new_state`` adopts a new state object (caches are flushed), ``sync()``
re-derives everything after editing segment registers in place. External interrupts: the
owner passes the interrupt controller's INTR output to ``set_intr(level)`` and sets
``interrupt_controller`` (``acknowledge() -> vector``); ``raise_nmi()`` latches an NMI;
``run`` takes them at instruction boundaries as the CPU does (IF, the STI / MOV SS shadow,
HLT, NMIs blocked from one NMI's delivery to the next IRET).

Module map: ``emulator`` (run loop, block cache), ``translate`` (blocks), ``codegen``
(instruction templates), ``ops_*`` (instruction families), ``flags`` (lazy EFLAGS),
``alu`` (shift/multiply/divide helpers), ``mmu`` (segmentation + paging + TLB + RAM/MMIO),
``segments`` (descriptor loads), ``control`` (far transfers, IRET), ``tasks`` (task switches),
``interrupts`` (IVT/IDT delivery, #DF/triple fault), ``strings`` (string instructions), ``system``
(CR/MSR/CPUID/I/O).
"""

from pykvm.emulator.emulator import Emulator
from pykvm.emulator.faults import CpuFault, TripleFault

__all__ = ["Emulator", "TripleFault", "CpuFault"]
