"""Port 0x80: POST codes, and the write guests use as an I/O delay.

BIOSes and some kernels write progress codes here (a POST card shows them);
Linux writes it to slow down I/O. Every write is accepted, kept in
``last_post_code`` and logged at debug level (``-vv``). A read returns the last
code, as the DMA page register behind port 0x80 on a PC does (0xFF before the
first write).
"""

from __future__ import annotations

import logging

from pykvm.devices.bus import ByteRegisters

log = logging.getLogger(__name__)

PORT = 0x80


class PostCode(ByteRegisters):
    def __init__(self):
        self.last_post_code: int | None = None
        # Decided once, as the bus does: a debug call per write would cost more than the write.
        self._trace = log.isEnabledFor(logging.DEBUG)

    def attach(self, bus) -> None:
        bus.pio.register(PORT, 1, self)

    def read_byte(self, offset: int) -> int:
        if offset or self.last_post_code is None:
            return 0xFF
        return self.last_post_code

    def write_byte(self, offset: int, value: int) -> None:
        if offset:
            return
        self.last_post_code = value
        if self._trace:
            log.debug("POST code %#04x", value)
