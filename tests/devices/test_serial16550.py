"""Register semantics of the 16550 UART, driven through the bus as a guest would."""

import io

import pytest

from pykvm.devices import serial as s
from pykvm.devices.bus import Bus
from pykvm.devices.serial import Serial16550

COM1 = 0x3F8


@pytest.fixture
def uart():
    out = io.BytesIO()
    dev = Serial16550(out)
    bus = Bus()
    bus.pio.register(COM1, 8, dev)
    return dev, bus, out


def outb(bus, reg, value):
    bus.pio_write(COM1 + reg, 1, value)


def inb(bus, reg):
    return bus.pio_read(COM1 + reg, 1)


def test_output_is_flushed_on_newline_and_close(uart):
    dev, bus, out = uart
    for b in b"hi":
        outb(bus, s.THR, b)
    assert out.getvalue() == b""          # no newline yet
    outb(bus, s.THR, 0x0A)
    assert out.getvalue() == b"hi\n"
    outb(bus, s.THR, ord("x"))
    dev.close()
    assert out.getvalue() == b"hi\nx"


def test_callable_output_gets_chunks():
    chunks = []
    dev = Serial16550(chunks.append)
    for b in b"ab\ncd":
        dev.write(s.THR, 1, b)
    dev.flush()
    assert chunks == [b"ab\n", b"cd"]


def test_text_stream_output_uses_its_buffer():
    raw = io.BytesIO()
    text = io.TextIOWrapper(raw, encoding="utf-8")
    dev = Serial16550(text)
    for b in b"\xffz\n":
        dev.write(s.THR, 1, b)
    assert raw.getvalue() == b"\xffz\n"


def test_lsr_always_ready_to_transmit(uart):
    dev, bus, out = uart
    assert inb(bus, s.LSR) == s.LSR_THRE | s.LSR_TEMT
    outb(bus, s.THR, 0x41)
    assert inb(bus, s.LSR) & (s.LSR_THRE | s.LSR_TEMT) == s.LSR_THRE | s.LSR_TEMT


def test_lsr_data_ready_follows_input_queue(uart):
    dev, bus, out = uart
    dev.feed(b"ok")
    assert inb(bus, s.LSR) & s.LSR_DR
    assert inb(bus, s.RBR) == ord("o")
    assert inb(bus, s.LSR) & s.LSR_DR
    assert inb(bus, s.RBR) == ord("k")
    assert not inb(bus, s.LSR) & s.LSR_DR
    assert inb(bus, s.RBR) == 0           # empty receiver reads 0


def test_scratch_register(uart):
    dev, bus, out = uart
    for v in (0x00, 0x55, 0xAA, 0xFF):
        outb(bus, s.SCR, v)
        assert inb(bus, s.SCR) == v


def test_dlab_switches_to_divisor_latch(uart):
    dev, bus, out = uart
    outb(bus, s.IER, 0x05)
    outb(bus, s.LCR, 0x83)                # DLAB, 8 bits
    outb(bus, s.DLL, 0x01)                # 115200 baud
    outb(bus, s.DLM, 0x00)
    assert inb(bus, s.DLL) == 0x01 and inb(bus, s.DLM) == 0x00
    assert out.getvalue() == b""          # a DLL write is not a transmitted byte
    outb(bus, s.LCR, 0x03)
    assert inb(bus, s.IER) == 0x05        # IER untouched by the DLM write
    assert inb(bus, s.LCR) == 0x03
    assert (dev.dll, dev.dlm) == (1, 0)


def test_ier_keeps_low_nibble_only(uart):
    dev, bus, out = uart
    outb(bus, s.IER, 0xFF)
    assert inb(bus, s.IER) == 0x0F


def test_iir_fifo_bits_follow_fcr(uart):
    dev, bus, out = uart
    assert inb(bus, s.IIR) == s.IIR_NO_INT
    outb(bus, s.FCR, 0xC7)                # enable + clear both + 14-byte trigger
    assert inb(bus, s.IIR) == s.IIR_FIFO | s.IIR_NO_INT
    outb(bus, s.FCR, 0x00)
    assert inb(bus, s.IIR) == s.IIR_NO_INT


def test_fcr_clear_rx_empties_receiver(uart):
    dev, bus, out = uart
    outb(bus, s.FCR, 0x01)
    dev.feed(b"abc")
    outb(bus, s.FCR, 0x03)
    assert not inb(bus, s.LSR) & s.LSR_DR


def test_iir_reports_enabled_conditions_by_priority(uart):
    dev, bus, out = uart
    outb(bus, s.IER, s.IER_ETBEI)         # enabling with THR empty raises THRI
    assert inb(bus, s.IIR) == s.IIR_THRI
    assert inb(bus, s.IIR) == s.IIR_NO_INT  # reading IIR acknowledged it
    outb(bus, s.THR, ord("a"))
    outb(bus, s.IER, s.IER_ETBEI | s.IER_ERBFI)
    dev.feed(b"z")
    assert inb(bus, s.IIR) == s.IIR_RDI   # received data outranks THRE
    inb(bus, s.RBR)
    assert inb(bus, s.IIR) == s.IIR_THRI
    assert inb(bus, s.IIR) == s.IIR_NO_INT


def test_interrupt_pending_needs_out2(uart):
    dev, bus, out = uart
    outb(bus, s.IER, s.IER_ERBFI)
    dev.feed(b"x")
    assert not dev.interrupt_pending
    outb(bus, s.MCR, s.MCR_OUT2)
    assert dev.interrupt_pending


def test_msr_outside_loopback_reports_connected_modem(uart):
    dev, bus, out = uart
    assert inb(bus, s.MSR) == s.MSR_CTS | s.MSR_DSR | s.MSR_DCD


def test_loopback_routes_thr_to_rbr_and_mcr_to_msr(uart):
    dev, bus, out = uart
    outb(bus, s.MCR, s.MCR_LOOP | s.MCR_RTS | s.MCR_OUT2)
    # What Linux's 8250 probe checks: CTS and DCD follow RTS and OUT2.
    assert inb(bus, s.MSR) & 0xF0 == s.MSR_CTS | s.MSR_DCD
    outb(bus, s.THR, 0x5A)
    assert out.getvalue() == b"" and dev._pending == bytearray()
    assert inb(bus, s.LSR) & s.LSR_DR
    assert inb(bus, s.RBR) == 0x5A
    outb(bus, s.MCR, s.MCR_LOOP | s.MCR_DTR | s.MCR_OUT1)
    msr = inb(bus, s.MSR)
    assert msr & 0xF0 == s.MSR_DSR | s.MSR_RI
    assert msr & s.MSR_DELTAS == s.MSR_DCTS | s.MSR_DDSR | s.MSR_DDCD
    assert inb(bus, s.MSR) & s.MSR_DELTAS == 0        # deltas clear on read
    outb(bus, s.MCR, s.MCR_LOOP)
    assert inb(bus, s.MSR) & s.MSR_TERI                # RI went 1 -> 0
    outb(bus, s.MCR, 0)
    assert inb(bus, s.MSR) & 0xF0 == s.MSR_CTS | s.MSR_DSR | s.MSR_DCD
    outb(bus, s.THR, ord("\n"))
    assert out.getvalue() == b"\n"


def test_loopback_overrun_without_fifo(uart):
    dev, bus, out = uart
    outb(bus, s.MCR, s.MCR_LOOP)
    outb(bus, s.THR, 1)
    outb(bus, s.THR, 2)                   # no FIFO: one-byte receiver overflows
    assert inb(bus, s.LSR) & s.LSR_OE
    assert not inb(bus, s.LSR) & s.LSR_OE  # cleared by the read
    assert inb(bus, s.RBR) == 1


def test_wide_access_splits_into_registers(uart):
    dev, bus, out = uart
    bus.pio_write(COM1 + s.LCR, 2, 0x0B03)   # LCR=0x03, MCR=0x0B
    assert inb(bus, s.LCR) == 0x03 and inb(bus, s.MCR) == 0x0B
    assert bus.pio_read(COM1 + s.LCR, 2) == 0x0B03


def test_reset_restores_power_on_values(uart):
    dev, bus, out = uart
    outb(bus, s.SCR, 7)
    outb(bus, s.LCR, 0x83)
    dev.feed(b"q")
    dev.reset()
    assert inb(bus, s.LCR) == 0 and inb(bus, s.SCR) == 0 and dev.rx_pending == 0
