"""The 8254 PIT against its datasheet, on a fake host clock counted in PIT input clocks."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pykvm.devices.bus import Bus
from pykvm.devices.pit import FREQUENCY, Pit


class FakeClock:
    def __init__(self, start=123_456_789):
        self.now = start

    def __call__(self):
        return self.now


class Rig:
    """A PIT whose clock is set in input-clock edges; ``at(k)`` is the moment edge k happens."""

    def __init__(self):
        self.clock = FakeClock()
        self.irqs = []
        self.pit = Pit(irq=self.irqs.append, clock=self.clock)
        self.bus = Bus()
        self.pit.attach(self.bus)

    def at(self, k):
        self.clock.now = self.pit.edge_time_ns(k)
        return self

    def out(self, port, value):
        self.bus.pio_write(port, 1, value)

    def inb(self, port):
        return self.bus.pio_read(port, 1)

    def program(self, channel, mode, access=3, bcd=0, count=None):
        self.out(0x43, channel << 6 | access << 4 | mode << 1 | bcd)
        if count is not None:
            self.write_count(channel, count, access)

    def write_count(self, channel, count, access=3):
        if access in (1, 3):
            self.out(0x40 + channel, count & 0xFF)
        if access in (2, 3):
            self.out(0x40 + channel, count >> 8 & 0xFF)

    def count(self, channel):
        """Latch and read a word count, as guests do."""
        self.out(0x43, channel << 6)
        return self.inb(0x40 + channel) | self.inb(0x40 + channel) << 8

    def status(self, channel):
        self.out(0x43, 0xE0 | 2 << channel)
        return self.inb(0x40 + channel)

    def outs(self, channel, clocks):
        return [int(self.at(k).pit.out(channel)) for k in clocks]

    def counts(self, channel, clocks):
        return [self.at(k).count(channel) for k in clocks]

    def trace(self, channel, clocks):
        """(count, OUT) at each clock; time only moves forward, as on the host."""
        return [(self.at(k).count(channel), int(self.pit.out(channel))) for k in clocks]


@pytest.fixture
def rig():
    return Rig()


# -- mode 0 ------------------------------------------------------------------------------------

def test_mode0_out_rises_n_plus_1_clocks_after_the_write(rig):
    rig.at(0).program(0, 0, count=10)
    assert rig.outs(0, [0]) == [0]
    assert rig.trace(0, [1, 5, 10, 11, 12]) == [(10, 0), (6, 0), (1, 0), (0, 1), (0xFFFF, 1)]
    assert rig.outs(0, [70000]) == [1]


def test_mode0_irq0_and_deadline(rig):
    rig.at(0).program(0, 0, count=10)
    assert rig.irqs == [0]                              # programming mode 0 drops OUT
    assert rig.pit.next_deadline_ns() == rig.pit.edge_time_ns(11)
    rig.at(10).pit.update()
    assert rig.irqs == [0]
    rig.at(11).pit.update()
    assert rig.irqs == [0, 1]
    assert rig.pit.next_deadline_ns() is None           # mode 0 fires once


def test_mode0_first_byte_stops_counting_and_drops_out(rig):
    rig.at(0).program(0, 0, count=5)
    assert rig.outs(0, [6]) == [1]
    rig.at(20).out(0x40, 50)                            # LSB of a new count
    assert rig.outs(0, [20, 30]) == [0, 0]
    assert rig.at(30).count(0) == rig.at(20).count(0)   # held
    rig.at(40).out(0x40, 0)                             # MSB: loaded on the next clock
    assert rig.counts(0, [41, 50]) == [50, 41]
    assert rig.outs(0, [90, 91]) == [0, 1]


def test_mode0_new_count_while_counting_restarts(rig):
    rig.at(0).program(0, 0, count=100)
    rig.at(10).write_count(0, 5)
    assert rig.outs(0, [15, 16]) == [0, 1]


def test_mode0_count_zero_means_65536(rig):
    rig.at(0).program(0, 0, count=0)
    assert rig.counts(0, [1, 2]) == [0, 0xFFFF]
    assert rig.outs(0, [65536, 65537]) == [0, 1]


def test_mode0_gate_low_holds_a_written_count_and_pauses(rig):
    rig.at(0).program(2, 0, count=10)                   # channel 2's gate starts low
    assert rig.counts(2, [5, 50]) == [10, 10]
    assert rig.outs(2, [100]) == [0]
    rig.at(100).pit.set_gate(2, True)
    assert rig.outs(2, [109, 110]) == [0, 1]            # N clocks after the gate, no load clock


def test_mode0_gate_pauses_mid_count(rig):
    rig.pit.set_gate(2, True)
    rig.at(0).program(2, 0, count=10)
    rig.at(4).pit.set_gate(2, False)                    # counted 10, 9, 8, 7
    assert rig.counts(2, [4, 500]) == [7, 7]
    rig.at(500).pit.set_gate(2, True)
    assert rig.counts(2, [501]) == [6]
    assert rig.outs(2, [506, 507]) == [0, 1]


# -- mode 1 ------------------------------------------------------------------------------------

def test_mode1_one_shot_on_the_gate_rising_edge_and_retrigger(rig):
    rig.at(0).program(2, 1, count=5)
    assert rig.outs(2, [0, 100]) == [1, 1]              # armed, waiting for a trigger
    assert rig.at(100).status(2) & 0x40                 # null count: not loaded yet
    rig.pit.set_gate(2, True)
    assert rig.outs(2, [100]) == [1]
    assert rig.trace(2, [101, 103, 105, 106]) == [(5, 0), (3, 0), (1, 0), (0, 1)]
    assert not rig.status(2) & 0x40
    rig.at(200).pit.set_gate(2, False)
    rig.at(202).pit.set_gate(2, True)
    assert rig.outs(2, [203]) == [0]
    rig.at(204).pit.set_gate(2, False)                  # retrigger mid-pulse restarts it
    rig.at(204).pit.set_gate(2, True)
    assert rig.outs(2, [209, 210]) == [0, 1]


def test_mode1_on_channel0_never_triggers(rig):
    rig.at(0).program(0, 1, count=5)
    assert rig.outs(0, [1000]) == [1]
    assert rig.pit.next_deadline_ns() is None


# -- mode 2 ------------------------------------------------------------------------------------

def test_mode2_rate_generator_waveform_and_counts(rig):
    rig.at(0).program(0, 2, count=4)
    assert rig.outs(0, [0]) == [1]
    assert rig.trace(0, range(1, 14)) == [(4, 1), (3, 1), (2, 1), (1, 0), (4, 1), (3, 1), (2, 1), (1, 0),
                                          (4, 1), (3, 1), (2, 1), (1, 0), (4, 1)]


def test_mode2_irq_edges_and_deadlines(rig):
    rig.at(0).program(0, 2, count=4)
    assert rig.irqs == []                               # OUT high already: nothing to say
    assert rig.pit.next_deadline_ns() == rig.pit.edge_time_ns(5)
    rig.at(4).pit.update()
    assert rig.irqs == []
    rig.at(5).pit.update()
    assert rig.irqs == [0, 1]                           # a pulse: the PIC latches the edge
    assert rig.pit.next_deadline_ns() == rig.pit.edge_time_ns(9)
    rig.at(9).pit.update()
    assert rig.irqs == [0, 1, 0, 1]


def test_mode2_new_count_takes_effect_next_period(rig):
    rig.at(0).program(0, 2, count=4)
    rig.at(2).write_count(0, 6)
    assert rig.at(3).status(0) & 0x40                   # null count until the reload
    assert rig.outs(0, [4, 5]) == [0, 1]
    assert not rig.at(5).status(0) & 0x40
    assert rig.outs(0, [10]) == [0]
    assert rig.pit.next_deadline_ns() == rig.pit.edge_time_ns(11)
    assert rig.outs(0, [11]) == [1]


def test_mode2_gate_low_forces_out_high_and_rising_reloads(rig):
    rig.pit.set_gate(2, True)
    rig.at(0).program(2, 2, count=4)
    assert rig.outs(2, [4]) == [0]
    rig.at(4).pit.set_gate(2, False)
    assert rig.outs(2, [4, 8, 100]) == [1, 1, 1]
    rig.at(100).pit.set_gate(2, True)
    assert rig.trace(2, [101, 103, 104, 105]) == [(4, 1), (2, 1), (1, 0), (4, 1)]


def test_modes_6_and_7_alias_2_and_3(rig):
    rig.at(0).program(0, 6, count=4)
    assert rig.outs(0, [4, 5]) == [0, 1]
    assert rig.at(5).status(0) & 0x0E == 0x0C           # status shows the bits as written
    rig.at(10).program(1, 7, count=4)
    assert rig.outs(1, [12, 13]) == [1, 0]


# -- mode 3 ------------------------------------------------------------------------------------

def test_mode3_even_count_square_wave(rig):
    rig.at(0).program(0, 3, count=6)
    assert rig.trace(0, range(1, 8)) == [(6, 1), (4, 1), (2, 1), (6, 0), (4, 0), (2, 0), (6, 1)]
    assert rig.outs(0, range(8, 14)) == [1, 1, 0, 0, 0, 1]


def test_mode3_odd_count_is_high_one_clock_longer(rig):
    rig.at(0).program(0, 3, count=5)
    assert rig.trace(0, range(1, 7)) == [(4, 1), (2, 1), (0, 1), (4, 0), (2, 0), (4, 1)]
    assert rig.outs(0, range(7, 12)) == [1, 1, 0, 0, 1]


def test_mode3_bios_tick_is_18_2_hz(rig):
    rig.at(0).program(0, 3, count=0)
    period_ns = rig.pit.next_deadline_ns() - rig.pit.edge_time_ns(1)
    assert period_ns == pytest.approx(65536 / FREQUENCY * 1e9, abs=1)
    assert rig.counts(0, [1, 2]) == [0, 0xFFFE]


def test_mode3_new_count_waits_for_the_half_cycle(rig):
    rig.at(0).program(0, 3, count=8)                    # high clocks 1-4, low 5-8
    rig.at(2).write_count(0, 4)                         # takes over at the falling edge (5)
    assert rig.outs(0, range(2, 5)) == [1, 1, 1]
    assert rig.trace(0, range(5, 12)) == [(4, 0), (2, 0), (4, 1), (2, 1), (4, 0), (2, 0), (4, 1)]


def test_mode3_irqs_at_each_period(rig):
    rig.at(0).program(0, 3, count=6)
    rig.at(7).pit.update()
    rig.at(9).pit.update()                              # not due: the line isn't touched
    assert rig.irqs == [0, 1]
    rig.at(10).pit.update()
    rig.at(13).pit.update()
    assert rig.irqs == [0, 1, 0, 1]


# -- modes 4 and 5 -----------------------------------------------------------------------------

def test_mode4_strobe_n_plus_1_clocks_after_the_write(rig):
    rig.at(0).program(0, 4, count=3)
    assert rig.outs(0, range(0, 8)) == [1, 1, 1, 1, 0, 1, 1, 1]
    assert rig.pit.next_deadline_ns() == rig.pit.edge_time_ns(5)
    rig.at(5).pit.update()
    assert rig.irqs == [0, 1]
    assert rig.pit.next_deadline_ns() is None


def test_mode5_strobe_after_the_gate_trigger(rig):
    rig.at(0).program(2, 5, count=3)
    assert rig.outs(2, [50]) == [1]
    rig.at(50).pit.set_gate(2, True)
    assert rig.outs(2, [53, 54, 55]) == [1, 0, 1]


# -- latches, read-back, access modes ----------------------------------------------------------

def test_latched_count_is_held_until_read_and_second_latch_ignored(rig):
    rig.at(0).program(0, 2, count=1000)
    rig.at(11).out(0x43, 0x00)                          # latch: 990
    rig.at(21).out(0x43, 0x00)                          # ignored: not read yet
    rig.at(500)
    assert rig.inb(0x40) | rig.inb(0x40) << 8 == 990
    assert rig.inb(0x40) | rig.inb(0x40) << 8 == 501    # released: live again


def test_reprogramming_releases_a_latch(rig):
    rig.at(0).program(0, 2, count=1000)
    rig.at(10).out(0x43, 0x00)
    rig.at(20).program(0, 2, count=300)
    assert rig.at(21).count(0) == 300


def test_readback_status_then_count(rig):
    rig.at(0).program(0, 0, count=100)
    rig.at(0).out(0x43, 0xC2)                           # read-back count and status of channel 0
    rig.at(51)
    assert rig.inb(0x40) == 0x40 | 0x30 | 0x00          # OUT low, null count (latched at 0), word, mode 0
    assert rig.inb(0x40) | rig.inb(0x40) << 8 == 0      # count latched before the load


def test_readback_status_bits(rig):
    rig.at(0).program(1, 3, access=1, bcd=1, count=0x50)
    assert rig.at(0).status(1) == 0x80 | 0x40 | 0x17    # OUT high, null count, LSB, mode 3, BCD
    assert rig.at(1).status(1) == 0x80 | 0x17
    rig.at(10).program(0, 0, count=3)
    assert rig.at(13).status(0) == 0x30
    assert rig.at(14).status(0) == 0x80 | 0x30


def test_readback_of_several_channels_and_latch_only(rig):
    rig.at(0).program(0, 2, count=100)
    rig.program(1, 2, count=200)
    rig.program(2, 0, count=300)
    rig.at(11).out(0x43, 0xDC)                          # count only (status bit set), channels 1, 2
    rig.at(99)
    assert rig.inb(0x41) | rig.inb(0x41) << 8 == 190
    assert rig.inb(0x42) | rig.inb(0x42) << 8 == 300    # gate low: held
    assert rig.inb(0x40) | rig.inb(0x40) << 8 == 2      # not latched: live (d = 98)


def test_readback_status_latch_is_not_relatched(rig):
    rig.at(0).program(0, 0, count=5)
    rig.at(0).out(0x43, 0xE2)
    rig.at(10).out(0x43, 0xE2)                          # ignored until the first is read
    assert rig.inb(0x40) & 0x80 == 0
    assert rig.at(10).status(0) & 0x80


def test_lsb_and_msb_only_access(rig):
    rig.at(0).program(0, 2, access=1, count=0x80)
    assert rig.at(1).inb(0x40) == 0x80
    assert rig.at(2).inb(0x40) == 0x7F                  # every read is the LSB
    rig.at(10).program(0, 2, access=2, count=0x0200)    # MSB only: count 0x200
    assert rig.at(11).inb(0x40) == 0x02
    rig.at(11).out(0x43, 0x00)
    assert rig.at(20).inb(0x40) == 0x02                 # one read releases an MSB latch
    assert rig.at(100).inb(0x40) == 0x01                # 0x200 - 89 = 0x1A7


def test_read_and_write_flip_flops_are_independent(rig):
    rig.at(0).program(0, 0, count=0x1234)
    rig.at(1)
    assert rig.inb(0x40) == 0x34                        # read LSB
    rig.out(0x40, 0x78)                                 # write LSB (stops mode 0)
    assert rig.inb(0x40) == 0x12                        # read MSB
    rig.out(0x40, 0x56)                                 # write MSB
    assert rig.at(2).count(0) == 0x5678


def test_bcd_counting(rig):
    rig.at(0).program(0, 2, bcd=1, count=0x1000)        # 1000 decimal
    assert rig.counts(0, [1, 2, 11]) == [0x1000, 0x0999, 0x0990]
    assert rig.outs(0, [1000, 1001]) == [0, 1]
    rig.at(2000).program(0, 0, bcd=1, count=0)          # 0 is 10000 in BCD
    assert rig.counts(0, [2001, 2002]) == [0x0000, 0x9999]
    assert rig.outs(0, [12000, 12001]) == [0, 1]


def test_control_register_reads_float(rig):
    assert rig.inb(0x43) == 0xFF


def test_unprogrammed_pit_never_interrupts(rig):
    assert rig.pit.next_deadline_ns() is None
    rig.at(10_000_000).pit.update()
    assert rig.irqs == []


# -- IRQ 0 bookkeeping -------------------------------------------------------------------------

def test_missed_periods_coalesce_into_one_tick(rig):
    rig.at(0).program(0, 2, count=100)
    rig.at(100_050).pit.update()                        # 1000 periods late
    assert rig.irqs == [0, 1]
    assert rig.pit.ticks_coalesced == 999
    assert rig.pit.next_deadline_ns() == rig.pit.edge_time_ns(100_101)


def test_update_before_the_deadline_costs_nothing(rig):
    rig.at(0).program(0, 2, count=100)
    for k in range(1, 100):
        rig.at(k).pit.update()
    assert rig.irqs == []


def test_reprogramming_that_raises_out_raises_irq0(rig):
    rig.at(0).program(0, 0, count=1000)                 # OUT low
    rig.at(10).program(0, 2)                            # mode 2: OUT high at once
    assert rig.irqs == [0, 1]


def test_update_reads_the_host_clock_itself(rig):
    rig.at(0).program(0, 2, count=10)
    rig.at(11)
    rig.pit.update()
    assert rig.irqs == [0, 1]


def test_irq_without_a_line_attached():
    clock = FakeClock()
    pit = Pit(clock=clock)
    pit.write(3, 1, 0x34)
    pit.write(0, 1, 10)
    pit.write(0, 1, 0)
    clock.now += 10**9
    pit.update()
    assert pit.ticks_coalesced > 0


# -- the closed form against a clock-by-clock model of the datasheet -------------------------

def step_model(mode, n, rewrite_at, new_n, clocks):
    """(count, OUT) after each input-clock edge 1..clocks, simulated one edge at a time.

    The count is written just before edge 1 and ``new_n`` just before edge ``rewrite_at + 1``.
    """
    cr, ce, out, load, extra, trace = n, 0, 1, True, False, []
    for edge in range(1, clocks + 1):
        if edge == rewrite_at + 1:
            cr = new_n
        if load:
            ce, load = (cr if mode == 2 else cr & ~1), False
            half = cr
        elif mode == 2:
            ce = cr if ce == 1 else ce - 1
        elif extra:                          # mode 3, odd count: one clock after expiry
            out, ce, extra, half = 0, cr & ~1, False, cr
        else:
            ce -= 2
            if ce <= 0:
                if half & 1 and out:
                    ce, extra = 0, True
                else:
                    out, ce, half = 1 - out, cr & ~1, cr
        trace.append((ce, int(ce != 1) if mode == 2 else out))
    return trace


@settings(max_examples=150, deadline=None)
@given(mode=st.sampled_from([2, 3]), n=st.integers(2, 23), rewrite_at=st.integers(1, 60),
       new_n=st.integers(2, 23), step=st.integers(1, 9))
def test_periodic_modes_match_a_clock_by_clock_model(mode, n, rewrite_at, new_n, step):
    rig = Rig()
    clocks = 120
    expected = step_model(mode, n, rewrite_at, new_n, clocks)
    rig.at(0).program(0, mode, count=n)
    got = []
    for edge in range(1, clocks + 1):
        if edge == rewrite_at + 1:
            rig.at(rewrite_at).write_count(0, new_n)
        got.append((rig.at(edge).count(0), int(rig.pit.out(0))))
    assert got == expected
    # IRQ 0: every rising edge of OUT is delivered or counted as coalesced, updating every ``step``.
    rig2 = Rig()
    rig2.at(0).program(0, mode, count=n)
    for edge in range(1, clocks + 1):
        if edge == rewrite_at + 1:
            rig2.at(rewrite_at).write_count(0, new_n)
        if edge % step == 0:
            rig2.at(edge).pit.update()
    rig2.at(clocks).pit.update()
    outs = [1] + [o for _, o in expected]
    rises = sum(1 for a, b in zip(outs, outs[1:]) if b > a)
    assert rig2.irqs.count(1) + rig2.pit.ticks_coalesced == rises


def test_null_count_until_the_count_reaches_the_counting_element(rig):
    rig.at(0).program(0, 2)
    assert rig.at(0).status(0) & 0x40                   # programmed, no count yet
    rig.at(5).write_count(0, 100)
    assert rig.status(0) & 0x40                         # written, loads at the next clock
    assert not rig.at(6).status(0) & 0x40


def test_mode4_gate_pauses_the_strobe_count(rig):
    rig.pit.set_gate(2, True)
    rig.at(0).program(2, 4, count=10)
    rig.at(5).pit.set_gate(2, False)                    # loaded 10 at 1, counted down to 6 by 5
    assert rig.outs(2, [100]) == [1]
    rig.at(100).pit.set_gate(2, True)                   # six more clocks to 0
    assert rig.outs(2, [105, 106, 107]) == [1, 0, 1]


def test_mode3_gate_low_holds_out_high_and_rising_reloads(rig):
    rig.pit.set_gate(2, True)
    rig.at(0).program(2, 3, count=10)
    assert rig.outs(2, [6]) == [0]                      # low half
    rig.at(6).pit.set_gate(2, False)
    assert rig.outs(2, [6, 50]) == [1, 1]
    rig.at(50).pit.set_gate(2, True)
    assert rig.trace(2, [51, 55, 56, 60, 61]) == [(10, 1), (2, 1), (10, 0), (2, 0), (10, 1)]


def test_count_written_in_two_bytes_in_other_modes_keeps_counting(rig):
    rig.at(0).program(0, 2, count=100)
    rig.at(10).out(0x40, 50)                            # LSB only so far: mode 2 carries on
    assert rig.outs(0, [100, 101]) == [0, 1]
    rig.at(110).out(0x40, 0)                            # MSB: 50 takes over after this period
    assert rig.outs(0, [200, 201, 250, 251]) == [0, 1, 0, 1]
