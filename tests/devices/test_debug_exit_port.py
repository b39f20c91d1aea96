"""The debug-exit port ends the run with QEMU isa-debug-exit's status convention."""

import pytest

from pykvm.devices.bus import Bus
from pykvm.devices.debug_exit import LENGTH, PORT, DebugExit, GuestExit
from pykvm.errors import PykvmError


@pytest.fixture
def bus():
    b = Bus()
    b.pio.register(PORT, LENGTH, DebugExit())
    return b


@pytest.mark.parametrize("size,value,expected", [
    (1, 0, 0), (1, 0x2A, 0x2A), (2, 0x1234, 0x1234), (4, 0x7F, 0x7F), (4, 0xDEADBEEF, 0xDEADBEEF),
    (1, 0x1FF, 0xFF),   # value truncated to the access size
])
def test_write_raises_guest_exit(bus, size, value, expected):
    with pytest.raises(GuestExit) as info:
        bus.pio_write(PORT, size, value)
    assert info.value.value == expected
    assert info.value.status == (expected << 1) | 1


def test_status_is_odd_and_not_a_pykvm_error():
    exc = GuestExit(0)
    assert exc.status == 1
    assert GuestExit(3).status == 7
    assert not isinstance(exc, PykvmError)


@pytest.mark.parametrize("size,ones", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)])
def test_read_returns_all_ones(bus, size, ones):
    assert bus.pio_read(PORT, size) == ones
