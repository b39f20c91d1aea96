"""The cascaded 8259A pair, checked against the datasheet through its ports."""

import pytest

from pykvm.devices.bus import Bus
from pykvm.devices.pic import Pic


class Board:
    """A PIC pair on a bus, driven the way a guest drives it."""

    def __init__(self, pic: Pic):
        self.pic = pic
        self.bus = Bus()
        pic.attach(self.bus)
        self.changes = []
        pic.on_intr_change = self.changes.append

    def out(self, port, value, size=1):
        self.bus.pio_write(port, size, value)

    def inb(self, port):
        return self.bus.pio_read(port, 1)

    def isr(self, port):
        self.out(port, 0x0B)
        value = self.inb(port)
        self.out(port, 0x0A)
        return value

    def irr(self, port):
        self.out(port, 0x0A)
        return self.inb(port)

    def init(self, port, base, icw3, icw4=0x01, icw1=0x11):
        self.out(port, icw1)
        self.out(port + 1, base)
        if not icw1 & 0x02:
            self.out(port + 1, icw3)
        if icw1 & 0x01:
            self.out(port + 1, icw4)

    def eoi(self, port=0x20):
        self.out(port, 0x20)

    def ack(self):
        assert self.pic.interrupt_pending()
        return self.pic.acknowledge()


@pytest.fixture
def board():
    return Board(Pic.bios_initialised())


def pulse(pic, irq):
    pic.set_irq(irq, 1)
    pic.set_irq(irq, 0)


# -- initial states ----------------------------------------------------------------------------

def test_bios_state_vectors_and_masks(board):
    pic = board.pic
    assert (pic.master.vector_base, pic.slave.vector_base) == (0x08, 0x70)
    assert (board.inb(0x21), board.inb(0xA1)) == (0x00, 0x00)
    assert pic.master.icw3 == 0x04 and pic.slave.icw3 == 0x02
    assert not pic.interrupt_pending()
    pulse(pic, 0)
    assert board.ack() == 0x08


def test_kvm_unit_tests_realmode_irq11_delivers_vector_0x73(board):
    pulse(board.pic, 11)                       # outl 1 then 0 to the testdev's port 0x200b
    assert board.ack() == 0x73


def test_power_on_state_masks_everything():
    pic = Pic()
    board = Board(pic)
    assert (board.inb(0x21), board.inb(0xA1)) == (0xFF, 0xFF)
    pic.set_irq(1, 1)
    assert not pic.interrupt_pending()
    assert board.irr(0x20) == 0x02             # pending, masked


def test_reset_returns_to_power_on():
    pic = Pic.bios_initialised()
    pic.set_irq(4, 1)
    pic.acknowledge()
    pic.reset()
    assert pic.master.isr == 0 and pic.master.imr == 0xFF and pic.master.vector_base == 0


# -- initialisation sequences ------------------------------------------------------------------

def test_icw_sequence_sets_base_ignoring_low_bits_and_clears_imr(board):
    board.out(0x21, 0xFF)
    board.init(0x20, 0x27, 0x04)
    assert board.pic.master.vector_base == 0x20
    assert board.inb(0x21) == 0x00             # ICW1 cleared IMR
    board.out(0x21, 0x5A)                      # after ICW4, the data port is OCW1
    assert board.inb(0x21) == 0x5A
    pulse(board.pic, 7)
    assert board.ack() == 0x27


def test_icw1_without_icw4_ends_after_icw3(board):
    board.init(0x20, 0x40, 0x04, icw1=0x10)
    board.out(0x21, 0x12)
    assert board.inb(0x21) == 0x12
    assert board.pic.master.init_step == 0
    assert not board.pic.master.auto_eoi


def test_single_mode_skips_icw3(board):
    board.init(0x20, 0x50, None, icw4=0x01, icw1=0x13)
    assert board.pic.master.single and board.pic.master.init_step == 0
    board.out(0x21, 0xFB)
    assert board.inb(0x21) == 0xFB


def test_single_mode_master_has_no_cascade(board):
    board.init(0x20, 0x50, None, icw4=0x01, icw1=0x13)
    pulse(board.pic, 9)
    assert board.ack() == 0x52                 # IR2 is a plain input now
    assert board.pic.slave.isr == 0


def test_icw1_resets_priority_isr_special_mask_and_read_select(board):
    board.out(0x20, 0xC3)                      # set priority: IR3 lowest
    board.out(0x20, 0x68)                      # special mask mode on
    board.out(0x20, 0x0B)                      # read ISR
    pulse(board.pic, 5)
    board.ack()
    board.init(0x20, 0x08, 0x04)
    m = board.pic.master
    assert (m.rotation, m.special_mask, m.read_isr, m.isr) == (0, False, False, 0)


def test_icw1_needs_a_new_edge_from_a_line_held_high(board):
    board.pic.set_irq(3, 1)
    board.init(0x20, 0x08, 0x04)
    assert not board.pic.interrupt_pending()
    board.pic.set_irq(3, 1)                    # still high: no edge
    assert not board.pic.interrupt_pending()
    board.pic.set_irq(3, 0)
    board.pic.set_irq(3, 1)
    assert board.ack() == 0x0B


# -- masks, IRR, ISR ---------------------------------------------------------------------------

def test_masked_request_stays_in_irr_until_unmasked(board):
    board.out(0x21, 0x10)
    pulse(board.pic, 4)
    assert not board.pic.interrupt_pending()
    assert board.irr(0x20) == 0x10
    board.out(0x21, 0x00)
    assert board.ack() == 0x0C
    assert board.irr(0x20) == 0x00
    assert board.isr(0x20) == 0x10


def test_read_register_select_persists(board):
    pulse(board.pic, 1)
    board.out(0x20, 0x0B)
    assert board.inb(0x20) == 0x00             # ISR
    board.pic.acknowledge()
    assert board.inb(0x20) == 0x02             # still ISR
    board.out(0x20, 0x08)                      # OCW3 with RR=0: no change
    assert board.inb(0x20) == 0x02
    board.out(0x20, 0x0A)
    assert board.inb(0x20) == 0x00             # IRR


# -- priorities and EOI ------------------------------------------------------------------------

def test_fixed_priority_and_nesting(board):
    pic = board.pic
    pulse(pic, 5)
    pulse(pic, 3)
    assert board.ack() == 0x0B                 # 3 beats 5
    assert not pic.interrupt_pending()         # 5 is lower than 3 in service
    pulse(pic, 1)
    assert board.ack() == 0x09                 # 1 nests above 3
    assert board.isr(0x20) == 0x0A
    board.eoi()                                # non-specific: the highest in service (1)
    assert board.isr(0x20) == 0x08
    assert not pic.interrupt_pending()
    board.eoi()
    assert board.ack() == 0x0D


def test_specific_eoi_clears_the_named_level(board):
    pulse(board.pic, 6)
    board.ack()
    pulse(board.pic, 2 + 2)
    board.ack()
    board.out(0x20, 0x66)                      # specific EOI for 6 while 4 is also in service
    assert board.isr(0x20) == 0x10


def test_rotate_on_nonspecific_eoi_makes_the_level_lowest(board):
    pulse(board.pic, 3)
    board.ack()
    board.out(0x20, 0xA0)                      # rotate on non-specific EOI
    assert board.pic.master.rotation == 4
    pulse(board.pic, 3)
    pulse(board.pic, 5)
    assert board.ack() == 0x0D                 # 5 now outranks 3


def test_rotate_on_specific_eoi(board):
    pulse(board.pic, 6)
    board.ack()
    board.out(0x20, 0xE6)
    assert board.isr(0x20) == 0 and board.pic.master.rotation == 7
    pulse(board.pic, 6)
    pulse(board.pic, 7)
    assert board.ack() == 0x0F


def test_set_priority_command(board):
    board.out(0x20, 0xC4)                      # IR4 lowest: order 5 6 7 0 1 3 4
    pulse(board.pic, 0)
    pulse(board.pic, 6)
    assert board.ack() == 0x0E
    board.eoi()
    assert board.ack() == 0x08


def test_nonspecific_eoi_follows_rotated_priority(board):
    board.out(0x20, 0xC4)                      # 5 highest ... 4 lowest
    pulse(board.pic, 1)
    board.ack()
    pulse(board.pic, 6)
    board.ack()                                # 6 outranks 1 now
    board.eoi()
    assert board.isr(0x20) == 0x02


def test_auto_eoi_sets_no_isr_and_rotates_on_request(board):
    board.init(0x20, 0x08, 0x04, icw4=0x03)
    pulse(board.pic, 5)
    assert board.ack() == 0x0D
    assert board.isr(0x20) == 0 and board.pic.master.rotation == 0
    board.out(0x20, 0x80)                      # rotate in AEOI mode: set
    pulse(board.pic, 5)
    board.ack()
    assert board.pic.master.rotation == 6
    board.out(0x20, 0x00)                      # and clear
    pulse(board.pic, 1)
    board.ack()
    assert board.pic.master.rotation == 6


def test_nop_and_eoi_with_nothing_in_service_are_harmless(board):
    board.out(0x20, 0x40)
    board.eoi()
    assert board.isr(0x20) == 0


def test_special_mask_mode_lets_lower_levels_in(board):
    pulse(board.pic, 3)
    board.ack()
    pulse(board.pic, 5)
    assert not board.pic.interrupt_pending()
    board.out(0x21, 0x08)                      # mask the level in service...
    assert not board.pic.interrupt_pending()   # ...which alone changes nothing
    board.out(0x20, 0x68)                      # special mask mode
    assert board.ack() == 0x0D
    board.out(0x20, 0x48)                      # reset special mask mode
    assert board.pic.master.special_mask is False


def test_special_fully_nested_mode_lets_higher_slave_requests_through(board):
    for sfnm in (False, True):
        b = Board(Pic.bios_initialised())
        b.init(0x20, 0x08, 0x04, icw4=0x11 if sfnm else 0x01)
        pulse(b.pic, 11)
        assert b.ack() == 0x73
        pulse(b.pic, 9)                        # higher than 11, same master level
        assert b.pic.interrupt_pending() is sfnm
        pulse(b.pic, 4)                        # lower than the cascade in service: never
        if sfnm:
            assert b.ack() == 0x71
            assert b.pic.slave.isr == 0x0A
        else:
            assert not b.pic.interrupt_pending()


# -- OCW3 poll -----------------------------------------------------------------------------------

def test_poll_acknowledges_and_reports_the_level(board):
    pulse(board.pic, 6)
    board.out(0x20, 0x0C)
    assert board.inb(0x20) == 0x86
    assert board.isr(0x20) == 0x40
    board.out(0x20, 0x0C)
    assert board.inb(0x21) == 0x00             # nothing requesting; poll word read at A0=1 too
    assert board.inb(0x21) == 0x00             # one-shot: this is IMR again


def test_poll_of_a_masked_level_reports_nothing(board):
    board.out(0x21, 0x40)
    pulse(board.pic, 6)
    board.out(0x20, 0x0C)
    assert board.inb(0x20) == 0x00
    assert board.irr(0x20) == 0x40


# -- edge and level triggering ---------------------------------------------------------------

def test_edge_latches_and_survives_the_line_dropping(board):
    board.pic.set_irq(4, 1)
    board.pic.set_irq(4, 0)
    assert board.irr(0x20) == 0x10
    assert board.ack() == 0x0C


def test_edge_line_held_high_interrupts_once(board):
    board.pic.set_irq(4, 1)
    board.ack()
    board.eoi()
    board.pic.set_irq(4, 1)
    assert not board.pic.interrupt_pending()
    board.pic.set_irq(4, 0)
    board.pic.set_irq(4, 1)
    assert board.ack() == 0x0C


def test_level_line_follows_its_input_and_reasserts_after_eoi(board):
    board.out(0x4D0, 0x20)                     # IRQ 5 level-triggered
    board.pic.set_irq(5, 1)
    assert board.irr(0x20) == 0x20
    board.pic.set_irq(5, 0)
    assert board.irr(0x20) == 0x00
    assert not board.pic.interrupt_pending()
    board.pic.set_irq(5, 1)
    assert board.ack() == 0x0D
    assert board.irr(0x20) == 0x20             # still asserted
    board.eoi()
    assert board.ack() == 0x0D                 # so it interrupts again
    board.pic.set_irq(5, 0)
    board.eoi()
    assert not board.pic.interrupt_pending()


def test_level_slave_line_reasserts_through_the_cascade(board):
    board.out(0x4D1, 0x04)                     # IRQ 10 level-triggered
    board.pic.set_irq(10, 1)
    assert board.ack() == 0x72
    board.eoi(0xA0)
    board.eoi(0x20)
    assert board.ack() == 0x72
    board.pic.set_irq(10, 0)
    board.eoi(0xA0)
    board.eoi(0x20)
    assert not board.pic.interrupt_pending()


def test_elcr_cannot_make_0_1_2_8_13_level(board):
    board.out(0x4D0, 0xFF)
    board.out(0x4D1, 0xFF)
    assert (board.inb(0x4D0), board.inb(0x4D1)) == (0xF8, 0xDE)
    assert board.bus.pio_read(0x4D0, 2) == 0xDEF8


def test_elcr_switch_to_level_drops_a_latched_edge_of_a_low_line(board):
    pulse(board.pic, 5)
    board.out(0x4D0, 0x20)
    assert board.irr(0x20) == 0


def test_ltim_makes_every_line_of_the_chip_level_triggered(board):
    board.init(0x20, 0x08, 0x04, icw1=0x19)
    pulse(board.pic, 0)
    assert not board.pic.interrupt_pending()
    board.pic.set_irq(0, 1)
    assert board.ack() == 0x08


# -- spurious interrupts ---------------------------------------------------------------------

def test_spurious_irq7_when_a_level_request_vanishes_before_inta(board):
    board.out(0x4D0, 0x20)
    board.pic.set_irq(5, 1)
    assert board.pic.interrupt_pending()
    board.pic.set_irq(5, 0)                    # between INTR and INTA
    assert board.pic.acknowledge() == 0x0F
    assert board.isr(0x20) == 0                # a spurious IRQ 7 sets no ISR bit
    assert board.pic.spurious == 1


def test_spurious_irq7_when_masked_between_intr_and_inta(board):
    pulse(board.pic, 3)
    board.out(0x21, 0x08)
    assert board.pic.acknowledge() == 0x0F
    assert board.irr(0x20) == 0x08             # still pending, masked


def test_spurious_irq15_when_the_slave_request_vanishes(board):
    board.out(0x4D1, 0x08)                     # IRQ 11 level
    board.pic.set_irq(11, 1)
    board.pic.set_irq(11, 0)                   # slave INT drops; master's IR2 edge stays latched
    assert board.pic.interrupt_pending()
    assert board.pic.acknowledge() == 0x77
    assert board.isr(0x20) == 0x04             # the master did acknowledge its cascade line
    assert board.isr(0xA0) == 0x00
    assert board.pic.spurious == 1


def test_a_real_irq7_sets_its_isr_bit(board):
    pulse(board.pic, 7)
    assert board.ack() == 0x0F
    assert board.isr(0x20) == 0x80
    assert board.pic.spurious == 0


# -- cascade -----------------------------------------------------------------------------------

def test_cascade_acknowledge_sets_both_isrs(board):
    pulse(board.pic, 11)
    assert board.irr(0x20) == 0x04
    assert board.ack() == 0x73
    assert (board.isr(0x20), board.isr(0xA0)) == (0x04, 0x08)
    pulse(board.pic, 12)
    assert not board.pic.interrupt_pending()   # slave level 3 in service blocks 4
    board.eoi(0xA0)
    assert not board.pic.interrupt_pending()   # master IR2 still in service
    board.eoi(0x20)
    assert board.ack() == 0x74


def test_master_levels_above_the_cascade_nest_over_a_slave_interrupt(board):
    pulse(board.pic, 14)
    board.ack()
    pulse(board.pic, 1)
    assert board.ack() == 0x09
    pulse(board.pic, 3)
    assert not board.pic.interrupt_pending()


def test_masked_cascade_line_holds_slave_requests(board):
    board.out(0x21, 0x04)
    pulse(board.pic, 8)
    assert not board.pic.interrupt_pending()
    board.out(0x21, 0x00)
    assert board.ack() == 0x70


def test_slave_in_auto_eoi_raises_its_next_request_with_a_new_edge(board):
    board.init(0x20, 0x08, 0x04, icw4=0x03)
    board.init(0xA0, 0x70, 0x02, icw4=0x03)
    pulse(board.pic, 9)
    pulse(board.pic, 11)
    assert board.ack() == 0x71
    assert board.ack() == 0x73
    assert not board.pic.interrupt_pending()


def test_slave_requests_in_priority_order_after_eois(board):
    pulse(board.pic, 13)
    pulse(board.pic, 9)
    assert board.ack() == 0x71
    board.eoi(0xA0)
    board.eoi(0x20)
    assert board.ack() == 0x75


# -- INTR callback, lines, access sizes --------------------------------------------------------

def test_intr_change_callback_sees_every_change(board):
    pulse(board.pic, 1)
    assert board.changes == [True]
    board.pic.acknowledge()
    assert board.changes == [True, False]
    pulse(board.pic, 0)
    assert board.changes == [True, False, True]   # 0 outranks 1 in service
    board.out(0x21, 0x01)
    assert board.changes[-1] is False


def test_irq2_is_the_cascade_and_not_an_input(board):
    board.pic.set_irq(2, 1)
    assert not board.pic.interrupt_pending()
    with pytest.raises(ValueError):
        board.pic.set_irq(16, 1)


def test_word_write_reaches_command_and_data_ports(board):
    pulse(board.pic, 4)
    board.ack()
    board.out(0x20, 0xF020, size=2)            # EOI to 0x20, IMR 0xF0 to 0x21
    assert board.isr(0x20) == 0 and board.inb(0x21) == 0xF0
