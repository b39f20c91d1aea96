"""The PC's two cascaded Intel 8259A interrupt controllers, and the PIIX ELCR.

Every interrupt a real-mode or 16/32-bit protected-mode PC guest takes from a
device comes through this pair: ISA IRQ 0-7 on the master (ports 0x20/0x21),
IRQ 8-15 on the slave (ports 0xA0/0xA1), whose INT output drives the master's
IR2. The behaviour follows the 8259A datasheet:

* initialisation: ICW1 (with or without ICW4, single or cascaded, LTIM), ICW2
  (vector base; the low three bits are ignored in 8086 mode), ICW3, ICW4 (AEOI,
  special fully nested mode; 8080 mode and buffered mode are accepted and
  ignored — there is no 8080 here, and no bus to buffer);
* OCW1 (IMR), OCW2 (non-specific / specific EOI, rotate on EOI, set priority,
  rotate in AEOI mode), OCW3 (read IRR or ISR, poll, special mask mode);
* priority resolution with a rotating lowest priority: a request interrupts
  when it is unmasked and of higher priority than everything in service (in
  special mask mode only unmasked in-service levels count; in special fully
  nested mode the master lets its cascade line interrupt itself);
* edge and level triggering. The PIIX's ELCR (ports 0x4d0/0x4d1) makes single
  lines level-triggered; IRQ 0, 1, 2, 8 and 13 are always edge, as on PIIX.
  ICW1's LTIM, which PIIX ignores, makes a whole chip level-triggered as on a
  discrete 8259A. An edge latches IRR on a 0→1 transition and stays latched
  when the line drops again (as QEMU's and KVM's PICs do: kvm-unit-tests pulse
  a line and expect the interrupt); a level request follows the line and
  vanishes with it;
* INTA (``Pic.acknowledge``): IRR→ISR (or straight through in AEOI mode), the
  vector; when the request went away between INTR and INTA the chip answers
  with its IR7 vector and sets no ISR bit — spurious IRQ 7 on the master,
  spurious IRQ 15 when the master acknowledged its cascade line and the slave
  had nothing. Acknowledging the cascade acknowledges the slave, whose INT
  output drops during INTA and rises again (a new edge on IR2) if it still has
  a request.

INTR is cached: every state change recomputes it, so ``interrupt_pending()``,
asked once per emulated block, is one attribute read. ``on_intr_change(level)``
is called whenever INTR changes.
"""

from __future__ import annotations

import logging

from pykvm.devices.bus import ByteRegisters

log = logging.getLogger(__name__)

MASTER_PORT = 0x20
SLAVE_PORT = 0xA0
ELCR_PORT = 0x4D0
PORTS = 2                        # each chip: command (A0=0) and data (A0=1)
CASCADE_LINE = 2                 # the master input the slave's INT drives

# Lines the ELCR can make level-triggered (PIIX: IRQ 0, 1, 2, 8, 13 are always edge).
MASTER_ELCR_MASK = 0xF8
SLAVE_ELCR_MASK = 0xDE

ICW1_IC4 = 0x01                  # ICW4 follows
ICW1_SNGL = 0x02                 # single chip: no ICW3
ICW1_LTIM = 0x08                 # level-triggered inputs
ICW1 = 0x10                      # D4 on the command port marks ICW1
OCW3 = 0x08                      # D3 (with D4 clear) marks OCW3; neither marks OCW2
ICW4_UPM = 0x01                  # 8086 mode (8080 mode is not emulated)
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10
OCW3_RIS = 0x01
OCW3_RR = 0x02
OCW3_POLL = 0x04
OCW3_SMM = 0x20
OCW3_ESMM = 0x40
POLL_REQUEST = 0x80              # poll word: I bit, with the level in bits 0-2

# OCW2 commands (bits 7-5: R, SL, EOI)
OCW2_ROTATE_AEOI_CLEAR = 0
OCW2_EOI = 1
OCW2_NOP = 2
OCW2_SPECIFIC_EOI = 3
OCW2_ROTATE_AEOI_SET = 4
OCW2_ROTATE_EOI = 5
OCW2_SET_PRIORITY = 6
OCW2_ROTATE_SPECIFIC_EOI = 7

NO_PRIORITY = 8


def _priority_table() -> tuple[tuple[int, ...], ...]:
    """``[rot][mask]``: the best (lowest-numbered) priority among the lines in ``mask``.

    Priority ``p`` belongs to line ``(p + rot) & 7``: ``rot`` is the line with the
    highest priority, one past the lowest. ``NO_PRIORITY`` for an empty mask.
    """
    table = []
    for rot in range(8):
        row = []
        for mask in range(256):
            row.append(next((p for p in range(8) if mask >> ((p + rot) & 7) & 1), NO_PRIORITY))
        table.append(tuple(row))
    return tuple(table)


_PRIORITY = _priority_table()


class I8259(ByteRegisters):
    """One 8259A: offset 0 is the command port (A0 = 0), offset 1 the data port (A0 = 1).

    ``on_output(level)`` is called when the chip's INT output changes. The chip
    starts in its power-on state: not initialised, every line masked.
    """

    def __init__(self, name: str, is_master: bool, elcr_mask: int, on_output: Callable[[bool], None]):
        self.name = name
        self.is_master = is_master
        self.elcr_mask = elcr_mask
        self._on_output = on_output
        self.levels = 0          # input line levels as last set
        self.output = False      # INT
        self.power_on()

    def power_on(self) -> None:
        self.irr = self.isr = 0
        self.imr = 0xFF
        self.elcr = 0
        self.ltim = False
        self.level_lines = 0     # ELCR | (0xFF if LTIM): lines whose IRR follows the input
        self.vector_base = 0
        self.init_step = 0       # 0: operational; 2, 3, 4: the ICW expected next
        self.single = False
        self.icw4_expected = False
        self.icw3 = 0
        self.auto_eoi = False
        self.sfnm = False
        self.rotate_on_aeoi = False
        self.rotation = 0        # the line with the highest priority
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self._update()

    # -- inputs ----------------------------------------------------------------------------
    def set_input(self, line: int, level: bool) -> None:
        bit = 1 << line
        if bool(self.levels & bit) == bool(level):
            return
        if level:
            self.levels |= bit
            self.irr |= bit          # a rising edge, and a level request alike
        else:
            self.levels &= ~bit
            self.irr &= ~(bit & self.level_lines)
        self._update()

    def set_elcr(self, value: int) -> None:
        self.elcr = value & self.elcr_mask
        self._set_level_lines()
        self._update()

    def _set_level_lines(self) -> None:
        self.level_lines = 0xFF if self.ltim else self.elcr
        # A level-triggered line's request is its input, whatever it latched before.
        self.irr = (self.irr & ~self.level_lines) | (self.levels & self.level_lines)

    # -- priority --------------------------------------------------------------------------
    @property
    def slave_lines(self) -> int:
        """Lines with a slave behind them (ICW3 of a cascaded master)."""
        return self.icw3 if self.is_master and not self.single else 0

    def pending_line(self) -> int:
        """The line that would be acknowledged now, or -1: INT is this being >= 0."""
        requests = self.irr & ~self.imr
        if not requests:
            return -1
        rot = self.rotation
        best = _PRIORITY[rot][requests]
        in_service = self.isr & ~self.imr if self.special_mask else self.isr
        if in_service:
            current = _PRIORITY[rot][in_service]
            line = (best + rot) & 7
            if current < best or (current == best and not (self.sfnm and self.slave_lines >> line & 1)):
                return -1
        return (best + rot) & 7

    def _update(self) -> None:
        out = self.pending_line() >= 0
        if out != self.output:
            self.output = out
            self._on_output(out)

    # -- acknowledge and EOI ---------------------------------------------------------------
    def acknowledge_line(self, line: int) -> None:
        """The INTA (or poll) that services ``line``: IRR→ISR, unless auto-EOI ends it at once."""
        bit = 1 << line
        self.irr &= ~bit | self.level_lines
        if self.auto_eoi:
            if self.rotate_on_aeoi:
                self.rotation = (line + 1) & 7
        else:
            self.isr |= bit
        self._update()

    def _eoi(self, line: int, rotate: bool) -> None:
        self.isr &= ~(1 << line)
        if rotate:
            self.rotation = (line + 1) & 7

    def _highest_in_service(self) -> int:
        best = _PRIORITY[self.rotation][self.isr]
        return -1 if best == NO_PRIORITY else (best + self.rotation) & 7

    # -- registers -------------------------------------------------------------------------
    def write_byte(self, offset: int, value: int) -> None:
        if offset == 0:
            if value & ICW1:
                self._icw1(value)
            elif value & OCW3:
                self._ocw3(value)
            else:
                self._ocw2(value)
        elif offset == 1:
            if self.init_step:
                self._icw(value)
            else:
                self.imr = value
        else:
            return
        self._update()

    def read_byte(self, offset: int) -> int:
        if offset > 1:
            return 0xFF
        if self.poll:
            return self._poll()
        if offset == 1:
            return self.imr
        return self.isr if self.read_isr else self.irr

    def _icw1(self, value: int) -> None:
        # The datasheet's list: edge sense reset, IMR cleared, IR7 lowest priority, special
        # mask mode off, status read = IRR, ICW4 functions cleared when no ICW4 follows.
        self.ltim = bool(value & ICW1_LTIM)
        self.single = bool(value & ICW1_SNGL)
        self.icw4_expected = bool(value & ICW1_IC4)
        self.isr = 0
        self.irr = 0
        self._set_level_lines()
        self.imr = 0
        self.rotation = 0
        self.special_mask = False
        self.read_isr = False
        self.poll = False
        self.auto_eoi = self.sfnm = self.rotate_on_aeoi = False
        self.init_step = 2

    def _icw(self, value: int) -> None:
        step = self.init_step
        if step == 2:
            self.vector_base = value & 0xF8
            step = 3 if not self.single else 4
        elif step == 3:
            self.icw3 = value
            step = 4
        else:
            self.auto_eoi = bool(value & ICW4_AEOI)
            self.sfnm = bool(value & ICW4_SFNM)
            if not value & ICW4_UPM:
                log.debug("%s PIC: ICW4 selects 8080 mode; vectors stay 8086-style", self.name)
            step = 0
        if step == 4 and not self.icw4_expected:
            step = 0
        self.init_step = step

    def _ocw2(self, value: int) -> None:
        command, line = value >> 5, value & 7
        if command in (OCW2_EOI, OCW2_ROTATE_EOI):
            highest = self._highest_in_service()
            if highest >= 0:
                self._eoi(highest, rotate=command == OCW2_ROTATE_EOI)
        elif command in (OCW2_SPECIFIC_EOI, OCW2_ROTATE_SPECIFIC_EOI):
            self._eoi(line, rotate=command == OCW2_ROTATE_SPECIFIC_EOI)
        elif command == OCW2_SET_PRIORITY:
            self.rotation = (line + 1) & 7
        elif command == OCW2_ROTATE_AEOI_SET:
            self.rotate_on_aeoi = True
        elif command == OCW2_ROTATE_AEOI_CLEAR:
            self.rotate_on_aeoi = False

    def _ocw3(self, value: int) -> None:
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)
        if value & OCW3_POLL:
            self.poll = True

    def _poll(self) -> int:
        """The read after a poll command: an INTA in all but name, answered with the poll word."""
        self.poll = False
        line = self.pending_line()
        if line < 0:
            return 0
        self.acknowledge_line(line)
        return POLL_REQUEST | line


class Elcr(ByteRegisters):
    """PIIX edge/level control: offset 0 for IRQ 0-7, offset 1 for IRQ 8-15 (1 = level)."""

    def __init__(self, master: I8259, slave: I8259):
        self.chips = (master, slave)

    def read_byte(self, offset: int) -> int:
        return self.chips[offset].elcr if offset < 2 else 0xFF

    def write_byte(self, offset: int, value: int) -> None:
        if offset < 2:
            self.chips[offset].set_elcr(value)


class Pic:
    """The cascaded pair: ISA IRQ lines in, INTR and the INTA cycle out.

    ``on_intr_change(level)``, when set, is called each time INTR changes (the
    run loop uses it to wake a halted vCPU or end an emulation batch).
    """

    def __init__(self):
        self.on_intr_change: Callable[[bool], None] | None = None
        self.intr = False
        self.spurious = 0        # INTA cycles answered with a spurious IRQ 7 / 15
        self.master = I8259("master", True, MASTER_ELCR_MASK, self._master_output)
        self.slave = I8259("slave", False, SLAVE_ELCR_MASK, self._slave_output)
        self.elcr = Elcr(self.master, self.slave)

    @classmethod
    def bios_initialised(cls) -> "Pic":
        """The pair as a PC BIOS leaves it; see ``reset``."""
        pic = cls()
        pic.reset(bios=True)
        return pic

    def reset(self, bios: bool = False) -> None:
        """Power-on state (nothing initialised, all masked), or with ``bios`` as a BIOS leaves it.

        The BIOS state is what SeaBIOS programs — ICW1 0x11 (edge, cascade, ICW4),
        vector bases 0x08 and 0x70, the slave on IR2, 8086 mode, normal EOI — but
        with every line unmasked. A BIOS masks the lines it has no handler for;
        pykvm has no BIOS and no handlers, and none of its devices raises a line
        before the guest programs it to (the PIT is idle until a count is written,
        the RTC interrupts only when register B enables them, the test device on
        request), so unmasking all is safe and lets a guest that skips the PIC
        setup (kvm-unit-tests' realmode raises IRQ 11 and expects vector 0x73)
        take its interrupts. The ELCR is left all-edge: pykvm has no PCI devices
        whose IRQs a BIOS would make level-triggered.
        """
        self.master.power_on()
        self.slave.power_on()
        self.spurious = 0
        if bios:
            for chip, base, icw3 in ((self.master, 0x08, 1 << CASCADE_LINE), (self.slave, 0x70, CASCADE_LINE)):
                for offset, value in ((0, ICW1 | ICW1_IC4), (1, base), (1, icw3), (1, ICW4_UPM), (1, 0x00)):
                    chip.write_byte(offset, value)

    def attach(self, bus) -> None:
        """Claim ports 0x20-0x21 (master), 0xA0-0xA1 (slave) and 0x4d0-0x4d1 (ELCR)."""
        bus.pio.register(MASTER_PORT, PORTS, self.master)
        bus.pio.register(SLAVE_PORT, PORTS, self.slave)
        bus.pio.register(ELCR_PORT, 2, self.elcr)

    # -- lines in --------------------------------------------------------------------------
    def set_irq(self, irq: int, level: int) -> None:
        """Set ISA IRQ ``irq`` (0-15) to ``level``; an edge-triggered line latches on 0→1.

        IRQ 2 is the master's cascade input, driven by the slave alone; a request for
        it is ignored (an AT routes the bus's IRQ 2 pin to IRQ 9 instead).
        """
        if irq < 8:
            if irq == CASCADE_LINE:
                log.debug("PIC: IRQ 2 is the cascade input; set_irq(2, %d) ignored", level)
                return
            self.master.set_input(irq, level)
        elif irq < 16:
            self.slave.set_input(irq - 8, level)
        else:
            raise ValueError(f"ISA IRQ {irq} does not exist (0-15)")

    def _slave_output(self, level: bool) -> None:
        self.master.set_input(CASCADE_LINE, level)

    def _master_output(self, level: bool) -> None:
        self.intr = level
        if self.on_intr_change is not None:
            self.on_intr_change(level)

    # -- INTR and INTA ---------------------------------------------------------------------
    def interrupt_pending(self) -> bool:
        """INTR: an unmasked request of higher priority than everything in service."""
        return self.intr

    def acknowledge(self) -> int:
        """The INTA cycle: the vector to deliver, with IRR→ISR done on the chips that answered."""
        master, slave = self.master, self.slave
        line = master.pending_line()
        if line < 0:
            self.spurious += 1
            return master.vector_base | 7
        if line != CASCADE_LINE or not master.slave_lines & (1 << CASCADE_LINE):
            master.acknowledge_line(line)
            return master.vector_base | line
        slave_line = slave.pending_line()
        master.acknowledge_line(line)
        if slave_line < 0:
            self.spurious += 1
            vector = slave.vector_base | 7
        else:
            slave.acknowledge_line(slave_line)
            vector = slave.vector_base | slave_line
        # The slave's INT falls during INTA; a request it still has raises it again.
        master.set_input(CASCADE_LINE, False)
        master.set_input(CASCADE_LINE, slave.output)
        return vector
