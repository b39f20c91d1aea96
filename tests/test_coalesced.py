"""Writes KVM coalesces (port 0x80, a ROM's MMIO ranges) reach their devices in the guest's order.

KVM_CAP_COALESCED_PIO / KVM_CAP_COALESCED_MMIO let KVM queue a write in a ring instead of exiting;
the machine replays the ring at the next exit, before handling that exit. These tests record
every device access of a guest that interleaves coalesced writes with ones that exit (the UART,
a read of port 0x80, the debug-exit port) and compare the record with the guest's program order.
"""

from __future__ import annotations

import io

import pytest

from pykvm.devices import postcode
from pykvm.devices.serial import Serial16550
from pykvm.kvm import ioctls as K
from pykvm.machine import Machine
from tests.asm import assemble

pytestmark = pytest.mark.kvm

# 400 POST codes (more than the ring's 170 slots: a full ring is an exit too), a UART byte after
# every 50th, then a read of port 0x80, which must see the last code.
GUEST = """
    mov ecx, 1
1:  mov eax, ecx
    out 0x80, al
    mov eax, ecx
    xor edx, edx
    mov ebx, 50
    div ebx
    test edx, edx
    jnz 2f
    mov dx, 0x3f8
    mov al, 0x41
    out dx, al
2:  inc ecx
    cmp ecx, 401
    jne 1b
    in al, 0x80
    mov dx, 0x3f8
    out dx, al
    cli
    hlt
"""


def expected_record():
    record = []
    for i in range(1, 401):
        record.append(("post", i & 0xFF))
        if i % 50 == 0:
            record.append(("uart", 0x41))
    record.append(("uart", 400 & 0xFF))       # the IN saw the last code
    return record


def run_recorded(coalesce: bool):
    record = []
    with Machine(serial_output=io.BytesIO(), coalesce=coalesce) as machine:
        post = next(e[2] for e in machine.bus.pio._entries if e[0] == postcode.PORT)
        uart = next(e[2] for e in machine.bus.pio._entries if isinstance(e[2], Serial16550))
        post_write, uart_write = post.write_byte, uart.write

        def on_post(offset, value):
            record.append(("post", value))
            post_write(offset, value)

        def on_uart(offset, size, value):
            if offset == 0:
                record.append(("uart", value))
            uart_write(offset, size, value)

        post.write_byte, uart.write = on_post, on_uart
        machine.load(assemble(GUEST), "flat", mode="long")
        assert machine.run(timeout=30) == 0
        coalescing = machine._ring is not None
        return record, machine.stats.kvm_exits, coalescing, post.last_post_code


def test_coalesced_port_writes_keep_their_order_with_the_exits_around_them():
    record, exits, coalescing, last = run_recorded(coalesce=True)
    assert record == expected_record()
    assert last == 400 & 0xFF
    with Machine(serial_output=io.BytesIO()) as probe:
        offered = probe.kvm.check_extension(K.KVM_CAP_COALESCED_PIO)
    assert coalescing == bool(offered)
    if coalescing:
        assert exits < 400 // 2        # the POST codes did not exit one by one


def test_without_coalescing_every_write_exits_and_the_record_is_the_same():
    record, exits, coalescing, _ = run_recorded(coalesce=False)
    assert not coalescing
    assert record == expected_record()
    assert exits >= 400


ROM_WRITER = """
    mov rbx, 0xffff8000
    mov ecx, 1000
1:  mov byte ptr [rbx], cl
    inc rbx
    dec ecx
    jnz 1b
    mov al, [0xffff8000]
    mov dx, 0xf4
    out dx, al
"""


@pytest.mark.parametrize("coalesce", [True, False])
def test_rom_writes_are_dropped_alike_coalesced_or_not(coalesce):
    """A ROM's MMIO ranges are coalesced too (a write there only gets dropped and logged): the
    ROM keeps its bytes and counts every dropped write either way."""
    from pykvm.x86 import boot

    rom = bytes(range(256)) * 256
    with Machine(serial_output=io.BytesIO(), bios=rom, coalesce=coalesce) as machine:
        machine.load(assemble(ROM_WRITER), "flat", mode="long")
        for gpa, data in boot.identity_page_tables(4 << 30):      # reach the ROM below 4 GiB
            machine.memory.write(gpa, data)
        status = machine.run(timeout=30)
        exits = machine.stats.kvm_exits
        dropped = machine.rom.dropped_writes
        offered = machine.kvm.check_extension(K.KVM_CAP_COALESCED_MMIO)
    assert status == (rom[0x8000] << 1) | 1
    assert dropped == 1000
    if coalesce and offered:
        assert exits < 100
    else:
        assert exits >= 1000
