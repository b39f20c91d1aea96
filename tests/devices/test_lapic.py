"""The local APIC (pykvm/devices/lapic.py) at its register page, with a controlled clock.

The behaviour is the SDM's (vol. 3, chapter 11) where it is defined and KVM's where KVM
chooses (the reset value of LINT0, the writable bits of each LVT entry, what happens to an
access that is not 32 bits wide). The whole device also runs kvm-unit-tests' own start-up
and APIC checks in tests/test_peer_suites.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pykvm.devices import lapic as L
from pykvm.devices.bus import Bus
from pykvm.platform import PcPlatform
from pykvm.x86.memmap import pc_memory_map


class Clock:
    def __init__(self):
        self.now = 1_000_000_000

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def apic(clock):
    a = L.LocalApic(clock=clock)
    a.cpu = SimpleNamespace(apic_base=0xFEE00900, cr8=0)
    a.write(L.SVR, 4, 0x1FF)                      # software-enabled, spurious vector 0xFF
    return a


def ipi(apic, vector, shorthand=L.SELF, mode=L.MODE_FIXED, dest=None, logical=False):
    if dest is not None:
        apic.write(L.ICR_HIGH, 4, dest << 24)
    apic.write(L.ICR_LOW, 4, shorthand << 18 | logical << 11 | mode << 8 | vector)


# -- the register page ------------------------------------------------------------------------------
def test_reset_values_are_kvms():
    a = L.LocalApic(apic_id=3)
    assert a.read(L.VER, 4) == 0x00050014                 # integrated APIC, six LVT entries
    assert a.read(L.ID, 4) == 3 << 24
    assert a.read(L.SVR, 4) == 0xFF and not a.enabled       # software-disabled
    assert a.read(L.DFR, 4) == 0xFFFFFFFF
    assert a.read(L.LVT_LINT0, 4) == 0x700                  # ExtINT, unmasked: the PIC gets through
    assert all(a.read(o, 4) == L.MASKED for o in (L.LVT_TIMER, L.LVT_THERMAL, L.LVT_PERF, L.LVT_LINT1,
                                                   L.LVT_ERROR))
    assert a.accepts_pic and not a.pending


def test_narrow_reads_inside_a_register_and_other_writes_ignored(apic):
    assert apic.read(L.VER + 2, 1) == 0x05 and apic.read(L.VER, 2) == 0x0014
    assert apic.read(L.VER + 2, 4) == 0                     # crosses the register's end
    apic.write(L.TPR, 1, 0x50)
    apic.write(L.TPR + 4, 4, 0x50)
    assert apic.read(L.TPR, 4) == 0


def test_read_only_and_writable_bits(apic):
    apic.write(L.VER, 4, 0)
    apic.write(L.LDR, 4, 0xFFFFFFFF)
    apic.write(L.DFR, 4, 0)
    apic.write(L.TIMER_DIVIDE, 4, 0xFFFFFFFF)
    apic.write(L.LVT_TIMER, 4, 0xFFFFFFFF)                  # no TSC-deadline mode
    apic.write(L.LVT_ERROR, 4, 0xFFFFFFFF)
    assert apic.read(L.VER, 4) == 0x00050014
    assert apic.read(L.LDR, 4) == 0xFF000000
    assert apic.read(L.DFR, 4) == 0x0FFFFFFF
    assert apic.read(L.TIMER_DIVIDE, 4) == 0xB
    assert apic.read(L.LVT_TIMER, 4) == 0x300FF
    assert apic.read(L.LVT_ERROR, 4) == 0x100FF


def test_software_disabling_masks_the_lvt_and_keeps_it_masked(apic):
    apic.write(L.LVT_TIMER, 4, 0x40)
    apic.write(L.SVR, 4, 0xFF)
    assert apic.read(L.LVT_TIMER, 4) == L.MASKED | 0x40
    apic.write(L.LVT_TIMER, 4, 0x41)
    assert apic.read(L.LVT_TIMER, 4) == L.MASKED | 0x41
    assert not apic.accepts_pic                             # LINT0 masked too
    ipi(apic, 0x40)
    assert not apic.pending and apic.irr == 0               # nothing accepted while disabled


# -- fixed interrupts, priorities, EOI ---------------------------------------------------------------
def test_self_ipi_is_accepted_delivered_and_retired(apic):
    ipi(apic, 0x41)
    assert apic.read(L.IRR + 0x20, 4) == 1 << 1             # vector 0x41: IRR word 2, bit 1
    assert apic.pending and apic.read(L.ICR_LOW, 4) & 1 << 12 == 0   # delivery status: idle
    assert apic.acknowledge() == 0x41
    assert apic.read(L.ISR + 0x20, 4) == 1 << 1 and apic.read(L.IRR + 0x20, 4) == 0
    assert apic.read(L.PPR, 4) == 0x40
    apic.write(L.EOI, 4, 0)
    assert apic.isr == 0 and apic.read(L.PPR, 4) == 0 and apic.acknowledge() is None


def test_priority_classes_hold_back_lower_vectors(apic):
    ipi(apic, 0x35)
    assert apic.acknowledge() == 0x35
    ipi(apic, 0x3A)                                          # same class as the one in service
    assert not apic.pending
    ipi(apic, 0x52)                                          # a higher class preempts
    assert apic.acknowledge() == 0x52
    apic.write(L.EOI, 4, 0)                                  # retires 0x52, the highest in service
    assert not apic.pending
    apic.write(L.EOI, 4, 0)                                  # retires 0x35
    assert apic.acknowledge() == 0x3A


def test_tpr_holds_back_its_class_and_below_and_is_cr8(apic):
    apic.write(L.TPR, 4, 0x5F)
    assert apic.cpu.cr8 == 5 and apic.read(L.PPR, 4) == 0x5F
    ipi(apic, 0x50)
    assert not apic.pending
    ipi(apic, 0x60)
    assert apic.acknowledge() == 0x60
    apic.write(L.EOI, 4, 0)
    apic.cpu.cr8 = 4                                          # MOV CR8: TPR[7:4], TPR[3:0] cleared
    assert apic.read(L.TPR, 4) == 0x40
    assert apic.acknowledge() == 0x50


def test_illegal_vectors_set_esr_when_it_is_written(apic):
    ipi(apic, 0x05)
    assert apic.read(L.ESR, 4) == 0                          # latched by the next ESR write
    apic.write(L.ESR, 4, 0)
    assert apic.read(L.ESR, 4) == L.ESR_SEND_ILLEGAL_VECTOR and not apic.pending
    apic.write(L.ESR, 4, 0)
    assert apic.read(L.ESR, 4) == 0


# -- destinations ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dest,logical,ldr,dfr,reached", [
    (0x00, False, 0, 0xFFFFFFFF, True),          # physical: its own ID
    (0x01, False, 0, 0xFFFFFFFF, False),         # another ID: nobody
    (0xFF, False, 0, 0xFFFFFFFF, True),          # broadcast
    (0x06, True, 0x02 << 24, 0xFFFFFFFF, True),  # logical flat: a bit in common
    (0x05, True, 0x02 << 24, 0xFFFFFFFF, False),
    (0x13, True, 0x12 << 24, 0x0FFFFFFF, True),  # logical cluster 1, a member bit in common
    (0x23, True, 0x12 << 24, 0x0FFFFFFF, False),  # another cluster
])
def test_destination_field(apic, dest, logical, ldr, dfr, reached):
    apic.write(L.LDR, 4, ldr)
    apic.write(L.DFR, 4, dfr)
    ipi(apic, 0x40, shorthand=0, dest=dest, logical=logical)
    assert apic.pending == reached


def test_shorthands_and_delivery_modes_a_lone_processor_sees(apic, caplog):
    ipi(apic, 0x40, shorthand=L.ALL_BUT_SELF)
    ipi(apic, 0, shorthand=L.ALL_BUT_SELF, mode=L.MODE_INIT)
    ipi(apic, 0, shorthand=L.ALL_BUT_SELF, mode=L.MODE_STARTUP)
    assert not apic.pending
    ipi(apic, 0x40, shorthand=L.ALL_INCLUDING_SELF, mode=L.MODE_LOWEST)
    assert apic.acknowledge() == 0x40
    nmis = []
    apic.on_nmi = lambda: nmis.append(1)
    ipi(apic, 0, shorthand=L.SELF, mode=L.MODE_NMI)
    ipi(apic, 0, shorthand=0, mode=L.MODE_NMI, dest=0)
    ipi(apic, 0, shorthand=L.ALL_BUT_SELF, mode=L.MODE_NMI)
    assert nmis == [1, 1] and not apic.pending               # not through IRR
    ipi(apic, 0, shorthand=L.SELF, mode=L.MODE_SMI)
    assert "SMI IPI to itself dropped" in caplog.text


# -- hardware enable (IA32_APIC_BASE) ------------------------------------------------------------------
def test_hardware_disabled_page_floats_and_the_pic_gets_through(apic):
    apic.write(L.LVT_LINT0, 4, L.MASKED)
    assert not apic.accepts_pic
    apic.cpu.apic_base = 0xFEE00100                           # EN clear
    assert apic.read(L.VER, 4) == 0xFFFFFFFF
    apic.write(L.TPR, 4, 0x20)
    assert apic.accepts_pic and apic.tpr == 0
    apic.cpu.apic_base = 0xFEE00900
    assert apic.read(L.VER, 4) == 0x00050014 and apic.read(L.LVT_LINT0, 4) == L.MASKED


# -- the timer -------------------------------------------------------------------------------------------
def test_one_shot_timer_counts_down_at_the_divided_bus_clock_and_fires_once(apic, clock):
    apic.write(L.TIMER_DIVIDE, 4, 0x3)                        # divide by 16
    apic.write(L.LVT_TIMER, 4, 0x45)
    apic.write(L.TIMER_INITIAL, 4, 1000)                      # 16 us
    assert apic.next_deadline_ns() == clock.now + 16_000
    clock.now += 8_000
    assert apic.read(L.TIMER_CURRENT, 4) == 500
    apic.update()
    assert not apic.pending
    clock.now += 8_000
    apic.update()
    assert apic.acknowledge() == 0x45
    assert apic.read(L.TIMER_CURRENT, 4) == 0 and apic.next_deadline_ns() is None


@pytest.mark.parametrize("divide,ticks_ns", [(0x0, 2), (0x1, 4), (0x2, 8), (0x8, 32), (0xA, 128), (0xB, 1)])
def test_divide_configuration(apic, clock, divide, ticks_ns):
    apic.write(L.TIMER_DIVIDE, 4, divide)
    apic.write(L.TIMER_INITIAL, 4, 100_000)
    assert apic.next_deadline_ns() - clock.now == 100_000 * ticks_ns


def test_periodic_timer_reloads_with_kvms_minimum_period(apic, clock):
    apic.write(L.TIMER_DIVIDE, 4, 0xB)                        # divide by 1: 1 ns a count
    apic.write(L.LVT_TIMER, 4, L.TIMER_PERIODIC | 0x46)
    apic.write(L.TIMER_INITIAL, 4, 1000)                      # 1 us asked, 200 us given
    start = clock.now
    assert apic.next_deadline_ns() == start + L.MIN_PERIOD_NS
    for n in range(1, 4):
        clock.now = start + n * L.MIN_PERIOD_NS
        apic.update()
        assert apic.acknowledge() == 0x46
        apic.write(L.EOI, 4, 0)
    clock.now += 10 * L.MIN_PERIOD_NS + 5                     # missed periods are not queued up
    apic.update()
    assert apic.acknowledge() == 0x46 and apic.next_deadline_ns() == start + 14 * L.MIN_PERIOD_NS


def test_masked_timer_counts_but_interrupts_nobody(apic, clock):
    apic.write(L.LVT_TIMER, 4, L.MASKED | 0x47)
    apic.write(L.TIMER_INITIAL, 4, 10)
    clock.now += 1_000_000
    apic.update()
    assert not apic.pending and apic.next_deadline_ns() is None


def test_writing_zero_stops_the_timer(apic, clock):
    apic.write(L.LVT_TIMER, 4, 0x48)
    apic.write(L.TIMER_INITIAL, 4, 1000)
    apic.write(L.TIMER_INITIAL, 4, 0)
    clock.now += 1_000_000
    apic.update()
    assert not apic.pending and apic.next_deadline_ns() is None


# -- on the platform: the APIC and the 8259 share INTR -----------------------------------------------
@pytest.fixture
def platform():
    p = PcPlatform(Bus(), pc_memory_map(64 << 20))
    p.lapic.cpu = SimpleNamespace(apic_base=0xFEE00900, cr8=0)
    levels = []
    p.on_intr_change = levels.append
    p.levels = levels
    return p


def test_the_pic_reaches_the_processor_through_lint0_extint(platform):
    platform.pic.set_irq(0, 1)
    assert platform.intr and platform.levels == [True]
    assert platform.acknowledge() == 0x08                     # IRQ 0 at the BIOS's vector base
    assert not platform.intr


def test_a_masked_lint0_keeps_the_pic_out_until_it_is_unmasked(platform):
    lapic = platform.lapic
    lapic.write(L.SVR, 4, 0x1FF)
    lapic.write(L.LVT_LINT0, 4, L.MASKED | 0x700)
    platform.pic.set_irq(0, 1)
    assert not platform.intr
    lapic.write(L.LVT_LINT0, 4, 0x700)
    assert platform.intr and platform.acknowledge() == 0x08


def test_the_apics_own_interrupt_comes_first(platform):
    lapic = platform.lapic
    lapic.write(L.SVR, 4, 0x1FF)
    platform.pic.set_irq(0, 1)
    ipi(lapic, 0x80)
    assert platform.acknowledge() == 0x80
    assert platform.intr and platform.acknowledge() == 0x08


def test_the_page_moves_with_the_apic_base():
    bus = Bus()
    apic = L.LocalApic()
    apic.cpu = SimpleNamespace(apic_base=0xFEE00900, cr8=0)
    apic.attach(bus)
    assert bus.mmio_read(L.BASE_ADDRESS + L.VER, 4) == 0x00050014
    apic.cpu.apic_base = 0xFED40900                           # what a WRMSR IA32_APIC_BASE left
    apic.sync()
    assert bus.mmio_read(0xFED40000 + L.VER, 4) == 0x00050014
    assert bus.mmio_read(L.BASE_ADDRESS + L.VER, 4) == 0xFFFFFFFF      # nothing decodes it now


def test_a_move_onto_another_device_is_refused(caplog):
    bus = Bus()
    bus.mmio.register(0xFED40000, 0x1000, SimpleNamespace(read=lambda o, s: 0x5A, write=lambda o, s, v: None))
    apic = L.LocalApic()
    apic.cpu = SimpleNamespace(apic_base=0xFEE00900, cr8=0)
    apic.attach(bus)
    apic.cpu.apic_base = 0xFED40900
    apic.sync()
    apic.sync()
    assert caplog.text.count("cannot move") == 1
    assert bus.mmio_read(L.BASE_ADDRESS + L.VER, 4) == 0x00050014 and bus.mmio_read(0xFED40000, 4) == 0x5A


def test_an_expired_one_shot_stays_at_zero_when_made_periodic(apic, clock):
    """kvm-unit-tests' apic "TMCCT should stay at zero": the expiry counts even if nobody
    looked at the timer between it and the mode change."""
    apic.write(L.TIMER_DIVIDE, 4, 0xB)
    apic.write(L.LVT_TIMER, 4, 0x45)
    apic.write(L.TIMER_INITIAL, 4, 1_000_000)
    clock.now += 1_500_000                                    # ran out; update() not called yet
    apic.write(L.LVT_TIMER, 4, L.TIMER_PERIODIC | 0x45)
    assert apic.read(L.TIMER_CURRENT, 4) == 0 and apic.next_deadline_ns() is None
    assert apic.acknowledge() == 0x45                         # its interrupt was not lost


def test_a_running_one_shot_made_periodic_counts_on(apic, clock):
    apic.write(L.TIMER_DIVIDE, 4, 0xB)
    apic.write(L.LVT_TIMER, 4, 0x45)
    apic.write(L.TIMER_INITIAL, 4, 1_000_000)
    clock.now += 600_000
    apic.write(L.LVT_TIMER, 4, L.TIMER_PERIODIC | 0x45)
    assert apic.read(L.TIMER_CURRENT, 4) == 400_000
    clock.now += 400_000
    apic.update()
    assert apic.acknowledge() == 0x45 and apic.read(L.TIMER_CURRENT, 4) == 1_000_000   # reloaded
