"""The MC146818 RTC and CMOS against the datasheet, on a fake wall clock."""

import calendar

import pytest

from pykvm.devices.bus import Bus
from pykvm.devices.rtc import UIP_NS, Rtc

NS = 1_000_000_000
MIB, GIB = 1 << 20, 1 << 30


def wall(year, month, day, hour=0, minute=0, second=0, ns=0):
    return calendar.timegm((year, month, day, hour, minute, second)) * NS + ns


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


class Cmos:
    """An RTC on a bus, read and written the way a guest does."""

    def __init__(self, now=wall(2024, 2, 29, 23, 59, 58, NS // 2), memory=64 * MIB, **kw):
        self.clock = Clock(now)
        self.irqs = []
        self.rtc = Rtc(memory, clock=self.clock, irq=self.irqs.append, time_of_day=self.clock, **kw)
        self.bus = Bus()
        self.rtc.attach(self.bus)

    def read(self, index):
        self.bus.pio_write(0x70, 1, index)
        return self.bus.pio_read(0x71, 1)

    def write(self, index, value):
        self.bus.pio_write(0x70, 1, index)
        self.bus.pio_write(0x71, 1, value)

    def time(self):
        """(century, year, month, day, weekday, hours, minutes, seconds) as raw bytes."""
        return tuple(self.read(i) for i in (0x32, 9, 8, 7, 6, 4, 2, 0))

    def advance(self, ns):
        self.clock.now += ns
        return self


@pytest.fixture
def cmos():
    return Cmos()


# -- time of day -------------------------------------------------------------------------------

def test_power_on_registers(cmos):
    assert [cmos.read(i) for i in (0x0A, 0x0B, 0x0C, 0x0D)] == [0x26, 0x02, 0x00, 0x80]


def test_time_in_bcd_24_hour(cmos):
    # 2024-02-29 is a Thursday: day of week 5 (Sunday = 1)
    assert cmos.time() == (0x20, 0x24, 0x02, 0x29, 0x05, 0x23, 0x59, 0x58)


def test_time_ticks_over_a_leap_day_and_month(cmos):
    cmos.advance(NS // 2)
    assert cmos.read(0) == 0x59
    cmos.advance(NS)
    assert cmos.time() == (0x20, 0x24, 0x03, 0x01, 0x06, 0x00, 0x00, 0x00)


def test_binary_mode(cmos):
    cmos.write(0x0B, 0x06)
    assert cmos.time() == (20, 24, 2, 29, 5, 23, 59, 58)


@pytest.mark.parametrize("hour,bcd,binary", [
    (0, 0x12, 0x0C),             # 12 AM
    (1, 0x01, 0x01),
    (11, 0x11, 0x0B),
    (12, 0x92, 0x8C),            # 12 PM
    (13, 0x81, 0x81),
    (23, 0x91, 0x8B),
])
def test_12_hour_mode_encodings(hour, bcd, binary):
    c = Cmos(now=wall(2021, 6, 15, hour, 30))
    c.write(0x0B, 0x00)
    assert c.read(4) == bcd
    c.write(0x0B, 0x04)
    assert c.read(4) == binary


@pytest.mark.parametrize("b,hours,hour", [(0x00, 0x12, 0), (0x00, 0x92, 12), (0x00, 0x81, 13),
                                          (0x04, 0x8C, 12), (0x04, 0x0C, 0), (0x02, 0x17, 17)])
def test_setting_hours_in_each_format(b, hours, hour):
    c = Cmos(now=wall(2021, 6, 15, 5, 30))
    c.write(0x0B, b | 0x80)
    c.write(4, hours)
    c.write(0x0B, b)
    c.write(0x0B, 0x06)
    assert c.read(4) == hour


def test_century_and_year_roll_over():
    c = Cmos(now=wall(2099, 12, 31, 23, 59, 59))
    c.advance(NS)
    assert c.time() == (0x21, 0x00, 0x01, 0x01, 0x06, 0x00, 0x00, 0x00)      # a Friday


# -- register A: UIP and the divider -----------------------------------------------------------

def test_uip_is_set_in_the_244us_before_each_update():
    start = wall(2024, 1, 1, 12, 0, 0)
    c = Cmos(now=start)
    assert not c.read(0x0A) & 0x80
    c.clock.now = start + NS - UIP_NS - 1
    assert not c.read(0x0A) & 0x80
    c.clock.now = start + NS - UIP_NS
    assert c.read(0x0A) == 0xA6
    assert c.read(0) == 0x00                            # the update has not happened yet
    c.clock.now = start + NS - 1
    assert c.read(0x0A) & 0x80
    c.clock.now = start + NS
    assert c.read(0x0A) == 0x26
    assert c.read(0) == 0x01


def test_uip_is_read_only_and_clear_while_set():
    c = Cmos(now=wall(2024, 1, 1, 12, 0, 0, NS - 1000))
    c.write(0x0A, 0xA6)
    assert c.rtc.cmos[0x0A] == 0x26
    c.write(0x0B, 0x82)
    assert not c.read(0x0A) & 0x80


def test_divider_reset_stops_the_clock_and_release_updates_after_half_a_second(cmos):
    cmos.write(0x0A, 0x66)
    cmos.advance(10 * NS)
    assert cmos.read(0) == 0x58
    cmos.write(0x0A, 0x26)
    cmos.advance(NS // 2 - 1)
    assert cmos.read(0) == 0x58
    cmos.advance(1)
    assert cmos.read(0) == 0x59


# -- register B: SET ---------------------------------------------------------------------------

def test_set_freezes_updates_and_time_restarts_from_what_was_written(cmos):
    cmos.write(0x0B, 0x82)
    cmos.advance(5 * NS)
    assert cmos.read(0) == 0x58                         # no updates while SET
    for index, value in ((0x32, 0x19), (9, 0x99), (8, 0x12), (7, 0x31), (6, 0x06), (4, 0x23), (2, 0x59),
                         (0, 0x57)):
        cmos.write(index, value)
    assert cmos.time() == (0x19, 0x99, 0x12, 0x31, 0x06, 0x23, 0x59, 0x57)
    cmos.write(0x0B, 0x02)
    assert cmos.read(0) == 0x57
    cmos.advance(3 * NS)
    assert cmos.time() == (0x20, 0x00, 0x01, 0x01, 0x07, 0x00, 0x00, 0x00)


def test_set_keeps_the_divider_phase(cmos):                      # 0.5 s into a second
    cmos.write(0x0B, 0x82)
    cmos.write(0, 0x10)
    cmos.write(0x0B, 0x02)
    cmos.advance(NS // 2 - 1)
    assert cmos.read(0) == 0x10
    cmos.advance(1)
    assert cmos.read(0) == 0x11


def test_reads_during_set_return_bytes_as_written_even_invalid(cmos):
    cmos.write(0x0B, 0x82)
    cmos.write(8, 0x13)
    assert cmos.read(8) == 0x13
    cmos.write(0x0B, 0x02)                              # an invalid date: the clock keeps its time
    assert cmos.read(8) == 0x02 and cmos.read(0) == 0x58


def test_set_clears_uie(cmos):
    cmos.write(0x0B, 0x12)
    assert cmos.read(0x0B) == 0x12
    cmos.write(0x0B, 0x92)
    assert cmos.read(0x0B) == 0x82


def test_writing_a_time_byte_without_set_takes_effect_at_once(cmos):
    cmos.write(2, 0x10)
    assert cmos.time()[5:] == (0x23, 0x10, 0x58)
    cmos.advance(2 * NS)
    assert cmos.time()[5:] == (0x23, 0x11, 0x00)


def test_day_of_week_keeps_ticking_from_what_was_set(cmos):
    cmos.write(6, 0x01)                                 # the guest insists Thursday is Sunday
    assert cmos.read(6) == 0x01
    cmos.advance(2 * NS)
    assert cmos.read(6) == 0x02
    cmos.write(7, 0x05)                                 # a date change doesn't recompute it
    assert cmos.read(6) == 0x02


def test_format_change_reencodes_the_time(cmos):
    cmos.write(0x0B, 0x00)
    assert cmos.read(4) == 0x91
    cmos.write(0x0B, 0x04)
    assert cmos.read(4) == 0x8B


# -- registers C and D, index port, plain CMOS -----------------------------------------------

def test_c_and_d_are_read_only(cmos):
    cmos.write(0x0C, 0xFF)
    cmos.write(0x0D, 0x00)
    assert cmos.read(0x0D) == 0x80
    cmos.advance(5 * NS)
    assert cmos.read(0x0C) == 0x70                      # PF, UF, AF (00:00:00 passed) without IRQF
    assert cmos.read(0x0C) == 0x00                      # read clears
    assert cmos.irqs == []


def test_index_port_nmi_bit_and_plain_bytes(cmos):
    cmos.bus.pio_write(0x70, 1, 0xC0)
    assert cmos.rtc.nmi_masked and cmos.rtc.index == 0x40
    cmos.bus.pio_write(0x71, 1, 0x5A)
    cmos.write(0x40, 0x5A)
    assert cmos.read(0x40) == 0x5A and not cmos.rtc.nmi_masked
    assert cmos.bus.pio_read(0x70, 1) == 0xFF           # the index register is write-only
    cmos.write(0x7F, 0x11)
    assert cmos.read(0x7F) == 0x11


def test_alarm_bytes_are_plain_registers(cmos):
    cmos.write(1, 0x45)
    cmos.write(3, 0xC0)
    assert (cmos.read(1), cmos.read(3)) == (0x45, 0xC0)


# -- memory size bytes -------------------------------------------------------------------------

def memory_bytes(memory, **kw):
    cmos = Cmos(memory=memory, **kw).rtc.cmos
    word = lambda i: cmos[i] | cmos[i + 1] << 8                                    # noqa: E731
    return word(0x15), word(0x17), word(0x30), word(0x34), cmos[0x5B] | cmos[0x5C] << 8 | cmos[0x5D] << 16


@pytest.mark.parametrize("memory,expected", [
    (512 << 10, (512, 0, 0, 0, 0)),
    (1 * MIB, (640, 0, 0, 0, 0)),
    (16 * MIB, (640, 15 * 1024, 15 * 1024, 0, 0)),
    (64 * MIB, (640, 63 * 1024, 63 * 1024, 48 * 16, 0)),
    (1 * GIB, (640, 0xFFFF, 0xFFFF, (1024 - 16) * 16, 0)),
    (4 * GIB, (640, 0xFFFF, 0xFFFF, 0xFF00, 0)),
    (8 * GIB, (640, 0xFFFF, 0xFFFF, 0xFF00, 0x10000)),
])
def test_memory_size_bytes(memory, expected):
    assert memory_bytes(memory) == expected


def test_memory_split_around_a_hole():
    assert memory_bytes(4 * GIB, below_4g=3 * GIB) == (640, 0xFFFF, 0xFFFF, 0xBF00, 0x4000)


@pytest.mark.parametrize("memory", [32 * MIB, 100 * MIB, 3 * GIB + 64 * MIB])
def test_seabios_reads_back_the_ram_size(memory):
    cmos = Cmos(memory=memory).rtc.cmos
    assert ((cmos[0x34] << 16 | cmos[0x35] << 24) + 16 * MIB) == memory


def test_checksum_covers_0x10_to_0x2d(cmos):
    c = cmos.rtc.cmos
    assert c[0x2E] << 8 | c[0x2F] == sum(c[0x10:0x2E])


# -- interrupts --------------------------------------------------------------------------------

def test_periodic_interrupt_on_irq8(cmos):
    start = cmos.clock.now
    cmos.write(0x0A, 0x26)                              # 1024 Hz
    cmos.write(0x0B, 0x42)
    deadline = cmos.rtc.next_deadline_ns()
    assert 0 < deadline - start <= -(-NS // 1024)
    cmos.clock.now = deadline - 1
    cmos.rtc.update()
    assert cmos.irqs == []
    cmos.clock.now = deadline
    cmos.rtc.update()
    assert cmos.irqs == [1]
    assert cmos.rtc.next_deadline_ns() is None          # nothing more until C is read
    assert cmos.read(0x0C) == 0xC0
    assert cmos.irqs == [1, 0]
    assert cmos.rtc.next_deadline_ns() - deadline in (NS // 1024, NS // 1024 + 1)


def test_periodic_interrupts_coalesce(cmos):
    cmos.write(0x0A, 0x23)                              # 8192 Hz
    cmos.write(0x0B, 0x42)
    cmos.advance(NS)
    cmos.rtc.update()
    assert cmos.irqs == [1]
    assert cmos.read(0x0C) == 0xD0                      # one PF (and the update flag)


def test_rates():
    from pykvm.devices.rtc import periodic_rate
    assert [periodic_rate(rs) for rs in range(16)] == [0, 256, 128, 8192, 4096, 2048, 1024, 512, 256, 128,
                                                       64, 32, 16, 8, 4, 2]


def test_update_ended_interrupt_each_second(cmos):
    cmos.write(0x0B, 0x12)
    assert cmos.rtc.next_deadline_ns() == wall(2024, 2, 29, 23, 59, 59)
    cmos.clock.now = wall(2024, 2, 29, 23, 59, 59)
    cmos.rtc.update()
    assert cmos.irqs == [1]
    assert cmos.read(0x0C) == 0x90 | 0x40               # UF, IRQF; PF set too (RS = 1024 Hz)
    assert cmos.rtc.next_deadline_ns() == wall(2024, 3, 1)


def test_no_update_interrupts_while_set(cmos):
    cmos.write(0x0B, 0x82)
    cmos.write(0x0B, 0x92)                              # UIE is cleared by SET anyway
    cmos.advance(3 * NS)
    assert cmos.read(0x0C) & 0x10 == 0


def test_alarm_interrupt(cmos):
    cmos.write(5, 0x00)
    cmos.write(3, 0x00)
    cmos.write(1, 0x05)                                 # 00:00:05
    cmos.write(0x0B, 0x22)
    assert cmos.rtc.next_deadline_ns() == wall(2024, 3, 1, 0, 0, 5)
    cmos.clock.now = wall(2024, 3, 1, 0, 0, 4)
    cmos.rtc.update()
    assert cmos.irqs == []
    assert cmos.read(0x0C) & 0x20 == 0
    cmos.clock.now = wall(2024, 3, 1, 0, 0, 5)
    cmos.rtc.update()
    assert cmos.irqs == [1]
    assert cmos.read(0x0C) & 0xA0 == 0xA0


def test_alarm_dont_care_bytes_match_every_second(cmos):
    for i in (1, 3, 5):
        cmos.write(i, 0xFF)
    cmos.write(0x0B, 0x22)
    assert cmos.rtc.next_deadline_ns() == wall(2024, 2, 29, 23, 59, 59)


def test_alarm_in_12_hour_binary_mode():
    c = Cmos(now=wall(2024, 5, 1, 13, 59, 0))
    c.write(0x0B, 0x04)                                 # binary, 12-hour
    c.write(5, 0x82)                                    # 2 PM
    c.write(3, 0)
    c.write(1, 0)
    c.write(0x0B, 0x24)
    assert c.rtc.next_deadline_ns() == wall(2024, 5, 1, 14, 0, 0)


def test_alarm_next_day_and_impossible_alarm(cmos):
    cmos.write(5, 0x23)
    cmos.write(3, 0x59)
    cmos.write(1, 0x57)                                 # just passed: tomorrow
    cmos.write(0x0B, 0x22)
    assert cmos.rtc.next_deadline_ns() == wall(2024, 3, 1, 23, 59, 57)
    cmos.write(1, 0x75)                                 # 75 seconds never comes
    assert cmos.rtc.next_deadline_ns() is None


def test_enabling_an_interrupt_whose_flag_is_set_raises_irq8_at_once(cmos):
    cmos.advance(NS)
    cmos.write(0x0B, 0x42)
    assert cmos.irqs == [1]


def test_setting_the_time_does_not_fake_updates(cmos):
    cmos.read(0x0C)
    cmos.write(0x0A, 0x20)                              # no periodic interrupts
    cmos.write(9, 0x30)                                 # six years ahead
    assert cmos.read(0x0C) == 0


def test_without_an_irq_line():
    clock = Clock(wall(2024, 1, 1))
    rtc = Rtc(1 * MIB, clock=clock, time_of_day=clock)
    rtc.write(0, 1, 0x0B)
    rtc.write(1, 1, 0x42)
    rtc.clock.now += NS
    rtc.update()
    rtc.write(0, 1, 0x0C)
    assert rtc.read(1, 1) & 0xC0 == 0xC0


def test_the_clock_runs_on_one_time_base_and_starts_at_the_time_of_day():
    mono = Clock(5 * NS)
    rtc = Rtc(1 * MIB, clock=mono, time_of_day=lambda: wall(2030, 7, 4, 12, 0, 0))
    rtc.write(0, 1, 4)
    assert rtc.read(1, 1) == 0x12
    mono.now += 3600 * NS
    assert rtc.read(1, 1) == 0x13
    rtc.write(0, 1, 0x0C)
    rtc.read(1, 1)                                      # clear the hour's flags
    rtc.write(0, 1, 0x0B)
    rtc.write(1, 1, 0x12)                               # UIE: the deadline is on the monotonic clock
    assert rtc.next_deadline_ns() == mono.now + NS


def test_default_clocks_give_the_host_date():
    import time
    rtc = Rtc(1 * MIB)
    rtc.write(0, 1, 0x09)
    year = rtc.read(1, 1)
    assert year in {int(str(time.gmtime().tm_year % 100), 16), int(str((time.gmtime().tm_year - 1) % 100), 16)}
