"""A 16550A UART as guests probe and poll it (COM1 at port 0x3f8, eight registers).

Guests print by polling LSR.THRE and writing THR, and many probe the chip
first (Linux writes the scratch register, runs a loopback test and looks at
IIR's FIFO bits to tell a 16550A from an 8250). So the register file behaves
like the real part even though nothing is ever delivered as an interrupt yet:

* transmission is instantaneous — THRE and TEMT always read as set, so a
  polling guest never waits;
* IIR reports the highest-priority interrupt *condition* enabled in IER (and
  clears the THR-empty condition on read, as the chip does), so the lead can
  later wire ``interrupt_pending`` to an IRQ line without changing this file;
* MCR loopback routes THR back into RBR and MCR's outputs into MSR's inputs;
* the host side can queue input with ``feed()``; LSR.DR tells the guest.

Offsets (relative to the base port), DLAB = LCR bit 7:

====== ================== ==================
offset read               write
====== ================== ==================
0      RBR (DLL if DLAB)  THR (DLL if DLAB)
1      IER (DLM if DLAB)  IER (DLM if DLAB)
2      IIR                FCR
3      LCR                LCR
4      MCR                MCR
5      LSR                (ignored)
6      MSR                (ignored)
7      SCR                SCR
====== ================== ==================
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from collections import deque

from pykvm.errors import output_error

# Register offsets.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_ERBFI = 0x01   # received data available
IER_ETBEI = 0x02   # transmitter holding register empty
IER_ELSI = 0x04    # receiver line status
IER_EDSSI = 0x08   # modem status

IIR_NO_INT = 0x01
IIR_MSI = 0x00     # modem status change
IIR_THRI = 0x02    # THR empty
IIR_RDI = 0x04     # received data available
IIR_RLSI = 0x06    # receiver line status (overrun)
IIR_FIFO = 0xC0    # "FIFOs enabled": tells a 16550A from an 8250

FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10

LSR_DR = 0x01
LSR_OE = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_DELTAS = 0x0F

# Outside loopback the "modem" is always there: CTS, DSR and DCD asserted, so guests
# that wait for clear-to-send before transmitting do not hang.
_MSR_CONNECTED = MSR_CTS | MSR_DSR | MSR_DCD

_FIFO_DEPTH = 16
_FLUSH_THRESHOLD = 4096

# What the UART writes to (in annotations only, so typing is not imported at run time).
Output = "BinaryIO | Callable[[bytes], object] | None"


def _writer(output: Output) -> tuple[Callable[[bytes], object], Callable[[], object]]:
    """Return (write, flush) for a binary stream, a text stream or a plain callable."""
    if output is None:
        return (lambda data: None), (lambda: None)
    if isinstance(output, io.TextIOBase):
        raw = getattr(output, "buffer", None)
        if raw is not None:
            # Bytes go straight to the underlying buffer; flush text already written first
            # so that host messages and guest output keep their order.
            output.flush()
            return raw.write, raw.flush
        return (lambda data: output.write(data.decode("latin-1"))), output.flush
    if isinstance(output, io.RawIOBase):
        # Unbuffered: the UART buffers lines itself; a raw write may take only part of the data.
        def write_all(data: bytes) -> None:
            view = memoryview(data)
            while view:
                written = output.write(view)
                if written is None:           # a non-blocking file that is full
                    raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
                view = view[written:]

        return write_all, (lambda: None)
    if hasattr(output, "write"):
        return output.write, getattr(output, "flush", lambda: None)
    if callable(output):
        return output, (lambda: None)
    raise TypeError(f"serial output must be a binary stream or a callable, not {type(output).__name__}")


class Serial16550:
    """One 16550A UART. ``output`` receives what the guest transmits.

    ``output`` is a binary stream (flushed at every newline, at ``flush()`` and at
    ``close()``; a write error becomes ``OutputError``), a text stream (its ``buffer`` is
    used when it has one), a callable taking ``bytes`` (called per newline-terminated chunk,
    and at ``flush()``), or None.
    """

    def __init__(self, output: Output = None):
        self._write, self._flush = _writer(output)
        self._where = str(getattr(output, "name", "the serial output")).strip("<>")   # <stdout>
        self._failed = False          # a write failed: later output is dropped, not retried
        # Entered around every write to the output: the run loop uses it to let a stop signal
        # abandon a write that blocks (a pipe whose reader takes nothing).
        self.write_section = contextlib.nullcontext
        self._pending = bytearray()
        self._rx: deque[int] = deque()
        self.reset()

    # -- host side ------------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on register values (divisor 12 = 9600 baud, 8N1 not yet programmed)."""
        self.dll = 0x0C
        self.dlm = 0x00
        self.ier = 0
        self.fcr = 0
        self.lcr = 0
        self.mcr = 0
        self.lsr_errors = 0
        self.msr = _MSR_CONNECTED
        self.scr = 0
        self.thr_empty_pending = False
        self._rx.clear()

    def feed(self, data: bytes) -> None:
        """Queue bytes for the guest to read from RBR (host keyboard, test input)."""
        self._rx.extend(data)

    @property
    def rx_pending(self) -> int:
        """How many received bytes the guest has not read yet."""
        return len(self._rx)

    def flush(self) -> None:
        """Hand everything the guest transmitted to the output (called at run end, on halt).

        A failed write (a closed pipe, a full disk) raises ``OutputError`` once (``OutputClosed``
        for a closed pipe); from then on output is dropped, so the flushes at the end of the run
        and at close neither raise again nor retry. The same goes for a write that a stop signal
        abandoned (see ``write_section``).
        """
        data = bytes(self._pending)
        self._pending.clear()
        if self._failed:
            return
        try:
            with self.write_section():
                if data:
                    self._write(data)
                self._flush()
        except OSError as e:
            self._failed = True
            raise output_error(e, self._where) from None
        except BaseException:
            self._failed = True      # a stop signal abandoned the write: the rest is dropped
            raise

    def close(self) -> None:
        """Flush; the output stream itself belongs to the caller and stays open."""
        self.flush()

    def __enter__(self) -> "Serial16550":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- derived state --------------------------------------------------------------------
    @property
    def lsr(self) -> int:
        value = LSR_THRE | LSR_TEMT | self.lsr_errors
        if self._rx:
            value |= LSR_DR
        return value

    def _interrupt_id(self) -> int:
        """The IIR interrupt-id bits of the highest-priority enabled condition, or IIR_NO_INT."""
        ier = self.ier
        if ier & IER_ELSI and self.lsr_errors:
            return IIR_RLSI
        if ier & IER_ERBFI and self._rx:
            return IIR_RDI
        if ier & IER_ETBEI and self.thr_empty_pending:
            return IIR_THRI
        if ier & IER_EDSSI and self.msr & MSR_DELTAS:
            return IIR_MSI
        return IIR_NO_INT

    @property
    def interrupt_pending(self) -> bool:
        """True when the UART would assert its IRQ line (only with MCR.OUT2, as on a PC)."""
        return self._interrupt_id() != IIR_NO_INT and bool(self.mcr & MCR_OUT2)

    @property
    def _fifo_enabled(self) -> bool:
        return bool(self.fcr & FCR_ENABLE)

    # -- bus interface --------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        """Port read; wider accesses read consecutive registers, as the ISA bus splits them."""
        if size == 1:
            return self._read_reg(offset) if offset < 8 else 0xFF
        value = 0
        for i in range(size):
            reg = offset + i
            byte = self._read_reg(reg) if reg < 8 else 0xFF
            value |= byte << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 1:
            if offset < 8:
                self._write_reg(offset, value & 0xFF)
            return
        for i in range(size):
            reg = offset + i
            if reg < 8:
                self._write_reg(reg, (value >> (8 * i)) & 0xFF)

    def _read_reg(self, reg: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if reg == RBR:
            if dlab:
                return self.dll
            return self._rx.popleft() if self._rx else 0
        if reg == IER:
            return self.dlm if dlab else self.ier
        if reg == IIR:
            iid = self._interrupt_id()
            if iid == IIR_THRI:
                # Reading IIR while THRE is the reported source acknowledges it.
                self.thr_empty_pending = False
            return iid | (IIR_FIFO if self._fifo_enabled else 0)
        if reg == LCR:
            return self.lcr
        if reg == MCR:
            return self.mcr
        if reg == LSR:
            value = self.lsr
            self.lsr_errors = 0          # overrun is cleared by reading LSR
            return value
        if reg == MSR:
            value = self.msr
            self.msr &= ~MSR_DELTAS      # delta bits are cleared by reading MSR
            return value
        return self.scr

    def _write_reg(self, reg: int, byte: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if reg == THR:
            if dlab:
                self.dll = byte
            else:
                self._transmit(byte)
        elif reg == IER:
            if dlab:
                self.dlm = byte
            else:
                old = self.ier
                self.ier = byte & 0x0F
                if self.ier & IER_ETBEI and not old & IER_ETBEI:
                    # Enabling THRE interrupts while THR is empty raises one at once.
                    self.thr_empty_pending = True
        elif reg == FCR:
            if (byte ^ self.fcr) & FCR_ENABLE:
                # Toggling FIFO mode empties both FIFOs.
                byte |= FCR_CLEAR_RX | FCR_CLEAR_TX
            if byte & FCR_CLEAR_RX:
                self._rx.clear()
            self.fcr = byte & 0xC9       # enable, DMA mode, trigger level; clear bits self-reset
        elif reg == LCR:
            self.lcr = byte
        elif reg == MCR:
            self._set_mcr(byte & 0x1F)
        elif reg == SCR:
            self.scr = byte
        # LSR and MSR writes are factory-test only; ignore them.

    def _transmit(self, byte: int) -> None:
        if self.mcr & MCR_LOOP:
            depth = _FIFO_DEPTH if self._fifo_enabled else 1
            if len(self._rx) >= depth:
                self.lsr_errors |= LSR_OE
            else:
                self._rx.append(byte)
        else:
            self.emit(byte)
        # The byte left at once, so THR is empty again.
        self.thr_empty_pending = True

    def emit(self, byte: int) -> None:
        """Put ``byte`` on the host side of the output, as a transmitted one: for a device that
        shares this console (``pykvm.devices.debugcon``), in order with the UART's own bytes."""
        self._pending.append(byte)
        if byte == 0x0A or len(self._pending) >= _FLUSH_THRESHOLD:
            self.flush()

    def _set_mcr(self, mcr: int) -> None:
        self.mcr = mcr
        if mcr & MCR_LOOP:
            # Loopback: RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD.
            lines = ((MSR_CTS if mcr & MCR_RTS else 0) | (MSR_DSR if mcr & MCR_DTR else 0)
                     | (MSR_RI if mcr & MCR_OUT1 else 0) | (MSR_DCD if mcr & MCR_OUT2 else 0))
        else:
            lines = _MSR_CONNECTED
        self._set_modem_lines(lines)

    def _set_modem_lines(self, lines: int) -> None:
        old = self.msr & 0xF0
        changed = old ^ lines
        deltas = 0
        if changed & MSR_CTS:
            deltas |= MSR_DCTS
        if changed & MSR_DSR:
            deltas |= MSR_DDSR
        if changed & MSR_DCD:
            deltas |= MSR_DDCD
        if old & MSR_RI and not lines & MSR_RI:
            deltas |= MSR_TERI           # trailing edge of ring indicator only
        self.msr = lines | (self.msr & MSR_DELTAS) | deltas
