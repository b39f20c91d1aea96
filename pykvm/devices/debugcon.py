"""Port 0xE9: the debug console of Bochs and QEMU (``isa-debugcon``).

Firmware and small kernels print here with one ``out 0xE9, al`` per byte, no UART to probe or
poll (SeaBIOS and test386.asm can be built to, and many hobby kernels do). The bytes go to the
same output as the serial port's, in order with what the UART sends (``emit``), so the guest's
console stays one stream. A read returns 0xE9, as on Bochs and QEMU, which is how guests tell
the port is there. With ``--testdev`` the port is pc-testdev's (its scratch register is also at
0xe8-0xeb, as in QEMU), and there is no debug console.
"""

from __future__ import annotations

from typing import Callable

from pykvm.devices.bus import ByteRegisters

PORT = 0xE9


class DebugCon(ByteRegisters):
    def __init__(self, emit: Callable[[int], None]):
        self._emit = emit

    def attach(self, bus) -> None:
        bus.pio.register(PORT, 1, self)

    def read_byte(self, offset: int) -> int:
        return PORT

    def write_byte(self, offset: int, value: int) -> None:
        self._emit(value)
