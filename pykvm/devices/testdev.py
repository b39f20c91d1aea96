"""QEMU's ``pc-testdev``, as kvm-unit-tests use it.

kvm-unit-tests' x86 suites expect this device on a PC (QEMU's
``-device pc-testdev``); pykvm offers the same ports so those guests run:

* 0xe0-0xe3: a 32-bit scratch register that ``in``/``out`` of any size at any
  offset within it reads and writes (realmode's and emulator's I/O tests);
  0xe8-0xeb is the same register again (QEMU reaches it byte by byte there);
* 0xe4: "flush page": QEMU mprotects the host page whose guest-physical
  address is written, so KVM drops its mappings of it and the guest's next
  access faults into the host (eventinj uses it). pykvm accepts the write and
  does nothing — its userspace emulator keeps no host-side mapping of guest
  pages to drop, and pykvm does not reach into KVM's — so such a test runs,
  without the induced fault;
* 0x2000-0x2017: IRQ lines. A byte written to 0x2000 + n sets interrupt line n
  high (nonzero) or low (zero): ISA IRQs 0-15 reach the PIC and the I/O APIC,
  lines 16-23 the I/O APIC alone; a wider ``out`` reaches consecutive lines, one
  byte each, as QEMU splits it (``outl 1, 0x200b`` raises IRQ 11 and lowers
  12-14). Reads return 0;
* 0xff000000-0xff00ffff (MMIO, optional): 64 KiB of scratch memory.
"""

from __future__ import annotations

import logging

from pykvm.devices.bus import ByteRegisters

log = logging.getLogger(__name__)

SCRATCH_PORT = 0xE0
FLUSH_PORT = 0xE4
SCRATCH_BYTE_PORT = 0xE8
SCRATCH_LENGTH = 4
IRQ_PORT = 0x2000
IRQ_LINES = 24
ISA_IRQS = 16
IOMEM_BASE = 0xFF000000
IOMEM_SIZE = 0x10000


class Scratch(ByteRegisters):
    """The 32-bit scratch register, little-endian, byte-addressed."""

    def __init__(self):
        self.data = bytearray(SCRATCH_LENGTH)

    def read_byte(self, offset: int) -> int:
        return self.data[offset] if offset < SCRATCH_LENGTH else 0xFF

    def write_byte(self, offset: int, value: int) -> None:
        if offset < SCRATCH_LENGTH:
            self.data[offset] = value


class FlushPage:
    """Port 0xe4: accepted, nothing to flush (see the module's docstring)."""

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        log.debug("pc-testdev: flush of the page at %#x accepted (nothing to flush)", value & ~0xFFF)


class IrqLines(ByteRegisters):
    """Ports 0x2000 + n: ISA IRQ n follows the byte written (nonzero = high)."""

    def __init__(self, set_irq: Callable[[int, int], None]):
        self.set_irq = set_irq

    def read_byte(self, offset: int) -> int:
        return 0 if offset < IRQ_LINES else 0xFF

    def write_byte(self, offset: int, value: int) -> None:
        if offset < IRQ_LINES:
            self.set_irq(offset, 1 if value else 0)


class IoMem:
    """The MMIO scratch page: little-endian memory; accesses past its end float."""

    def __init__(self):
        self.data = bytearray(IOMEM_SIZE)

    def read(self, offset: int, size: int) -> int:
        chunk = bytes(self.data[offset:offset + size])
        return int.from_bytes(chunk + b"\xff" * (size - len(chunk)), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        end = min(offset + size, IOMEM_SIZE)
        self.data[offset:end] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")[:end - offset]


class PcTestdev:
    """``set_irq(line, level)`` is the platform's (``PcPlatform.set_irq``)."""

    def __init__(self, set_irq: Callable[[int, int], None]):
        self.scratch = Scratch()
        self.flush = FlushPage()
        self.irq_lines = IrqLines(set_irq)
        self.iomem = IoMem()

    def attach(self, bus, mmio: bool = True) -> None:
        """Claim the ports, and with ``mmio`` the scratch page at 0xff000000."""
        bus.pio.register(SCRATCH_PORT, SCRATCH_LENGTH, self.scratch)
        bus.pio.register(FLUSH_PORT, 4, self.flush)
        bus.pio.register(SCRATCH_BYTE_PORT, SCRATCH_LENGTH, self.scratch)
        bus.pio.register(IRQ_PORT, IRQ_LINES, self.irq_lines)
        if mmio:
            bus.mmio.register(IOMEM_BASE, IOMEM_SIZE, self.iomem)
