"""The I/O APIC (pykvm/devices/ioapic.py) in front of the local APIC: its register window,
edge and level pins, masking, remote IRR and the EOI broadcast, destinations, and how the
platform wires ISA IRQs to it. kvm-unit-tests' x86_64 ioapic runs it under KVM
(tests/test_peer_suites.py): 19 checks, as on QEMU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pykvm.devices import ioapic as IO
from pykvm.devices import lapic as L
from pykvm.devices.bus import Bus
from pykvm.platform import PcPlatform
from pykvm.x86.memmap import pc_memory_map

EDGE, LEVEL = 0, IO.LEVEL


@pytest.fixture
def apics():
    lapic = L.LocalApic()
    lapic.cpu = SimpleNamespace(apic_base=0xFEE00900, cr8=0)
    lapic.write(L.SVR, 4, 0x1FF)
    nmis = []
    ioapic = IO.IoApic(lapic, on_nmi=lambda: nmis.append(1))
    lapic.on_level_eoi = ioapic.end_of_interrupt
    ioapic.nmis = nmis
    return lapic, ioapic


def redirect(ioapic, pin, vector, trigger=EDGE, masked=False, dest=0, mode=IO.MODE_FIXED, logical=False):
    ioapic.write(IO.IOREGSEL, 4, 0x10 + 2 * pin + 1)
    ioapic.write(IO.IOWIN, 4, dest << 24)
    ioapic.write(IO.IOREGSEL, 4, 0x10 + 2 * pin)
    ioapic.write(IO.IOWIN, 4, vector | mode << 8 | trigger | (IO.MASKED if masked else 0)
                 | (IO.LOGICAL if logical else 0))


def entry(ioapic, pin) -> int:
    ioapic.write(IO.IOREGSEL, 4, 0x10 + 2 * pin)
    return ioapic.read(IO.IOWIN, 4)


def eoi(lapic):
    lapic.write(L.EOI, 4, 0)


def test_registers_after_reset(apics):
    _, ioapic = apics
    read = lambda index: (ioapic.write(IO.IOREGSEL, 4, index), ioapic.read(IO.IOWIN, 4))[1]   # noqa: E731
    assert read(1) == 0x00170011                              # version 0x11, 24 entries (KVM's)
    assert all(read(0x10 + 2 * pin) == IO.MASKED for pin in range(24))
    ioapic.write(IO.IOREGSEL, 4, 0)
    ioapic.write(IO.IOWIN, 4, 0xFFFFFFFF)
    assert read(0) == 0x0F000000 and read(2) == 0x0F000000     # ID bits 24-27; ARB follows it
    ioapic.write(IO.IOREGSEL, 4, 1)
    ioapic.write(IO.IOWIN, 4, 0)
    assert read(1) == 0x00170011


def test_an_edge_is_sent_once(apics):
    lapic, ioapic = apics
    redirect(ioapic, 14, 0x76)
    ioapic.set_irq(14, 1)
    ioapic.set_irq(14, 1)                                     # still high: no new edge
    assert lapic.acknowledge() == 0x76 and lapic.acknowledge() is None
    assert not lapic.tmr >> 0x76 & 1
    ioapic.set_irq(14, 0)
    ioapic.set_irq(14, 1)
    eoi(lapic)
    assert lapic.acknowledge() == 0x76


def test_a_level_waits_for_the_eoi_and_is_sent_again_while_high(apics):
    lapic, ioapic = apics
    redirect(ioapic, 14, 0x77, LEVEL)
    ioapic.set_irq(14, 1)
    assert entry(ioapic, 14) & IO.REMOTE_IRR and lapic.tmr >> 0x77 & 1
    assert lapic.acknowledge() == 0x77
    eoi(lapic)                                                # still high: sent again
    assert lapic.acknowledge() == 0x77
    ioapic.set_irq(14, 0)
    eoi(lapic)
    assert not entry(ioapic, 14) & IO.REMOTE_IRR and lapic.acknowledge() is None


def test_masking(apics):
    lapic, ioapic = apics
    redirect(ioapic, 14, 0x81, masked=True)                  # an edge while masked is lost...
    ioapic.set_irq(14, 1)
    ioapic.set_irq(14, 0)
    redirect(ioapic, 14, 0x81)
    assert lapic.acknowledge() is None
    redirect(ioapic, 13, 0x82, LEVEL, masked=True)           # ...a level waits for the unmask
    ioapic.set_irq(13, 1)
    assert lapic.acknowledge() is None
    redirect(ioapic, 13, 0x82, LEVEL)
    assert lapic.acknowledge() == 0x82


def test_read_only_bits_survive_a_rewrite(apics):
    lapic, ioapic = apics
    redirect(ioapic, 14, 0x83, LEVEL)
    ioapic.set_irq(14, 1)
    redirect(ioapic, 14, 0x83, LEVEL, masked=True)           # the guest writes remote IRR as 0
    assert entry(ioapic, 14) & IO.REMOTE_IRR
    redirect(ioapic, 14, 0x83, EDGE)                          # edge: no remote IRR
    assert not entry(ioapic, 14) & IO.REMOTE_IRR


@pytest.mark.parametrize("dest,logical,reached", [(0, False, True), (1, False, False), (0xFF, False, True),
                                                  (0x01, True, True), (0x02, True, False)])
def test_destinations(apics, dest, logical, reached):
    lapic, ioapic = apics
    lapic.write(L.LDR, 4, 0x01 << 24)                         # flat model, logical ID bit 0
    redirect(ioapic, 5, 0x90, dest=dest, logical=logical)
    ioapic.set_irq(5, 1)
    assert (lapic.acknowledge() == 0x90) == reached


def test_nmi_entries_go_to_the_nmi_input(apics):
    lapic, ioapic = apics
    redirect(ioapic, 7, 0, mode=IO.MODE_NMI)
    ioapic.set_irq(7, 1)
    assert ioapic.nmis == [1] and lapic.acknowledge() is None


def test_the_platform_wires_isa_irqs_to_both_controllers():
    platform = PcPlatform(Bus(), pc_memory_map(64 << 20))
    platform.lapic.cpu = SimpleNamespace(apic_base=0xFEE00900, cr8=0)
    lapic, ioapic = platform.lapic, platform.ioapic
    lapic.write(L.SVR, 4, 0x1FF)
    lapic.write(L.LVT_LINT0, 4, L.MASKED | 0x700)            # the PIC kept out
    redirect(ioapic, 2, 0x30)                                 # the PIT's IRQ 0 arrives on pin 2
    platform.set_irq(0, 1)
    assert platform.intr and platform.acknowledge() == 0x30
    redirect(ioapic, 20, 0x40)                                # lines 16-23: the I/O APIC's alone
    platform.set_irq(20, 1)
    assert platform.acknowledge() == 0x40
