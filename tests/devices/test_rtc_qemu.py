"""CMOS memory-size bytes and the RTC's time formats against QEMU's (TCG, mc146818rtc and pc_cmos_init).

Not compared, where QEMU departs from the MC146818 (pykvm follows the chip): a
day of week the guest sets (QEMU recomputes it from the date), and the seconds
byte (the guests' clocks differ). The checksum at 0x2e/0x2f is pykvm's own.
"""

import pytest

from pykvm.devices.bus import Bus
from pykvm.devices.pic import Pic
from pykvm.devices.rtc import Rtc
from tests.devices.qemu_probe import AVAILABLE, WHY_NOT, Script, replay, run_in_qemu

pytestmark = pytest.mark.skipif(not AVAILABLE, reason=WHY_NOT)

MIB, GIB = 1 << 20, 1 << 30
MEMORY_BYTES = (0x15, 0x16, 0x17, 0x18, 0x30, 0x31, 0x34, 0x35, 0x5B, 0x5C, 0x5D)


def ours(script, memory, below_4g=None):
    bus = Bus()
    Rtc(memory, below_4g=below_4g).attach(bus)
    return replay(script, bus, Pic())


def cmos_reads(indexes):
    s = Script()
    for i in indexes:
        s.out(0x70, i).inb(0x71)
    return s


# QEMU's pc machine keeps RAM from 3 GiB up above 4 GiB once it reaches 3.5 GiB.
@pytest.mark.parametrize("qemu_memory,memory,below_4g", [
    ("16M", 16 * MIB, None), ("64M", 64 * MIB, None), ("1G", GIB, None), ("3584M", 3584 * MIB, 3 * GIB),
])
def test_memory_size_bytes_match_qemu(qemu_memory, memory, below_4g):
    script = cmos_reads(MEMORY_BYTES)
    assert ours(script, memory, below_4g) == run_in_qemu(script, memory=qemu_memory)


def test_register_defaults_match_what_seabios_leaves():
    script = cmos_reads((0x0A, 0x0B, 0x0D))
    assert [line for line in ours(script, 128 * MIB)] == run_in_qemu(script)


def set_time(s, b, values):
    """Under SET, write (index, value) pairs in the format ``b`` selects, then run."""
    s.out(0x70, 0x0B).out(0x71, b | 0x80)
    for index, value in values:
        s.out(0x70, index).out(0x71, value)
    return s.out(0x70, 0x0B).out(0x71, b)


def test_time_formats_match_qemu():
    s = Script()
    for hour in (0x00, 0x12, 0x13, 0x23):
        set_time(s, 0x02, ((0x32, 0x20), (9, 0x24), (8, 0x02), (7, 0x29), (6, 0x05), (4, hour), (2, 0x15),
                           (0, 0x30)))
        for b in (0x02, 0x06, 0x00, 0x04):                  # 24h BCD, 24h binary, 12h BCD, 12h binary
            s.out(0x70, 0x0B).out(0x71, b)
            for index in (0x32, 9, 8, 7, 6, 4, 2):
                s.out(0x70, index).inb(0x71)
    set_time(s, 0x04, ((0x32, 19), (9, 99), (8, 12), (7, 31), (6, 6), (4, 0x8B), (2, 59), (0, 30)))
    for index in (0x32, 9, 8, 7, 4, 2):
        s.out(0x70, index).inb(0x71)
    s.out(0x70, 0x0B).out(0x71, 0x00)                         # 12-hour BCD, then set 12 AM in it
    set_time(s, 0x00, ((4, 0x12), (2, 0x00)))
    s.out(0x70, 0x0B).out(0x71, 0x02).out(0x70, 4).inb(0x71)
    set_time(s, 0x02, ())
    assert ours(s, 128 * MIB) == run_in_qemu(s)
