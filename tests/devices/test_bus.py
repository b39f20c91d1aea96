"""The device bus: ranges, offsets, one device at several ranges, byte-wide devices."""

import pytest

from pykvm.devices.bus import Bus, BusConflictError, ByteRegisters


class Recorder:
    def __init__(self):
        self.accesses = []

    def read(self, offset, size):
        self.accesses.append(("r", offset, size))
        return offset

    def write(self, offset, size, value):
        self.accesses.append(("w", offset, size, value))


class Bytes(ByteRegisters):
    """Four byte registers; anything past them floats."""

    def __init__(self):
        self.regs = bytearray(4)
        self.log = []

    def read_byte(self, offset):
        self.log.append(("r", offset))
        return self.regs[offset] if offset < 4 else 0xFF

    def write_byte(self, offset, value):
        self.log.append(("w", offset, value))
        if offset < 4:
            self.regs[offset] = value


def test_offsets_are_relative_to_the_range():
    bus, dev = Bus(), Recorder()
    bus.pio.register(0x3F8, 8, dev)
    assert bus.pio_read(0x3FB, 1) == 3
    bus.pio_write(0x3F8, 2, 0x1234)
    assert dev.accesses == [("r", 3, 1), ("w", 0, 2, 0x1234)]


def test_one_device_at_several_ranges_tells_them_apart():
    bus, dev = Bus(), Recorder()
    bus.pio.register(0x60, 1, dev)
    bus.pio.register(0x64, 1, dev, offset=4)
    assert bus.pio_read(0x60, 1) == 0
    assert bus.pio_read(0x64, 1) == 4
    assert bus.pio_read(0x62, 1) == 0xFF          # the hole between them stays unclaimed
    bus.pio_write(0x64, 1, 0xFE)
    assert dev.accesses[-1] == ("w", 4, 1, 0xFE)


def test_overlapping_ranges_conflict_whatever_their_offsets():
    bus = Bus()
    bus.pio.register(0x20, 2, Recorder(), offset=0x20)
    with pytest.raises(BusConflictError, match="0x21"):
        bus.pio.register(0x21, 1, Recorder())
    bus.pio.register(0x22, 1, Recorder())          # adjacent is fine


def test_mmio_ranges_take_offsets_too():
    bus, dev = Bus(), Recorder()
    bus.mmio.register(0xFF000000, 0x10000, dev, offset=0x100)
    assert bus.mmio_read(0xFF000010, 4) == 0x110


def test_byte_registers_split_wide_accesses_lsb_first():
    dev = Bytes()
    dev.write(0, 4, 0x44332211)
    assert bytes(dev.regs) == b"\x11\x22\x33\x44"
    assert dev.log == [("w", 0, 0x11), ("w", 1, 0x22), ("w", 2, 0x33), ("w", 3, 0x44)]
    assert dev.read(1, 2) == 0x3322
    assert dev.read(0, 1) == 0x11


def test_byte_registers_past_the_end_float():
    dev = Bytes()
    dev.write(3, 2, 0xAABB)          # 0xBB lands in register 3, 0xAA past the end
    assert dev.regs[3] == 0xBB
    assert dev.read(3, 2) == 0xFFBB
    assert dev.read(2, 4) == 0xFFFFBB00


def test_byte_registers_write_truncates_to_a_byte():
    dev = Bytes()
    dev.write(0, 1, 0x1FF)
    assert dev.regs[0] == 0xFF
