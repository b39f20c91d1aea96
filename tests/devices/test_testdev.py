"""QEMU's pc-testdev as kvm-unit-tests drive it."""

import pytest

from pykvm.devices.bus import Bus
from pykvm.devices.pic import Pic
from pykvm.devices.testdev import PcTestdev


@pytest.fixture
def rig():
    bus, lines = Bus(), []
    dev = PcTestdev(lambda irq, level: lines.append((irq, level)))
    dev.attach(bus)
    return bus, dev, lines


@pytest.mark.parametrize("size,value", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF), (4, 0x12345678)])
def test_scratch_register_round_trips_like_realmode_pio_tests(rig, size, value):
    bus, dev, _ = rig
    bus.pio_write(0xE0, size, value)
    assert bus.pio_read(0xE0, size) == value


def test_scratch_register_partial_accesses_at_any_offset(rig):
    bus, dev, _ = rig
    bus.pio_write(0xE0, 4, 0x11223344)
    bus.pio_write(0xE1, 2, 0xAABB)
    assert bus.pio_read(0xE0, 4) == 0x11AABB44
    assert bus.pio_read(0xE2, 1) == 0xAA
    assert bus.pio_read(0xE3, 2) == 0xFF11              # the byte past 0xe3 is the flush port's
    bus.pio_write(0xE3, 2, 0x9999)
    assert bus.pio_read(0xE0, 4) == 0x99AABB44


def test_byte_window_at_0xe8_is_the_same_register(rig):
    bus, dev, _ = rig
    bus.pio_write(0xE8, 4, 0xCAFEBABE)
    assert bus.pio_read(0xE0, 4) == 0xCAFEBABE
    assert bus.pio_read(0xEA, 2) == 0xCAFE


def test_flush_port_accepts_writes(rig):
    bus, dev, _ = rig
    bus.pio_write(0xE4, 4, 0x12345000)
    assert bus.pio_read(0xE4, 4) == 0
    assert bus.pio_read(0xE0, 4) == 0


def test_irq_lines(rig):
    bus, dev, lines = rig
    bus.pio_write(0x200B, 1, 1)
    bus.pio_write(0x200B, 1, 0)
    bus.pio_write(0x2004, 1, 0x80)
    assert lines == [(11, 1), (11, 0), (4, 1)]
    assert bus.pio_read(0x200B, 1) == 0


def test_wide_irq_writes_reach_consecutive_lines(rig):
    bus, dev, lines = rig
    bus.pio_write(0x200B, 4, 1)                         # outl %eax, %dx as realmode's sti test does
    assert lines == [(11, 1), (12, 0), (13, 0), (14, 0)]


def test_lines_16_to_23_are_passed_on_for_the_io_apic(rig):
    bus, dev, lines = rig
    bus.pio_write(0x2010, 1, 1)
    bus.pio_write(0x2017, 1, 1)
    assert lines == [(16, 1), (23, 1)]
    assert bus.pio_read(0x2018, 1) == 0xFF              # past the device


def test_realmode_sti_test_delivers_vector_0x73_through_the_pic():
    bus, pic = Bus(), Pic.bios_initialised()
    pic.attach(bus)
    PcTestdev(pic.set_irq).attach(bus)
    bus.pio_write(0x200B, 4, 1)
    bus.pio_write(0x200B, 4, 0)
    assert pic.interrupt_pending()
    assert pic.acknowledge() == 0x73


def test_mmio_scratch_page(rig):
    bus, dev, _ = rig
    bus.mmio_write(0xFF000000, 8, 0x0102030405060708)
    assert bus.mmio_read(0xFF000000, 4) == 0x05060708
    assert bus.mmio_read(0xFF000006, 2) == 0x0102
    bus.mmio_write(0xFF00FFFE, 4, 0xAABBCCDD)           # clipped at the end of the page
    assert bus.mmio_read(0xFF00FFFE, 4) == 0xFFFFCCDD


def test_mmio_is_optional():
    bus = Bus()
    PcTestdev(lambda irq, level: None).attach(bus, mmio=False)
    assert bus.mmio_read(0xFF000000, 4) == 0xFFFFFFFF
