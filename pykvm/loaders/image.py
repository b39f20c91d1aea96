"""What a loader produces (``BootImage``) and how it gets into guest RAM (``LoadPlan``).

Every loader works in two phases so that a bad image never leaves guest RAM
half-written: it first *plans* — parses and validates the input and records
each piece it wants to place (image bytes, zero-filled bss, boot structures) —
then ``LoadPlan.apply`` checks the whole plan against guest RAM and the mode's
reserved area and only then writes. Every refusal is a ``BadInputError`` with a
one-line message naming the offending range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pykvm.x86.state import CpuState
from pykvm.errors import BadInputError
from pykvm.x86 import boot


@dataclass(frozen=True)
class LoadRange:
    """``size`` bytes of guest RAM at ``start`` that the loader filled, and why (``what``)."""

    start: int
    size: int
    what: str

    @property
    def end(self) -> int:
        return self.start + self.size

    def __str__(self) -> str:
        return f"{self.what} {self.start:#x}-{self.end - 1:#x}"


@dataclass
class BootImage:
    """A loaded image: its format, entry mode and point, what went where, extra entry registers.

    ``registers`` maps GPR names to values (multiboot's EAX/EBX, a boot sector's DL)
    and is meant for ``boot.initial_state(mode, entry, registers=registers)``.
    ``load_ranges`` lists the image's own pieces first, then the loader's boot data.
    """

    format: str
    mode: str
    entry: int
    load_ranges: list[LoadRange] = field(default_factory=list)
    registers: dict[str, int] = field(default_factory=dict)

    def initial_state(self, stack: int | None = None) -> CpuState:
        return boot.initial_state(self.mode, self.entry, stack, self.registers)


def _fmt(start: int, size: int) -> str:
    return f"{start:#x}-{start + size - 1:#x}"


class LoadPlan:
    """The writes one load will make; nothing touches guest RAM before ``apply``."""

    def __init__(self, mode: str):
        self.mode = mode
        self._image: list[tuple[int, bytes | memoryview, int, str]] = []   # gpa, data, memsz, what
        self._boot: list[tuple[int, bytes, str]] = []

    def add_image(self, gpa: int, data: bytes | memoryview, memsz: int | None = None,
                  what: str = "image") -> None:
        """Place image bytes at ``gpa``; ``memsz`` > len(data) zero-fills the rest (bss)."""
        memsz = len(data) if memsz is None else memsz
        if memsz < len(data):
            raise BadInputError(f"{what}: memory size {memsz:#x} is smaller than its data ({len(data):#x})")
        self._image.append((gpa, data, memsz, what))

    def add_boot(self, gpa: int, data: bytes, what: str) -> None:
        """Place a loader structure (GDT, page tables, boot info) in the reserved area."""
        self._boot.append((gpa, data, what))

    @property
    def image_ranges(self) -> list[LoadRange]:
        return [LoadRange(gpa, memsz, what) for gpa, _, memsz, what in self._image if memsz]

    def covers(self, addr: int) -> bool:
        """True when ``addr`` lies inside a placed image piece (for entry-point checks)."""
        return any(r.start <= addr < r.end for r in self.image_ranges)

    def validate(self, memory) -> None:
        """Check every piece against guest RAM, the reserved area and the other pieces."""
        ram_start = memory.base
        limit = 1 << 64 if self.mode == "long" else 1 << 32
        reserved = boot.reserved_end(self.mode)
        ranges = self.image_ranges
        if not ranges:
            raise BadInputError("image has nothing to load")
        for r in ranges:
            if r.start < 0 or r.end > limit:
                raise BadInputError(f"{r.what} {_fmt(r.start, r.size)} is not addressable in {self.mode} mode")
            if r.size > memory.size:
                raise BadInputError(f"{r.what} ({r.size:#x} bytes) is larger than guest RAM ({memory.size:#x} bytes)")
            if not memory.contains(r.start, r.size):
                raise BadInputError(f"{r.what} {_fmt(r.start, r.size)} lies outside guest RAM "
                                    f"{_fmt(ram_start, memory.size)}")
            if r.start < reserved:
                raise BadInputError(f"{r.what} {_fmt(r.start, r.size)} overlaps the loader's reserved area "
                                    f"0x0-{reserved - 1:#x} for {self.mode} mode")
        ordered = sorted(ranges, key=lambda r: r.start)
        for a, b in zip(ordered, ordered[1:]):
            if b.start < a.end:
                raise BadInputError(f"{a.what} {_fmt(a.start, a.size)} overlaps {b.what} {_fmt(b.start, b.size)}")
        for gpa, data, what in self._boot:
            if not memory.contains(gpa, len(data)):
                raise BadInputError(f"guest RAM {_fmt(ram_start, memory.size)} does not hold the {what} "
                                    f"at {_fmt(gpa, len(data))}")

    def apply(self, memory) -> list[LoadRange]:
        """Validate, then write everything; returns the ranges written (image first, then boot data)."""
        self.validate(memory)
        for gpa, data, memsz, _ in self._image:
            memory.write(gpa, data)
            if memsz > len(data):
                memory.fill(gpa + len(data), memsz - len(data), 0)
        for gpa, data, _ in self._boot:
            memory.write(gpa, data)
        return self.image_ranges + [LoadRange(gpa, len(data), what) for gpa, data, what in self._boot]


def add_mode_structures(plan: LoadPlan, memory) -> None:
    """Add the GDT (and long mode's page tables) that entering ``plan.mode`` needs."""
    for gpa, data in boot.boot_memory(plan.mode, memory.base + memory.size):
        what = "loader GDT" if gpa == boot.GDT_ADDR else "identity page tables"
        plan.add_boot(gpa, data, what)


def check_mode(mode: str) -> str:
    if mode not in boot.MODES:
        raise BadInputError(f"unknown boot mode {mode!r} (expected one of {', '.join(boot.MODES)})")
    return mode
