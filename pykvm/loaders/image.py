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
from pykvm.x86 import boot, memmap


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


@dataclass(frozen=True)
class Module:
    """A boot module (``--module PATH[,CMDLINE]``): its bytes, its command line (None when none
    was given) and its name (the path as given). Multiboot gives each module a string: the
    command line, else the name, as QEMU's ``-initrd`` does; PVH gives the command line only."""

    data: bytes
    cmdline: str | None = None
    name: str = ""

    @property
    def string(self) -> str:
        return self.name if self.cmdline is None else self.cmdline


@dataclass(frozen=True)
class PlacedModule:
    start: int
    size: int
    cmdline: str | None
    string: str

    @property
    def end(self) -> int:
        return self.start + self.size


MODULE_ALIGN = 4096


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
    protocol: str = ""        # "pvh": the mode's state as the PVH ABI has it (boot.pvh_state)

    def initial_state(self, stack: int | None = None) -> CpuState:
        if self.protocol == "pvh":
            return boot.pvh_state(self.entry, self.registers["rbx"], stack)
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
        """Check every piece against the memory map (RAM only: not the legacy hole, not ROM),
        the mode's reserved area and the other pieces, boot structures included."""
        memory_map = memmap.map_of(memory)
        limit = 1 << 64 if self.mode == "long" else 1 << 32
        reserved = boot.reserved_end(self.mode)
        ranges = self.image_ranges
        if not ranges:
            raise BadInputError("image has nothing to load")
        for r in ranges:
            if r.start < 0 or r.end > limit:
                raise BadInputError(f"{r.what} {_fmt(r.start, r.size)} is not addressable in {self.mode} mode")
            if r.size > memory_map.ram_size:
                raise BadInputError(f"{r.what} ({r.size:#x} bytes) is larger than guest RAM "
                                    f"({memory_map.ram_size:#x} bytes)")
            self._check_in_memory(memory, memory_map, r.start, r.size, r.what)
            if r.start < reserved:
                raise BadInputError(f"{r.what} {_fmt(r.start, r.size)} overlaps the loader's reserved area "
                                    f"0x0-{reserved - 1:#x} for {self.mode} mode")
        for gpa, data, what in self._boot:
            self._check_in_memory(memory, memory_map, gpa, len(data), what)
        pieces = ranges + [LoadRange(gpa, len(data), what) for gpa, data, what in self._boot]
        ordered = sorted(pieces, key=lambda r: r.start)
        for a, b in zip(ordered, ordered[1:]):
            if b.start < a.end:
                raise BadInputError(f"{a.what} {_fmt(a.start, a.size)} overlaps {b.what} {_fmt(b.start, b.size)}")

    @staticmethod
    def _check_in_memory(memory, memory_map, start: int, size: int, what: str) -> None:
        memory_map.check_ram(start, size, what)
        if not memory.contains(start, size):     # RAM of the map that this memory does not hold
            raise BadInputError(f"{what} {_fmt(start, size)} lies outside guest RAM "
                                f"{_fmt(memory.base, memory.size)} that loaders can write")

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


def check_kernel_options(protocol: str, memory, mode: str | None, load_addr: int | None) -> None:
    """What a boot protocol's kernel (Multiboot 1 and 2, PVH) refuses: an entry mode other than
    32-bit protected mode, a load address (the kernel says where it goes), RAM not from 0."""
    if mode not in (None, "protected"):
        raise BadInputError(f"{protocol} kernels start in 32-bit protected mode, not {mode}")
    if load_addr is not None:
        raise BadInputError(f"a load address does not apply to {protocol} kernels (the kernel says where it goes)")
    if memory.base != 0:
        raise BadInputError(f"{protocol} needs guest RAM starting at address 0")


def plan_modules(plan: LoadPlan, modules) -> list[PlacedModule]:
    """Place ``modules`` one after the other, each on a page boundary, from the first page past
    everything the image occupies (as QEMU's multiboot loader does); checked with the plan."""
    placed = []
    start = _align(max(r.end for r in plan.image_ranges), MODULE_ALIGN)
    for i, module in enumerate(modules):
        what = f"module {i}" + (f" ({module.string})" if module.string else "")
        plan.add_image(start, module.data, what=what)
        placed.append(PlacedModule(start, len(module.data), module.cmdline, module.string))
        start = _align(start + len(module.data), MODULE_ALIGN)
    return placed


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


class BootArea:
    """A bump allocator over the loader's boot-information area (``boot.BOOT_INFO_ADDR`` ..
    ``BOOT_INFO_END``): each piece is placed after the previous one, aligned, and added to the
    plan as a boot structure. ``BadInputError`` when the area is full."""

    def __init__(self, plan: LoadPlan, start: int = boot.BOOT_INFO_ADDR, end: int = boot.BOOT_INFO_END):
        self.plan = plan
        self.start = self.next = start
        self.end = end

    def reserve(self, size: int, align: int = 8) -> int:
        """Room for ``size`` bytes: their address (fill it with ``put``)."""
        gpa = _align(self.next, align)
        if gpa + size > self.end:
            raise BadInputError(f"the boot information does not fit: the area {self.start:#x}-{self.end - 1:#x} "
                                f"holds at most {self.end - self.start} bytes, {gpa + size - self.start} needed")
        self.next = gpa + size
        return gpa

    def put(self, gpa: int, data: bytes, what: str) -> None:
        self.plan.add_boot(gpa, data, what)

    def add(self, data: bytes, what: str, align: int = 8) -> int:
        gpa = self.reserve(len(data), align)
        self.put(gpa, data, what)
        return gpa

    def add_string(self, text: str, what: str) -> int:
        return self.add(encode_string(text, what) + b"\0", what, align=1)


def encode_string(text: str, what: str) -> bytes:
    """A command line or module string as the guest gets it: UTF-8, no NUL inside."""
    if "\0" in text:
        raise BadInputError(f"the {what} may not contain NUL characters")
    # Command-line arguments that are not UTF-8 arrive as surrogate escapes: pass the bytes on.
    return text.encode("utf-8", "surrogateescape")


def add_mode_structures(plan: LoadPlan, memory) -> None:
    """Add the GDT (and long mode's page tables) that entering ``plan.mode`` needs."""
    for gpa, data in boot.boot_memory(plan.mode, memory.base + memory.size):
        what = "loader GDT" if gpa == boot.GDT_ADDR else "identity page tables"
        plan.add_boot(gpa, data, what)


def check_mode(mode: str) -> str:
    if mode not in boot.MODES:
        raise BadInputError(f"unknown boot mode {mode!r} (expected one of {', '.join(boot.MODES)})")
    return mode
