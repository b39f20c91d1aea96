"""Port 0x61: channel 2's gate and OUT as calibration loops use them, and the refresh toggle."""

from pykvm.devices.bus import Bus
from pykvm.devices.pit import Pit
from pykvm.devices.port61 import SystemControlB


class Clock:
    now = 0

    def __call__(self):
        return self.now


def machine():
    clock = Clock()
    pit = Pit(clock=clock)
    bus = Bus()
    pit.attach(bus)
    SystemControlB(pit).attach(bus)
    return clock, pit, bus


def test_calibration_loop_sees_out2_rise_after_the_count():
    clock, pit, bus = machine()
    bus.pio_write(0x61, 1, (bus.pio_read(0x61, 1) & ~0x02) | 0x01)   # gate on, speaker off
    bus.pio_write(0x43, 1, 0xB0)                                       # channel 2, word, mode 0
    bus.pio_write(0x42, 1, 1000 & 0xFF)
    bus.pio_write(0x42, 1, 1000 >> 8)
    assert not bus.pio_read(0x61, 1) & 0x20
    clock.now = pit.edge_time_ns(1000)
    assert not bus.pio_read(0x61, 1) & 0x20
    clock.now = pit.edge_time_ns(1001)
    assert bus.pio_read(0x61, 1) & 0x20


def test_gate_bit_drives_channel2_and_reads_back():
    clock, pit, bus = machine()
    bus.pio_write(0x43, 1, 0xB6)                                       # channel 2, mode 3
    bus.pio_write(0x42, 1, 4)
    bus.pio_write(0x42, 1, 0)
    clock.now = pit.edge_time_ns(100)
    assert bus.pio_read(0x61, 1) & 0x20                                # gate low: OUT held high
    bus.pio_write(0x61, 1, 0x03)
    assert pit.channels[2].gate
    assert bus.pio_read(0x61, 1) & 0x0F == 0x03
    clock.now = pit.edge_time_ns(103)                                  # reloaded at 101: low at 103
    assert not bus.pio_read(0x61, 1) & 0x20
    bus.pio_write(0x61, 1, 0x02)
    assert not pit.channels[2].gate


def test_refresh_bit_toggles_on_every_read_and_high_bits_are_read_only():
    clock, pit, bus = machine()
    bus.pio_write(0x61, 1, 0xFC)
    reads = [bus.pio_read(0x61, 1) for _ in range(4)]
    assert [r & 0x10 for r in reads] == [0x10, 0, 0x10, 0]
    assert {r & 0xCF for r in reads} == {0x0C}


def test_channel2_out_is_not_irq0():
    irqs = []
    clock = Clock()
    pit = Pit(irq=irqs.append, clock=clock)
    port = SystemControlB(pit)
    port.write(0, 1, 0x01)
    pit.write(3, 1, 0xB4)
    pit.write(2, 1, 2)
    pit.write(2, 1, 0)
    clock.now = 10**9
    pit.update()
    port.read(0, 1)
    assert irqs == []
