"""System control port B (port 0x61): PIT channel 2's gate and OUT, the speaker, the refresh toggle.

The port a BIOS or a kernel uses to time things with PIT channel 2 (SeaBIOS and
Linux calibrate the TSC by raising the gate, loading a mode-0 count and polling
bit 5 until OUT goes high), and that old delay loops poll for the refresh
toggle.

===== ==== ==============================================================
bit   r/w  meaning
===== ==== ==============================================================
0     rw   PIT channel 2 gate
1     rw   speaker data enable (the speaker is channel 2's OUT ANDed with
           this; pykvm makes no sound and just keeps the bit)
2, 3  rw   parity / channel check disable (kept, nothing to check)
4     r    refresh request: toggles on every read, so a loop that waits
           for N toggles (15 µs each on a PC) ends after N reads
5     r    PIT channel 2 OUT
6, 7  r    channel check / parity error: never
===== ==== ==============================================================
"""

from __future__ import annotations

from pykvm.devices.bus import ByteRegisters

PORT = 0x61
GATE2 = 0x01
SPEAKER = 0x02
WRITABLE = 0x0F
REFRESH = 0x10
OUT2 = 0x20


class SystemControlB(ByteRegisters):
    """Port 0x61 over ``pit`` (a ``pykvm.devices.pit.Pit``): gate in, OUT back."""

    def __init__(self, pit):
        self.pit = pit
        self.control = 0         # bits 0-3 as written; gate low, speaker off after reset
        self.refresh = 0

    def attach(self, bus) -> None:
        bus.pio.register(PORT, 1, self)

    def read_byte(self, offset: int) -> int:
        if offset:
            return 0xFF
        self.refresh ^= REFRESH
        return self.control | self.refresh | (OUT2 if self.pit.out(2) else 0)

    def write_byte(self, offset: int, value: int) -> None:
        if offset:
            return
        self.control = value & WRITABLE
        self.pit.set_gate(2, bool(value & GATE2))
