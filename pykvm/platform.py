"""The PC platform around the vCPU: the devices every guest finds, and its interrupt line.

``PcPlatform`` puts on the bus what a PC has besides the UART and the debug-exit port: the
cascaded 8259 PICs (as a BIOS leaves them), the 8254 PIT with port 0x61, the CMOS/RTC with
the memory-size bytes, port 0x92 and the 8042's reset line, the POST-code port, and, on
request, QEMU's pc-testdev. The machine sees three things of it:

* ``intr`` and ``acknowledge()``: the PIC's INTR output and the INTA cycle, whoever executes
  (the emulator or KVM_INTERRUPT). ``on_intr_change`` tells the machine when INTR changes.
* ``poll()``: raise the timer interrupts (PIT, RTC) due by now; cheap until one is due.
* ``next_deadline_ns()``: when the next one is due, to sleep in HLT or arm a host timer.

Timers run on CLOCK_MONOTONIC, never on instruction counts.
"""

from __future__ import annotations

from functools import partial

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


class PcPlatform:
    """The PC devices of one machine, attached to its bus."""

    def __init__(self, bus, memory_map: MemoryMap, testdev: bool = False):
        self.pic = pic = Pic.bios_initialised()
        self.pit = Pit(irq=partial(pic.set_irq, PIT_IRQ))
        # CMOS says what the map says: RAM below 4 GiB counted from 0, as a BIOS reports it.
        below, above = memory_map.ram_split()
        self.rtc = Rtc(below + above, irq=partial(pic.set_irq, RTC_IRQ), below_4g=below)
        self.port61 = SystemControlB(self.pit)
        self.port92 = SystemControlA()
        self.kbc = Kbc8042()
        self.post = PostCode()
        self.testdev = PcTestdev(pic.set_irq) if testdev else None  # its MMIO page is in the map
        for device in (pic, self.pit, self.rtc, self.port61, self.port92, self.kbc, self.post, self.testdev):
            if device is not None:
                device.attach(bus)
        self._timers = (self.pit, self.rtc)

    # -- the interrupt line ---------------------------------------------------------------------
    @property
    def intr(self) -> bool:
        return self.pic.intr

    def acknowledge(self) -> int:
        """INTA: the vector of the highest-priority pending request (IRR -> ISR)."""
        return self.pic.acknowledge()

    @property
    def on_intr_change(self) -> Callable[[bool], None] | None:
        return self.pic.on_intr_change

    @on_intr_change.setter
    def on_intr_change(self, callback: Callable[[bool], None] | None) -> None:
        self.pic.on_intr_change = callback

    # -- timers -----------------------------------------------------------------------------------
    def poll(self) -> None:
        """Raise the timer interrupts that fell due (one comparison per timer until then)."""
        for timer in self._timers:
            timer.update()

    def next_deadline_ns(self) -> int | None:
        """CLOCK_MONOTONIC time of the next timer interrupt, or None when none is coming."""
        pit, rtc = self.pit.next_deadline_ns(), self.rtc.next_deadline_ns()
        if pit is None or rtc is None:
            return rtc if pit is None else pit
        return min(pit, rtc)
