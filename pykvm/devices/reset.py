"""How a PC guest resets itself: port 0x92's fast reset and the 8042 keyboard controller's pulse.

Either ends the run with ``GuestReset``, a ``GuestShutdownError`` (exit status
6, like a triple fault): pykvm runs a guest once and has no firmware to reboot
into, so a reset request is the guest saying it is done (or lost).

* Port 0x92, system control port A: bit 0 = fast reset (a 0→1 transition
  resets), bit 1 = fast A20 gate; every bit reads back as written.
* The 8042 at ports 0x60 (data) and 0x64 (status / command), only as far as
  reset and A20 go: command 0xFE — any pulse command 0xF0-0xFF that pulses
  output-port bit 0 — resets, and so does writing the output port (command
  0xD1, then the byte to 0x60) with bit 0 clear; 0xD1 / 0xDD / 0xDF set the
  A20 gate as on real controllers; 0xD0, 0x20, 0x60, 0xAA and 0xAB answer as
  an 8042 does, so guests that probe it find one. The status byte always shows
  the input buffer empty, so a guest polling before each write never waits;
  there is no keyboard behind it, so bytes written to 0x60 without a command
  are dropped and reads of 0x60 with nothing pending return the last byte
  returned (0 at first).

A20: pykvm's memory does not wrap at 1 MiB whatever the gate says (the gate
starts enabled, as a BIOS leaves it); ``a20_enabled`` on each device keeps
what the guest asked for.
"""

from __future__ import annotations

from pykvm.devices.bus import ByteRegisters
from pykvm.errors import GuestShutdownError

SYSTEM_CONTROL_A_PORT = 0x92
FAST_RESET = 0x01
FAST_A20 = 0x02

KBC_DATA_PORT = 0x60
KBC_COMMAND_PORT = 0x64
KBC_COMMAND_OFFSET = KBC_COMMAND_PORT - KBC_DATA_PORT

STATUS_OBF = 0x01            # output buffer full: a byte waits at 0x60
STATUS_SYS = 0x04            # system flag: self-test passed (command byte bit 2)
STATUS_A2 = 0x08             # the last write was a command
STATUS_UNLOCKED = 0x10       # keyboard not inhibited

OUTPORT_RESET = 0x01         # 0 holds the CPU in reset
OUTPORT_A20 = 0x02
OUTPORT_DEFAULT = 0xCF       # not in reset, A20 on, IRQ lines and clock/data lines idle high
COMMAND_BYTE_DEFAULT = 0x45  # keyboard IRQ enabled, system flag, scancode translation

CMD_READ_COMMAND_BYTE = 0x20
CMD_WRITE_COMMAND_BYTE = 0x60
CMD_SELF_TEST = 0xAA
CMD_INTERFACE_TEST = 0xAB
CMD_READ_OUTPORT = 0xD0
CMD_WRITE_OUTPORT = 0xD1
CMD_A20_OFF = 0xDD
CMD_A20_ON = 0xDF
CMD_PULSE = 0xF0             # 0xF0-0xFF: pulse the output-port bits that are 0 in the low nibble
SELF_TEST_OK = 0x55


class GuestReset(GuestShutdownError):
    """The guest asked the chipset to reset the machine."""


class SystemControlA(ByteRegisters):
    """Port 0x92: fast reset and fast A20."""

    def __init__(self):
        self.value = FAST_A20

    @property
    def a20_enabled(self) -> bool:
        return bool(self.value & FAST_A20)

    def attach(self, bus) -> None:
        bus.pio.register(SYSTEM_CONTROL_A_PORT, 1, self)

    def read_byte(self, offset: int) -> int:
        return self.value if offset == 0 else 0xFF

    def write_byte(self, offset: int, value: int) -> None:
        if offset:
            return
        old, self.value = self.value, value
        if value & FAST_RESET and not old & FAST_RESET:
            raise GuestReset("guest reset the machine through port 0x92 (fast reset)")


class Kbc8042(ByteRegisters):
    """The 8042's reset and A20 lines; offset 0 is port 0x60, offset 4 port 0x64."""

    def __init__(self):
        self.output_port = OUTPORT_DEFAULT
        self.command_byte = COMMAND_BYTE_DEFAULT
        self.pending = None          # the command whose data byte is due at port 0x60
        self.output = None           # the byte waiting to be read at port 0x60
        self.last_output = 0
        self.last_was_command = False

    @property
    def a20_enabled(self) -> bool:
        return bool(self.output_port & OUTPORT_A20)

    def attach(self, bus) -> None:
        bus.pio.register(KBC_DATA_PORT, 1, self)
        bus.pio.register(KBC_COMMAND_PORT, 1, self, offset=KBC_COMMAND_OFFSET)

    def read_byte(self, offset: int) -> int:
        if offset == KBC_COMMAND_OFFSET:
            return ((STATUS_OBF if self.output is not None else 0) | (self.command_byte & STATUS_SYS)
                    | (STATUS_A2 if self.last_was_command else 0) | STATUS_UNLOCKED)
        if offset:
            return 0xFF
        if self.output is not None:
            self.last_output, self.output = self.output, None
        return self.last_output

    def write_byte(self, offset: int, value: int) -> None:
        if offset == KBC_COMMAND_OFFSET:
            self.last_was_command = True
            self._command(value)
        elif offset == 0:
            self.last_was_command = False
            pending, self.pending = self.pending, None
            if pending == CMD_WRITE_OUTPORT:
                self._set_output_port(value)
            elif pending == CMD_WRITE_COMMAND_BYTE:
                self.command_byte = value

    def _command(self, command: int) -> None:
        self.pending = None
        if command >= CMD_PULSE:
            if not command & OUTPORT_RESET:
                raise GuestReset(f"guest reset the machine through the 8042 (command {command:#x} to port 0x64)")
        elif command in (CMD_WRITE_OUTPORT, CMD_WRITE_COMMAND_BYTE):
            self.pending = command
        elif command == CMD_READ_OUTPORT:
            self.output = self.output_port
        elif command == CMD_READ_COMMAND_BYTE:
            self.output = self.command_byte
        elif command == CMD_SELF_TEST:
            self.output = SELF_TEST_OK
        elif command == CMD_INTERFACE_TEST:
            self.output = 0x00
        elif command in (CMD_A20_OFF, CMD_A20_ON):
            self._set_output_port(self.output_port & ~OUTPORT_A20 | (OUTPORT_A20 if command == CMD_A20_ON else 0))

    def _set_output_port(self, value: int) -> None:
        self.output_port = value
        if not value & OUTPORT_RESET:
            raise GuestReset("guest reset the machine through the 8042 (output port bit 0 cleared via port 0x64)")
