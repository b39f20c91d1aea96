"""Small fixtures: guest RAM + bus + CPU state in real mode or flat 32-bit protected mode."""

from __future__ import annotations

from pykvm.devices.bus import Bus
from pykvm.emulator import Emulator
from pykvm.x86.state import CS, CpuState, Segment
from pykvm.memory import GuestMemory
from pykvm.x86.bits import CR0_ET, CR0_PE


class Recorder:
    """A port device that records writes and answers reads from a queue / constant."""

    def __init__(self, read_value: int = 0):
        self.writes: list[tuple[int, int, int]] = []
        self.read_value = read_value

    def read(self, offset, size):
        return self.read_value & ((1 << 8 * size) - 1)

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


def flat_segment(code: bool, selector: int, dpl: int = 0, db: int = 1) -> Segment:
    return Segment(selector=selector, base=0, limit=0xFFFFFFFF, type=0xB if code else 0x3, present=1,
                   dpl=dpl, db=db, s=1, l=0, g=1, avl=0, unusable=0)


def real_mode(code: bytes, org: int = 0x7C00, mem_size: int = 1 << 20, sp: int = 0x7000):
    mem = GuestMemory(mem_size)
    mem.write(org, code)
    st = CpuState()
    for i in range(6):
        st.seg[i] = Segment(selector=0, base=0, limit=0xFFFF, type=3 if i != CS else 0xB)
    st.rip = org
    st.gpr[4] = sp
    bus = Bus()
    return Emulator(st, mem, bus), mem, bus


def protected_mode(code: bytes, org: int = 0x100000, mem_size: int = 4 << 20, sp: int = 0x90000):
    mem = GuestMemory(mem_size)
    mem.write(org, code)
    st = CpuState()
    st.cr0 = CR0_PE | CR0_ET
    for i in range(6):
        st.seg[i] = flat_segment(i == CS, 0x08 if i == CS else 0x10)
    st.gdt.base = 0
    st.gdt.limit = 0xFFFF
    st.rip = org
    st.gpr[4] = sp
    bus = Bus()
    return Emulator(st, mem, bus), mem, bus


def run_until_halt(emu, limit: int = 1_000_000) -> int:
    total = 0
    while not emu.state.halted and total < limit:
        n = emu.run(limit - total)
        total += n
        if n == 0:
            break
    return total


GDT_BASE = 0x1000
IDT_BASE = 0x2000


def install_gdt(emu, mem, entries: list[int], base: int = GDT_BASE) -> None:
    """Write descriptors (index 0 is the null descriptor) and point GDTR at them."""
    for i, raw in enumerate(entries):
        mem.write_u64(base + 8 * i, raw)
    emu.state.gdt.base = base
    emu.state.gdt.limit = 8 * len(entries) - 1


def install_idt(emu, mem, gates: dict[int, int], base: int = IDT_BASE, limit: int | None = None) -> None:
    """``gates`` maps vector -> raw 8-byte gate; the IDT covers vectors 0..max."""
    top = max(gates) if gates else 0
    for v, raw in gates.items():
        mem.write_u64(base + 8 * v, raw)
    emu.state.idt.base = base
    emu.state.idt.limit = (8 * (top + 1) - 1) if limit is None else limit


def standard_gdt() -> list[int]:
    from pykvm.x86.descriptors import flat_descriptor
    return [0, flat_descriptor(True), flat_descriptor(False)]
