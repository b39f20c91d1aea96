"""The vCPU's local APIC in xAPIC mode, at its register page (0xFEE00000).

Without an in-kernel irqchip KVM models no local APIC, so pykvm does, for both executors:
the emulator reaches the page through its MMU, KVM through MMIO exits. What a kernel or
kvm-unit-tests' start-up code expects of it:

* the registers: ID, version, TPR/APR/PPR, EOI, LDR/DFR, SVR, ISR/TMR/IRR, ESR, ICR, the
  LVT (timer, thermal, performance counters, LINT0, LINT1, error) and the timer's initial
  count, current count and divide configuration. The SDM asks for 32-bit accesses at
  16-byte aligned offsets; as KVM does, a narrower read inside one register is answered and
  any other write is ignored;
* fixed interrupts: accepted into IRR while the APIC is enabled (vectors 0-15 are illegal:
  ESR), delivered highest first when their priority class is above PPR's, retired by EOI
  from the highest in service;
* inter-processor interrupts by the ICR. This vCPU is the only processor, so "self", "all
  including self" and a destination that names it (physical ID or 0xFF; logical flat or
  cluster) reach it and "all but self" reaches nobody: fixed and lowest-priority vectors
  are accepted, an NMI goes to ``on_nmi()``, INIT and start-up find no other processor, an
  SMI is logged and dropped. The delivery status always reads idle;
* the timer, one-shot or periodic, on the host clock at KVM's APIC bus frequency (1 GHz)
  divided as configured, a periodic period no shorter than KVM's 200 us. TSC-deadline
  mode is not offered (the vCPU's CPUID does not report it);
* the 8259's INTR reaches the processor through LINT0 in ExtINT mode, or while the APIC is
  hardware-disabled (KVM's rule). LINT0 starts in ExtINT mode, as KVM's LINT0_REENABLED
  quirk leaves it, so a guest that never touches the APIC keeps its PIC.

Two of its registers live in the vCPU: IA32_APIC_BASE (its enable bit) and CR8 (TPR[7:4]).
``cpu`` is whichever object holds them now, with ``apic_base`` and ``cr8`` attributes: the
emulator's CpuState, or in PVM mode ``kvm_run``, where KVM reports both at every exit and
loads CR8 from at every KVM_RUN (the KVM API's rule without an in-kernel APIC). ``sync()``
reads them; the APIC does so at every access to its page and before every INTA. While
IA32_APIC_BASE.EN is clear the page is not decoded (reads float) and no interrupt is accepted.

The page moves with IA32_APIC_BASE's base (read at every MMIO exit in PVM mode, at every WRMSR
in the emulator). Level-triggered interrupts (from the I/O APIC) set their TMR bit, and their
EOI is broadcast back to it (``on_level_eoi``). Not modelled: x2APIC (not in the vCPU's CPUID),
SMIs, NMIs through LINT0/LINT1 or the LVT, the error interrupt.
"""

from __future__ import annotations

import logging
import time

from pykvm.devices.timed import TimedDevice

log = logging.getLogger(__name__)

BASE_ADDRESS = 0xFEE00000
PAGE_SIZE = 0x1000
MSR_ENABLE = 1 << 11
MSR_BASE_MASK = 0xFFFFFF000

VERSION = 0x14 | (6 - 1) << 16           # an integrated APIC with six LVT entries, as KVM's
BUS_NS_PER_TICK = 1                      # KVM's APIC bus runs at 1 GHz
MIN_PERIOD_NS = 200_000                  # KVM's min_timer_period_us

# Register offsets.
ID, VER, TPR, APR, PPR, EOI, RRD, LDR, DFR, SVR = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0
ISR, TMR, IRR = 0x100, 0x180, 0x200
ESR, ICR_LOW, ICR_HIGH = 0x280, 0x300, 0x310
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = 0x320, 0x330, 0x340, 0x350, 0x360, 0x370
TIMER_INITIAL, TIMER_CURRENT, TIMER_DIVIDE = 0x380, 0x390, 0x3E0

MASKED = 1 << 16
SVR_ENABLE = 1 << 8
MODE_FIXED, MODE_LOWEST, MODE_SMI, MODE_NMI, MODE_INIT, MODE_STARTUP, MODE_EXTINT = 0, 1, 2, 4, 5, 6, 7
TIMER_PERIODIC = 1 << 17
ESR_SEND_ILLEGAL_VECTOR, ESR_RECEIVE_ILLEGAL_VECTOR = 1 << 5, 1 << 6
SELF, ALL_INCLUDING_SELF, ALL_BUT_SELF = 1, 2, 3

_LVT_BASE = MASKED | 0xFF
# What a guest may write in each LVT entry (KVM's masks; TSC-deadline mode not offered).
LVT_WRITABLE = {
    LVT_TIMER: _LVT_BASE | TIMER_PERIODIC,
    LVT_THERMAL: _LVT_BASE | 0x700,
    LVT_PERF: _LVT_BASE | 0x700,
    LVT_LINT0: _LVT_BASE | 0x700 | 1 << 13 | 1 << 15,
    LVT_LINT1: _LVT_BASE | 0x700 | 1 << 13 | 1 << 15,
    LVT_ERROR: _LVT_BASE,
}


# Registers read back as stored: offset -> attribute.
_STORED = {ID: "id", TPR: "tpr", LDR: "ldr", DFR: "dfr", SVR: "svr", ESR: "esr", ICR_LOW: "icr_low",
           ICR_HIGH: "icr_high", TIMER_INITIAL: "timer_initial", TIMER_DIVIDE: "divide"}


def _highest(bits: int) -> int:
    """The highest vector set in a 256-bit register image, or -1."""
    return bits.bit_length() - 1


class LocalApic(TimedDevice):
    """The xAPIC of one vCPU. ``on_change()``, when set, is called whenever ``pending`` or
    ``accepts_pic`` may have changed (the platform recomputes the processor's INTR)."""

    def __init__(self, apic_id: int = 0, clock=time.monotonic_ns):
        self.clock = clock
        self.on_change = None
        self.on_nmi = None
        self.on_level_eoi = None     # EOI of a level-triggered vector (the I/O APIC's remote IRR)
        self.cpu = None
        self.bus = None
        self.base = BASE_ADDRESS     # where the register page is decoded (IA32_APIC_BASE)
        self._refused_base = None    # a base it could not move to (said once)
        self.apic_id = apic_id
        self.hw_enabled = True
        self.reset()

    def reset(self) -> None:
        """The state after INIT, with LINT0 in ExtINT mode (see the module's docstring)."""
        self.id = self.apic_id << 24
        self.tpr = self.ldr = 0
        self.dfr = 0xFFFFFFFF
        self.svr = 0xFF
        self.irr = self.isr = self.tmr = 0
        self.esr = self.errors = 0
        self.icr_low = self.icr_high = 0
        self.lvt = dict.fromkeys(LVT_WRITABLE, MASKED)
        self.lvt[LVT_LINT0] = MODE_EXTINT << 8
        self.timer_initial = 0
        self.divide = 0
        self._timer_start = 0
        self._deadline = None
        self.pending = False
        self.accepts_pic = True

    def attach(self, bus) -> None:
        self.bus = bus
        bus.mmio.register(self.base, PAGE_SIZE, self)

    def _move(self, base: int) -> None:
        """IA32_APIC_BASE names another page: decode the registers there."""
        from pykvm.devices.bus import BusConflictError

        bus = self.bus
        if bus is None:
            self.base = base
            return
        bus.mmio.unregister(self)
        try:
            bus.mmio.register(base, PAGE_SIZE, self)
        except BusConflictError as e:
            log.warning("local APIC: cannot move to %#x (%s); it stays at %#x", base, e, self.base)
            bus.mmio.register(self.base, PAGE_SIZE, self)
            self._refused_base = base
            return
        self.base = base

    # -- the registers the vCPU holds --------------------------------------------------------------
    def sync(self) -> None:
        """Read IA32_APIC_BASE.EN and CR8 from ``cpu`` (see the module's docstring)."""
        cpu = self.cpu
        if cpu is None:
            return
        base = cpu.apic_base
        enabled = bool(base & MSR_ENABLE)
        high = cpu.cr8 & 0xF
        if enabled and base & MSR_BASE_MASK not in (self.base, self._refused_base):
            self._move(base & MSR_BASE_MASK)
        if enabled == self.hw_enabled and high == self.tpr >> 4:
            return
        self.hw_enabled = enabled
        if high != self.tpr >> 4:
            self.tpr = high << 4                     # MOV CR8 clears TPR[3:0]
        self._refresh()

    @property
    def enabled(self) -> bool:
        """Hardware- and software-enabled: accepting interrupts."""
        return self.hw_enabled and bool(self.svr & SVR_ENABLE)

    # -- interrupts -------------------------------------------------------------------------------
    def processor_priority(self) -> int:
        in_service = max(_highest(self.isr), 0) & 0xF0
        return self.tpr if self.tpr & 0xF0 >= in_service else in_service

    def accept(self, vector: int, level: bool = False) -> None:
        """A fixed interrupt arrives (an IPI, the timer, the I/O APIC): IRR, if the APIC is
        enabled; TMR records its trigger mode until the vector is accepted again."""
        if not self.enabled:
            return
        if vector < 16:
            self.errors |= ESR_RECEIVE_ILLEGAL_VECTOR
            return
        bit = 1 << vector
        self.irr |= bit
        self.tmr = self.tmr | bit if level else self.tmr & ~bit
        self._refresh()

    def acknowledge(self) -> int | None:
        """INTA for the APIC: the vector to deliver (IRR -> ISR), or None if it has none."""
        self.sync()
        if not self.pending:
            return None
        vector = _highest(self.irr)
        self.irr &= ~(1 << vector)
        self.isr |= 1 << vector
        self._refresh()
        return vector

    def _refresh(self) -> None:
        vector = _highest(self.irr)
        self.pending = (self.hw_enabled and vector >= 0
                        and vector & 0xF0 > self.processor_priority() & 0xF0)
        lint0 = self.lvt[LVT_LINT0]
        self.accepts_pic = not self.hw_enabled or (not lint0 & MASKED and lint0 >> 8 & 7 == MODE_EXTINT)
        if self.on_change is not None:
            self.on_change()

    # -- the register page ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        self.sync()
        if not self.hw_enabled:
            return (1 << 8 * size) - 1
        shift = offset & 0xF
        if shift + size > 4:
            return 0
        return self.register(offset & 0xFF0) >> 8 * shift & ((1 << 8 * size) - 1)

    def register(self, offset: int) -> int:
        """The 32-bit value a read of the register at ``offset`` returns."""
        name = _STORED.get(offset)
        if name is not None:
            return getattr(self, name)
        if offset in self.lvt:
            return self.lvt[offset]
        if offset == VER:
            return VERSION
        if offset == PPR:
            return self.processor_priority()
        if offset == TIMER_CURRENT:
            return self.timer_current()
        if ISR <= offset < IRR + 0x80:
            bank, index = divmod(offset - ISR, 0x80)
            bits = (self.isr, self.tmr, self.irr)[bank]
            return bits >> (index // 0x10 * 32) & 0xFFFFFFFF
        return 0                                     # APR, RRD, EOI and the reserved offsets

    def write(self, offset: int, size: int, value: int) -> None:
        self.sync()
        if not self.hw_enabled or size != 4 or offset & 0xF:
            return                                   # KVM ignores such writes too
        if offset in self.lvt:
            self._write_lvt(offset, value)
        elif offset == ID:
            self.id = value & 0xFF000000
        elif offset == TPR:
            self.tpr = value & 0xFF
            if self.cpu is not None:
                self.cpu.cr8 = self.tpr >> 4
            self._refresh()
        elif offset == EOI:
            self._end_of_interrupt()
        elif offset == LDR:
            self.ldr = value & 0xFF000000
        elif offset == DFR:
            self.dfr = value | 0x0FFFFFFF
        elif offset == SVR:
            self._write_svr(value)
        elif offset == ESR:
            self.esr, self.errors = self.errors, 0
        elif offset == ICR_LOW:
            self.icr_low = value & ~(1 << 12)        # delivered at once: the status reads idle
            self._send_ipi(value)
        elif offset == ICR_HIGH:
            self.icr_high = value & 0xFF000000
        elif offset == TIMER_INITIAL:
            self.timer_initial = value
            self._start_timer()
        elif offset == TIMER_DIVIDE:
            count = self.timer_current()
            self.divide = value & 0xB
            if self._deadline is not None:           # the count goes on at the new rate
                self._timer_start = self.clock() - (self.timer_initial - count) * self._tick_ns()
                self._deadline = self._timer_start + self.timer_initial * self._tick_ns()

    def _write_lvt(self, offset: int, value: int) -> None:
        if offset == LVT_TIMER:
            self.update()        # a one-shot count that ran out stays out in periodic mode
        value &= LVT_WRITABLE[offset]
        if not self.svr & SVR_ENABLE:
            value |= MASKED                          # software-disabled: the LVT stays masked
        self.lvt[offset] = value
        if offset == LVT_LINT0:
            self._refresh()

    def _write_svr(self, value: int) -> None:
        self.svr = value & 0x3FF
        if not value & SVR_ENABLE:
            for offset in self.lvt:
                self.lvt[offset] |= MASKED
        self._refresh()

    def _end_of_interrupt(self) -> None:
        vector = _highest(self.isr)
        if vector >= 0:
            self.isr &= ~(1 << vector)
            self._refresh()
            if self.tmr >> vector & 1 and self.on_level_eoi is not None:
                self.on_level_eoi(vector)            # broadcast to the I/O APIC

    def _send_ipi(self, icr: int) -> None:
        vector, mode, shorthand = icr & 0xFF, icr >> 8 & 7, icr >> 18 & 3
        if mode in (MODE_FIXED, MODE_LOWEST) and vector < 16:
            self.errors |= ESR_SEND_ILLEGAL_VECTOR
            return
        if shorthand == ALL_BUT_SELF or (shorthand == 0 and not self.is_destination(self.icr_high >> 24,
                                                                                    bool(icr & 1 << 11))):
            return                                   # no other processor to reach
        if mode in (MODE_FIXED, MODE_LOWEST):
            self.accept(vector)
        elif mode == MODE_NMI:
            if self.on_nmi is not None:
                self.on_nmi()
        elif mode == MODE_SMI:
            log.warning("local APIC: SMI IPI to itself dropped (not modelled)")

    def is_destination(self, dest: int, logical: bool) -> bool:
        """Whether an interrupt for ``dest`` (physical APIC ID, or logical flat/cluster) reaches it."""
        if dest == 0xFF:
            return True
        if not logical:
            return dest == self.id >> 24
        logical = self.ldr >> 24
        if self.dfr >> 28 == 0xF:                    # flat model
            return bool(dest & logical)
        return dest >> 4 == logical >> 4 and bool(dest & logical & 0xF)   # cluster model

    # -- the timer --------------------------------------------------------------------------------
    def _tick_ns(self) -> int:
        code = (self.divide & 3) | (self.divide & 8) >> 1
        return BUS_NS_PER_TICK << ((code + 1) & 7)

    def _period_ns(self) -> int:
        period = self.timer_initial * self._tick_ns()
        return max(period, MIN_PERIOD_NS) if self.lvt[LVT_TIMER] & TIMER_PERIODIC else period

    def _start_timer(self) -> None:
        self._timer_start = self.clock()
        self._deadline = self._timer_start + self._period_ns() if self.timer_initial else None

    def timer_current(self) -> int:
        if self._deadline is None or not self.timer_initial:
            return 0
        period = self._period_ns()
        elapsed = self.clock() - self._timer_start
        if self.lvt[LVT_TIMER] & TIMER_PERIODIC:
            elapsed %= period
        left = period - elapsed
        return max(0, -(-left // self._tick_ns())) if left > 0 else 0

    def _due(self, now: int) -> None:
        timer = self.lvt[LVT_TIMER]
        if timer & TIMER_PERIODIC:
            period = self._period_ns()
            missed = (now - self._deadline) // period
            self._timer_start = self._deadline + missed * period
            self._deadline = self._timer_start + period
        else:
            self._deadline = None
        if not timer & MASKED:
            self.accept(timer & 0xFF)
