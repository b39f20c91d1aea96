"""Reset requests (port 0x92, the 8042) end the run like a triple fault; the 8042 answers polls."""

import pytest

from pykvm.devices.bus import Bus
from pykvm.devices.reset import GuestReset, Kbc8042, SystemControlA
from pykvm.errors import GuestShutdownError


@pytest.fixture
def bus():
    b = Bus()
    b.port92 = SystemControlA()
    b.port92.attach(b)
    b.kbc = Kbc8042()
    b.kbc.attach(b)
    return b


def test_guest_reset_is_a_shutdown_with_status_6():
    assert issubclass(GuestReset, GuestShutdownError)
    assert GuestReset("x").exit_code == 6


def test_port92_fast_reset(bus):
    with pytest.raises(GuestReset, match="port 0x92"):
        bus.pio_write(0x92, 1, 0x03)


def test_port92_reads_back_and_a20(bus):
    assert bus.pio_read(0x92, 1) == 0x02 and bus.port92.a20_enabled
    bus.pio_write(0x92, 1, 0x00)
    assert bus.pio_read(0x92, 1) == 0x00 and not bus.port92.a20_enabled
    bus.pio_write(0x92, 1, 0xC2)
    assert bus.pio_read(0x92, 1) == 0xC2


def test_port92_reset_needs_a_rising_bit0():
    port = SystemControlA()
    port.value = 0x01                                   # (a value left over, as if set before)
    port.write(0, 1, 0x03)                              # still 1: no edge
    port.write(0, 1, 0x02)
    with pytest.raises(GuestReset):
        port.write(0, 1, 0x01)


def test_8042_pulse_reset(bus):
    with pytest.raises(GuestReset, match="0xfe to port 0x64"):
        bus.pio_write(0x64, 1, 0xFE)


def test_8042_pulse_without_bit0_does_not_reset(bus):
    bus.pio_write(0x64, 1, 0xFF)
    bus.pio_write(0x64, 1, 0xFD)                        # pulses bit 1 only
    with pytest.raises(GuestReset):
        bus.pio_write(0x64, 1, 0xF0)


def test_status_polls_see_an_empty_input_buffer(bus):
    status = bus.pio_read(0x64, 1)
    assert status & 0x02 == 0 and status & 0x01 == 0
    assert status & 0x04                                # system flag
    bus.pio_write(0x64, 1, 0xAD)
    assert bus.pio_read(0x64, 1) & 0x08                 # A2: last write was a command
    bus.pio_write(0x60, 1, 0xED)                        # a keyboard command: no keyboard, dropped
    assert bus.pio_read(0x64, 1) == 0x14
    assert bus.pio_read(0x60, 1) == 0x00


def test_classic_a20_enable_sequence(bus):
    bus.pio_write(0x64, 1, 0xD1)
    bus.pio_write(0x60, 1, 0xDD)
    assert not bus.kbc.a20_enabled
    bus.pio_write(0x64, 1, 0xD1)
    bus.pio_write(0x60, 1, 0xDF)
    assert bus.kbc.a20_enabled
    bus.pio_write(0x64, 1, 0xDD)
    assert not bus.kbc.a20_enabled
    bus.pio_write(0x64, 1, 0xDF)
    assert bus.kbc.a20_enabled


def test_writing_the_output_port_with_bit0_clear_resets(bus):
    bus.pio_write(0x64, 1, 0xD1)
    with pytest.raises(GuestReset, match="output port"):
        bus.pio_write(0x60, 1, 0xFE)


def test_8042_answers_probes(bus):
    for command, answer in ((0xAA, 0x55), (0xAB, 0x00), (0xD0, 0xCF), (0x20, 0x45)):
        bus.pio_write(0x64, 1, command)
        assert bus.pio_read(0x64, 1) & 0x01
        assert bus.pio_read(0x60, 1) == answer
        assert not bus.pio_read(0x64, 1) & 0x01
        assert bus.pio_read(0x60, 1) == answer          # no new byte: the last one again
    bus.pio_write(0x64, 1, 0x60)
    bus.pio_write(0x60, 1, 0x41)                        # command byte without the system flag
    bus.pio_write(0x64, 1, 0x20)
    assert bus.pio_read(0x60, 1) == 0x41
    assert not bus.pio_read(0x64, 1) & 0x04
