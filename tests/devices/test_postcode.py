"""Port 0x80 keeps and logs POST codes."""

import logging

from pykvm.devices.bus import Bus
from pykvm.devices.postcode import PostCode


def test_post_codes_are_remembered_and_read_back():
    bus, port = Bus(), PostCode()
    port.attach(bus)
    assert port.last_post_code is None
    assert bus.pio_read(0x80, 1) == 0xFF
    bus.pio_write(0x80, 1, 0x42)
    assert port.last_post_code == 0x42
    assert bus.pio_read(0x80, 1) == 0x42
    bus.pio_write(0x80, 2, 0x1234)                      # the high byte goes to port 0x81
    assert port.last_post_code == 0x34


def test_post_codes_are_logged_at_debug_level(caplog):
    with caplog.at_level(logging.DEBUG, logger="pykvm.devices.postcode"):
        port = PostCode()
        port.write(0, 1, 0xAB)
    assert "POST code 0xab" in caplog.text


def test_post_codes_are_silent_otherwise(caplog):
    with caplog.at_level(logging.INFO):
        PostCode().write(0, 1, 0xAB)
    assert caplog.text == ""
