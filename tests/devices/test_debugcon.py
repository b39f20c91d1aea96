"""Port 0xE9, the Bochs/QEMU debug console: its bytes join the serial output in order, from
either executor, and a read says the port is there."""

from __future__ import annotations

import io

import pytest

from pykvm.devices.bus import Bus
from pykvm.devices.debugcon import PORT, DebugCon
from pykvm.machine import Machine
from tests.asm import assemble


def test_writes_are_emitted_and_reads_return_0xe9():
    emitted = []
    bus = Bus()
    DebugCon(emitted.append).attach(bus)
    bus.pio_write(PORT, 1, ord("A"))
    assert emitted == [0x41] and bus.pio_read(PORT, 1) == 0xE9


PRINT = """
    mov dx, 0xe9
    in al, dx
    mov bl, al                  # 0xE9: the console is there
    mov al, 'd'
    out dx, al
    mov dx, 0x3f8
    mov al, 's'
    out dx, al                  # the UART, between two debug-console bytes
    mov dx, 0xe9
    mov al, '\\n'
    out dx, al
    mov al, bl
    mov dx, 0xf4
    out dx, al                  # debug exit: status (0xE9 << 1) | 1
"""


@pytest.mark.kvm
@pytest.mark.parametrize("mode,bits", [("real", 16), ("long", 64)])
def test_the_guest_console_is_one_stream_in_both_executors(mode, bits):
    out = io.BytesIO()
    with Machine(serial_output=out) as machine:
        machine.load(assemble(PRINT, bits=bits, org=0x7C00 if mode == "real" else 0), "flat", mode=mode)
        status = machine.run(timeout=30)
        machine.serial.flush()
    assert status == (0xE9 << 1 | 1) and out.getvalue() == b"ds\n"
    assert machine.stats.emulated_instructions if mode == "real" else machine.stats.kvm_exits


@pytest.mark.kvm
def test_with_the_testdev_the_port_is_the_testdevs():
    with Machine(serial_output=io.BytesIO(), testdev=True) as machine:
        machine.bus.pio_write(0xE8, 4, 0x12345678)
        assert machine.bus.pio_read(PORT, 1) == 0x56           # its scratch register's second byte
