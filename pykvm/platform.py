"""The PC platform around the vCPU: the devices every guest finds, and its interrupt line.

``PcPlatform`` puts on the bus what a PC has besides the UART and the debug-exit port: the
vCPU's local APIC and the I/O APIC, the cascaded 8259 PICs (as a BIOS leaves them), the 8254
PIT with port 0x61, the CMOS/RTC with the memory-size bytes, port 0x92 and the 8042's reset
line, the POST-code port, and, on request, QEMU's pc-testdev. The machine sees three things
of it:

* ``intr`` and ``acknowledge()``: the processor's INTR input and the INTA cycle, whoever
  executes (the emulator or KVM_INTERRUPT). The local APIC's own interrupts come first; the
  PIC's reach the processor when the APIC lets them through (LINT0 in ExtINT mode, or the
  APIC hardware-disabled). ``on_intr_change`` tells the machine when INTR changes,
  ``on_nmi`` that the APIC sent the vCPU an NMI.
* ``poll()``: raise the timer interrupts (PIT, RTC, APIC timer) due by now; cheap until one is due.
* ``next_deadline_ns()``: when the next one is due, to sleep in HLT or arm a host timer.

Timers run on CLOCK_MONOTONIC, never on instruction counts.
"""

from __future__ import annotations

from functools import partial

from pykvm.devices.ioapic import IoApic
from pykvm.devices.lapic import LocalApic
from pykvm.devices.pic import Pic
from pykvm.devices.pit import Pit
from pykvm.devices.port61 import SystemControlB
from pykvm.devices.postcode import PostCode
from pykvm.devices.reset import Kbc8042, SystemControlA
from pykvm.devices.rtc import Rtc
from pykvm.devices.testdev import PcTestdev
from pykvm.x86.memmap import MemoryMap

PIT_IRQ = 0
RTC_IRQ = 8
IOAPIC_PIT_PIN = 2


class PcPlatform:
    """The PC devices of one machine, attached to its bus."""

    def __init__(self, bus, memory_map: MemoryMap, testdev: bool = False, apic_id: int = 0):
        self.intr = False
        self.on_intr_change: Callable[[bool], None] | None = None
        self.on_nmi: Callable[[], None] | None = None      # an NMI for the vCPU
        self.lapic = LocalApic(apic_id)
        self.ioapic = IoApic(self.lapic, on_nmi=self._nmi)
        self.lapic.on_level_eoi = self.ioapic.end_of_interrupt
        self.pic = pic = Pic.bios_initialised()
        self.pit = Pit(irq=partial(self.set_irq, PIT_IRQ))
        # CMOS says what the map says: RAM below 4 GiB counted from 0, as a BIOS reports it.
        below, above = memory_map.ram_split()
        self.rtc = Rtc(below + above, irq=partial(self.set_irq, RTC_IRQ), below_4g=below)
        self.port61 = SystemControlB(self.pit)
        self.port92 = SystemControlA()
        self.kbc = Kbc8042()
        self.post = PostCode()
        self.testdev = PcTestdev(self.set_irq) if testdev else None  # its MMIO page is in the map
        for device in (self.lapic, self.ioapic, pic, self.pit, self.rtc, self.port61, self.port92, self.kbc,
                       self.post, self.testdev):
            if device is not None:
                device.attach(bus)
        self._timers = (self.pit, self.rtc, self.lapic)
        pic.on_intr_change = self._update_intr
        self.lapic.on_change = self._update_intr
        self.lapic.on_nmi = self._nmi

    def _nmi(self) -> None:
        if self.on_nmi is not None:
            self.on_nmi()

    # -- interrupt lines in ---------------------------------------------------------------------
    def set_irq(self, irq: int, level: int) -> None:
        """Interrupt line ``irq`` (ISA IRQs 0-15, and 16-23 of the I/O APIC alone) goes to ``level``:
        to the 8259s, and to the I/O APIC's pin ``irq`` (the PIT's IRQ 0 on pin 2, as PCs wire
        it; ISA IRQ 2, the cascade, on no pin)."""
        if irq < 16:
            self.pic.set_irq(irq, level)
        if irq == PIT_IRQ:
            self.ioapic.set_irq(IOAPIC_PIT_PIN, level)
        elif irq != 2:
            self.ioapic.set_irq(irq, level)

    # -- the interrupt line ---------------------------------------------------------------------
    def _update_intr(self, *_) -> None:
        lapic = self.lapic
        level = lapic.pending or (self.pic.intr and lapic.accepts_pic)
        if level != self.intr:
            self.intr = level
            if self.on_intr_change is not None:
                self.on_intr_change(level)

    def acknowledge(self) -> int:
        """INTA: the vector of the highest-priority pending request (IRR -> ISR), the local
        APIC's first."""
        vector = self.lapic.acknowledge()
        return self.pic.acknowledge() if vector is None else vector

    # -- timers -----------------------------------------------------------------------------------
    def poll(self) -> None:
        """Raise the timer interrupts that fell due (one comparison per timer until then)."""
        for timer in self._timers:
            timer.update()

    def next_deadline_ns(self) -> int | None:
        """CLOCK_MONOTONIC time of the next timer interrupt, or None when none is coming."""
        soonest = None
        for timer in self._timers:
            deadline = timer.next_deadline_ns()
            if deadline is not None and (soonest is None or deadline < soonest):
                soonest = deadline
        return soonest
