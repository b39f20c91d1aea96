"""The I/O APIC (an 82093AA, as KVM models it) at 0xFEC00000: 24 input pins, each with a
redirection entry that sends its interrupt to the local APIC.

Registers are reached indirectly: IOREGSEL (offset 0x00) selects, IOWIN (offset 0x10) reads or
writes the 32-bit register: 0 the ID (bits 24-27 writable), 1 the version (0x11, 24 entries),
2 the arbitration ID (read-only: it follows the ID), 0x10 + 2n / 0x11 + 2n the low and high
halves of pin n's redirection entry (vector, delivery mode, logical destination mode, polarity,
trigger mode, mask, destination; delivery status and remote IRR are read-only).

Delivery follows KVM's I/O APIC:
* a pin's request (IRR) is set by a rising edge, or held while a level-triggered line is high, and
  dropped when the line falls; a masked pin keeps a level request for when it is unmasked, and an
  edge seen while masked is lost once the line falls;
* an edge-triggered request is sent once; a level-triggered one sets remote IRR, and is not sent
  again until the local APIC's EOI of its vector (broadcast back here) clears remote IRR: if the
  line is still high, it is sent again;
* fixed and lowest-priority interrupts go into the local APIC (whose TMR records level ones), NMI
  to the vCPU's NMI input; the destination is matched as the local APIC matches an IPI's. ExtINT,
  INIT and SMI entries are logged and dropped.

The platform routes ISA IRQ n to pin n, except the PIT (IRQ 0), which arrives on pin 2 as on
every PC since the MP tables; the test device's lines 16-23 reach pins 16-23.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

BASE_ADDRESS = 0xFEC00000
PAGE_SIZE = 0x1000
PINS = 24
VERSION = 0x11 | (PINS - 1) << 16
IOREGSEL, IOWIN = 0x00, 0x10
REG_ID, REG_VERSION, REG_ARB, REG_REDIRECTION = 0, 1, 2, 0x10

MASKED = 1 << 16
LEVEL = 1 << 15
REMOTE_IRR = 1 << 14
DELIVERY_STATUS = 1 << 12
LOGICAL = 1 << 11
_READ_ONLY_LOW = REMOTE_IRR | DELIVERY_STATUS
MODE_FIXED, MODE_LOWEST, MODE_NMI = 0, 1, 4


class IoApic:
    """``lapic`` receives the interrupts (``accept``, ``is_destination``); ``on_nmi()`` takes NMIs."""

    def __init__(self, lapic, on_nmi=None):
        self.lapic = lapic
        self.on_nmi = on_nmi
        self.select = 0
        self.id = 0
        self.entries = [MASKED] * PINS          # 64-bit redirection entries: all masked after reset
        self.lines = [0] * PINS
        self.irr = 0

    def attach(self, bus) -> None:
        bus.mmio.register(BASE_ADDRESS, PAGE_SIZE, self)

    # -- the register window --------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == IOREGSEL:
            return self.select
        if offset == IOWIN:
            return self.register(self.select) & ((1 << 8 * size) - 1)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == IOREGSEL:
            self.select = value & 0xFF
        elif offset == IOWIN:
            self._write_register(self.select, value & 0xFFFFFFFF)

    def register(self, index: int) -> int:
        if index == REG_ID or index == REG_ARB:
            return self.id
        if index == REG_VERSION:
            return VERSION
        pin, high = divmod(index - REG_REDIRECTION, 2)
        if 0 <= pin < PINS:
            return self.entries[pin] >> (32 * high) & 0xFFFFFFFF
        return 0xFFFFFFFF

    def _write_register(self, index: int, value: int) -> None:
        if index == REG_ID:
            self.id = value & 0x0F000000
            return
        pin, high = divmod(index - REG_REDIRECTION, 2)
        if not 0 <= pin < PINS:
            return
        entry = self.entries[pin]
        if high:
            entry = (entry & 0xFFFFFFFF) | (value & 0xFF000000) << 32
        else:
            entry = (entry & ~0xFFFFFFFF) | (value & ~_READ_ONLY_LOW & 0xFFFFFFFF) | (entry & _READ_ONLY_LOW)
            if not entry & LEVEL:
                entry &= ~REMOTE_IRR             # an edge-triggered pin has no remote IRR
        self.entries[pin] = entry
        self._service(pin)

    # -- pins ------------------------------------------------------------------------------------
    def set_irq(self, pin: int, level: int) -> None:
        """Input ``pin`` goes to ``level``."""
        old, self.lines[pin] = self.lines[pin], level
        bit = 1 << pin
        if not level:
            self.irr &= ~bit
            return
        if old and not self.entries[pin] & LEVEL:
            return                                # no new edge
        self.irr |= bit
        self._service(pin)

    def end_of_interrupt(self, vector: int) -> None:
        """The local APIC's EOI of a level-triggered ``vector``: clear remote IRR where it is set
        for that vector, and send again what is still requested."""
        for pin, entry in enumerate(self.entries):
            if entry & 0xFF == vector and entry & REMOTE_IRR:
                self.entries[pin] = entry & ~REMOTE_IRR
                self._service(pin)

    def _service(self, pin: int) -> None:
        entry = self.entries[pin]
        bit = 1 << pin
        if not self.irr & bit or entry & MASKED or (entry & LEVEL and entry & REMOTE_IRR):
            return
        level = bool(entry & LEVEL)
        if not level:
            self.irr &= ~bit
        mode = entry >> 8 & 7
        lapic = self.lapic
        if not lapic.is_destination(entry >> 56, bool(entry & LOGICAL)):
            return                                # nobody to deliver to: a level request waits
        if mode in (MODE_FIXED, MODE_LOWEST):
            if not lapic.enabled:
                return
            lapic.accept(entry & 0xFF, level)
        elif mode == MODE_NMI:
            if self.on_nmi is not None:
                self.on_nmi()
        else:
            log.warning("I/O APIC: pin %d's delivery mode %d is not modelled; interrupt dropped", pin, mode)
            return
        if level:
            self.entries[pin] = entry | REMOTE_IRR    # until the EOI of its vector
