"""Run the self-checking guests of guests/ directly on the Emulator (no KVM, no Machine).

A minimal console (LSR always "transmitter empty", THR bytes collected) and a debug-exit
port are enough for them. Long mode is where the emulator's job ends: ``run_guest`` stops
when the guest reaches 64-bit code (the caller would convert to PVM mode there).
"""

from __future__ import annotations

import os
import sys

from pykvm.devices.bus import Bus
from pykvm.emulator import Emulator
from pykvm.memory import GuestMemory
from pykvm.x86 import boot

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class Console:
    def __init__(self):
        self.out = bytearray()

    def read(self, offset, size):
        return 0x60 if offset == 5 else 0

    def write(self, offset, size, value):
        if offset == 0:
            self.out.append(value & 0xFF)

    @property
    def text(self) -> str:
        return self.out.decode("latin-1")


class GuestExit(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value


class DebugExit:
    def read(self, offset, size):
        return 0xFFFFFFFF

    def write(self, offset, size, value):
        raise GuestExit(value)


def build(name: str) -> str:
    """Build a guest with scripts/build_guests.py; returns the path of its output."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import build_guests
    finally:
        sys.path.pop(0)
    return str(build_guests.build(name))


def run_guest(name: str, mode: str, mem_size: int = 16 << 20, limit: int = 50_000_000, image: bytes | None = None):
    """Returns (exit value or None, console text, emulator, instructions)."""
    if image is None:
        path = build(name)
        binpath = path if path.endswith(".bin") else os.path.splitext(path)[0] + ".bin"
        with open(binpath, "rb") as f:
            image = f.read()
    mem = GuestMemory(mem_size)
    boot.prepare_memory(mode, mem)
    entry = 0x7C00 if mode == "real" else 0x100000
    mem.write(entry, image)
    state = boot.initial_state(mode, entry)
    bus = Bus()
    console = Console()
    bus.pio.register(0x3F8, 8, console)
    bus.pio.register(0xF4, 4, DebugExit())
    emu = Emulator(state, mem, bus)
    total = 0
    value = None
    try:
        while total < limit and not state.halted:
            total += emu.run(min(100_000, limit - total))
            if emu.bitness == 64:
                break
    except GuestExit as e:
        value = e.value
    return value, console.text, emu, total
